from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.segmentation.segment_images import segment_test_images

segment_test_images(
    snakemake.input.model,
    snakemake.input.prepared,
    snakemake.output[0],
    **snakemake.params.inference,
    device=resolve_device(snakemake.params.device),
    watershed=snakemake.params.watershed,
)
