from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.subsets import select_subset

select_subset(
    snakemake.input.prepared,
    snakemake.input.index,
    snakemake.input.clusters,
    percent=snakemake.params.percent,
    out_csv=snakemake.output.samples,
    out_summary=snakemake.output.summary,
)
