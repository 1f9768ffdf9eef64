from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.segmentation.registry import train_segmenter

train_segmenter(
    snakemake.input.samples,
    snakemake.output.model,
    model=snakemake.wildcards.model,
    network=snakemake.params.network,
    training=snakemake.params.training,
    checkpoint_dir=snakemake.params.checkpoint_dir,
    device=resolve_device(snakemake.params.device),
    loss_csv=snakemake.output.losses,
    loss_png=snakemake.output.curve,
    validation_csv=snakemake.output.validation,
    validation_samples=snakemake.input.validation,
)
