"""A training job stopped by SIGTERM resumes to the weights of an uninterrupted run.

What Slurm does to a preempted (or timed-out) job: it sends SIGTERM to every
process of the job's steps, i.e. to the Snakemake that the job runs and to the
training script under it, then SIGKILL after KillWait. The test does the same
with a local Snakemake (in a process group of its own) and then checks what the
profile's ``slurm-requeue``/``retries`` rely on: the training script saves a
checkpoint and exits non-zero, Snakemake reports the job failed and deletes no
checkpoint (they are not declared outputs), the declared outputs do not exist,
and running the same command again resumes and ends with exactly the weights
of a run that was never interrupted.

Found while writing this: SIGTERM to the Snakemake process alone does not stop
the job (Snakemake only stops scheduling new jobs and waits for the running
one), which is why the signal has to reach the script itself, as Slurm's does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
MODEL = "results/tiny/100pct/diffusion/structure_model.pt"
OUTPUTS = [
    MODEL,
    "results/tiny/100pct/diffusion/structure_model_loss.csv",
    "results/tiny/100pct/diffusion/structure_model_loss.png",
]
CHECKPOINTS = "checkpoints/tiny/100pct/structure_model"
CHECKPOINT_NAME = re.compile(r"^step_(\d{9})\.pt$")  # nudiff.training.checkpoint.CheckpointStore
ITERATIONS, CHECKPOINT_EVERY = 300, 50

pytestmark = pytest.mark.slow


def checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))


def command(workdir: Path, config: Path, *targets: str) -> list[str]:
    return [
        *SNAKEMAKE,
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "tiny.yaml"),
        str(config),
        "--cores",
        "1",
        *targets,
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model, keyed by its place in the file."""
    found = {}

    def walk(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            found[where] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(torch.load(path, map_location="cpu", weights_only=True), "")
    return found


def test_sigterm_checkpoints_and_the_rerun_resumes_to_the_uninterrupted_weights(tmp_path):
    # The tiny structure model, trained long enough to be stopped halfway.
    config = tmp_path / "long_training.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "diffusion": {
                    "structure_model": {"training": {"iterations": ITERATIONS, "checkpoint_every": CHECKPOINT_EVERY}}
                }
            }
        )
    )
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    run(command(interrupted, config, "results/tiny/100pct/trainsets/labelled_train.csv"))  # its inputs, once
    shutil.copytree(interrupted, uninterrupted, symlinks=True)

    # The reference trains meanwhile (each job uses one thread).
    reference_out = tmp_path / "uninterrupted.out"
    job_out = tmp_path / "interrupted.out"
    with open(reference_out, "w") as ref_stream, open(job_out, "w") as job_stream:
        reference = subprocess.Popen(
            command(uninterrupted, config, MODEL), stdout=ref_stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        job = subprocess.Popen(
            command(interrupted, config, MODEL), stdout=job_stream, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint_steps(interrupted):
            assert job.poll() is None, f"training ended before its first checkpoint:\n{job_out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        first = checkpoint_steps(interrupted)[-1]
        os.killpg(job.pid, signal.SIGTERM)  # Snakemake and the training script, as Slurm signals a job step
        job.wait(timeout=120)
        deadline = time.monotonic() + 60
        while process_group_alive(job.pid):  # the script may outlive Snakemake by a moment
            assert time.monotonic() < deadline, "the training script ignored SIGTERM for 60 s"
            time.sleep(0.05)
        out = job_out.read_text()

        assert job.returncode != 0, "Snakemake reported success for a job stopped by SIGTERM"
        assert "Error in rule train_structure_model" in out
        log = (interrupted / "logs/tiny/100pct/train_structure_model.log").read_text()
        stopped_at = checkpoint_steps(interrupted)[-1]
        # newer than the checkpoint that was there when the signal went out: saved on SIGTERM
        assert first < stopped_at < ITERATIONS
        assert f"stopped by signal {signal.SIGTERM.value} at step {stopped_at}" in log
        assert not any((interrupted / output).exists() for output in OUTPUTS)

        # The same command again: resumes from the SIGTERM checkpoint and finishes.
        run(command(interrupted, config, MODEL))
        log = (interrupted / "logs/tiny/100pct/train_structure_model.log").read_text()
        assert f"(step {stopped_at})" in log and "resumed from" in log
        assert checkpoint_steps(interrupted) == []  # removed once the model is written

        reference.wait(timeout=600)
        assert reference.returncode == 0, reference_out.read_text()[-3000:]
    finally:
        for proc in (job, reference):
            if process_group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    resumed, straight = tensors(interrupted / MODEL), tensors(uninterrupted / MODEL)
    assert resumed.keys() == straight.keys() and len(resumed) > 10
    for where, tensor in straight.items():
        assert torch.equal(resumed[where], tensor), f"{where} differs after resuming"
