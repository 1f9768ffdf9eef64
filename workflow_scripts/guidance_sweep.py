from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.assessment.guidance_sweep import guidance_sweep
from nudiff.config import resolve_device
from nudiff.diffusion.synthesis import sampling_settings

guidance_sweep(
    snakemake.input.model,
    snakemake.input.pairs,
    snakemake.input.segmenter,
    snakemake.input.validation,
    scales=snakemake.params.scales,
    n=snakemake.params.n,
    sampling=sampling_settings(snakemake.params.sampling),
    out_csv=snakemake.output.table,
    out_png=snakemake.output.figure,
    selection=snakemake.input.selection,
    watershed=snakemake.params.watershed,
    device=resolve_device(snakemake.params.device),
)
