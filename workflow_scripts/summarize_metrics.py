from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.evaluation import summarize_metrics
from nudiff.table import seed_summary

summarize_metrics(list(snakemake.input), snakemake.output.metrics, snakemake.output.per_image)
seed_summary(snakemake.output.metrics, snakemake.output.over_seeds)
