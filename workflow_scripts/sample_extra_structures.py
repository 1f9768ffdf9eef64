from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.diffusion.synthesis import CleanupSettings, sample_structures, sampling_settings

# sample_structures with the extra pairs' own noise stream (rules/export.smk)
sample_structures(
    snakemake.input.model,
    snakemake.output[0],
    n_total=snakemake.params.n_total,
    n_shards=snakemake.params.n_shards,
    shard=int(snakemake.wildcards.shard),
    sampling=sampling_settings(snakemake.params.sampling),
    selection=snakemake.input.selection,
    watershed=snakemake.params.watershed,
    cleanup=CleanupSettings(**snakemake.params.cleanup),
    oversample=snakemake.params.oversample,
    labelled_csv=snakemake.input.labelled,
    device=resolve_device(snakemake.params.device),
    resume_file=snakemake.params.resume_file,
    stream=snakemake.params.stream,
)
