from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.datasets.demo import make_demo_dataset

make_demo_dataset(snakemake.output[0], **snakemake.params.demo)
