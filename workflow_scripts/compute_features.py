from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.config import resolve_device
from nudiff.features import compute_features

options = dict(snakemake.params.features)
options["device"] = resolve_device(options["device"])
compute_features(snakemake.input.prepared, snakemake.input.index, snakemake.output[0], **options)
