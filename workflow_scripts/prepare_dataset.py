from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.datasets.prepare import prepare_dataset
from nudiff.datasets.sources import list_source_items

source = snakemake.params.source
prepare_dataset(list_source_items(source["format"], source["root"], splits=[source["split"]]), snakemake.output[0])
