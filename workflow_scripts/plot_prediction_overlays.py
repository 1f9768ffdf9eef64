from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.evaluation_figures import plot_prediction_overlays

predictions = {label.replace("_", " "): snakemake.input[label] for label in snakemake.params.labels}
plot_prediction_overlays(snakemake.input.prepared, predictions, snakemake.output[0])
