from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.diffusion.quality import compare_samplers

compare_samplers(
    snakemake.input.labelled,
    {name: [path] for name, path in zip(snakemake.params.names, snakemake.input.samples)},
    out_csv=snakemake.output.table,
    out_png=snakemake.output.plot,
)
