from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.diffusion.synthesis import sample_images, sampling_settings

# sample_images with the extra pairs' own noise stream (rules/export.smk)
sample_images(
    snakemake.input.model,
    snakemake.input.structures,
    snakemake.output[0],
    sampling=sampling_settings(snakemake.params.sampling),
    selection=snakemake.input.selection,
    colour_reference=snakemake.input.labelled if snakemake.params.colour_transfer else None,
    device=resolve_device(snakemake.params.device),
    resume_file=snakemake.params.resume_file,
    stream=snakemake.params.stream,
)
