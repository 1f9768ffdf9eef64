from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.evaluation import summarize_scores

summarize_scores(list(snakemake.input), snakemake.output.metrics, snakemake.output.per_image)
