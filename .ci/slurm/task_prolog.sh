#!/bin/sh
# Slurm TaskProlog of the CI cluster: a line "print X" goes to the task's
# standard output, i.e. the top of the job's log. It records which GPUs Slurm
# handed to each task, the evidence tests/test_slurm.py looks for.
echo "print nudiff-ci-task: job=${SLURM_JOB_ID:-} step=${SLURM_STEP_ID:-} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
