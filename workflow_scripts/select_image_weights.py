from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.assessment.image_selection import select_image_weights
from nudiff.config import resolve_device
from nudiff.diffusion.synthesis import sampling_settings

select_image_weights(
    snakemake.input.model,
    snakemake.input.labelled,
    snakemake.input.segmenter,
    out_csv=snakemake.output.scores,
    out_json=snakemake.output.chosen,
    n=snakemake.params.n,
    sampling=sampling_settings(snakemake.params.sampling),
    watershed=snakemake.params.watershed,
    device=resolve_device(snakemake.params.device),
)
