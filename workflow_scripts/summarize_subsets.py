from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.subsets import summarize_subsets

summarize_subsets(list(snakemake.input), snakemake.output[0])
