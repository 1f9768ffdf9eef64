from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.subsets import cluster_patches

cluster_patches(snakemake.input[0], snakemake.output[0], **snakemake.params.selection)
