from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.evaluation_figures import plot_per_image_metrics

plot_per_image_metrics(snakemake.input[0], snakemake.output[0])
