from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.patches import extract_patches

extract_patches(snakemake.input[0], snakemake.output[0], size=snakemake.params.size, stride=snakemake.params.stride)
