from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.diffusion.synthesis import sampling_settings
from nudiff.export.label_to_image import label_to_image

label_to_image(
    snakemake.input.labels,
    snakemake.input.model,
    snakemake.output[0],
    sampling=sampling_settings(snakemake.params.sampling),
    selection=snakemake.input.selection,
    n_per_map=snakemake.params.n_per_map,
    device=resolve_device(snakemake.params.device),
)
