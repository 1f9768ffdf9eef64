from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.diffusion.selection import select_structure_weights
from nudiff.diffusion.synthesis import CleanupSettings, sampling_settings

select_structure_weights(
    snakemake.input.model,
    snakemake.input.labelled,
    out_csv=snakemake.output.scores,
    out_json=snakemake.output.chosen,
    n=snakemake.params.n,
    sampling=sampling_settings(snakemake.params.sampling),
    watershed=snakemake.params.watershed,
    cleanup=CleanupSettings(**snakemake.params.cleanup),
    device=resolve_device(snakemake.params.device),
)
