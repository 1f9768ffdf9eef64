from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.evaluation import score_predictions

score_predictions(
    snakemake.input.prepared, snakemake.input.predictions, snakemake.output[0], labels=snakemake.params.labels
)
