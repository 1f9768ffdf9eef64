from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.diffusion.augmented_set import build_augmented_set

build_augmented_set(snakemake.input.labelled, list(snakemake.input.pairs), snakemake.output[0])
