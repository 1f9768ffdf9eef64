from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.arm_comparison import compare_arms

compare_arms(
    snakemake.input.metrics,
    dict(zip(snakemake.params.runs, snakemake.input.validation)),
    [tuple(pair) for pair in snakemake.params.comparisons],
    snakemake.output.summary,
    snakemake.output.differences,
    snakemake.output.figure,
)
