from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.diffusion.shuffled_pairs import build_shuffled_set

build_shuffled_set(
    snakemake.input.labelled,
    list(snakemake.input.pairs),
    snakemake.output.shard,
    snakemake.output.samples,
    seed=snakemake.params.seed,
)
