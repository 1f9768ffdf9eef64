from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.assessment.segmenter_agreement import segment_synthetic_pairs
from nudiff.config import resolve_device

segment_synthetic_pairs(
    snakemake.input.model,
    list(snakemake.input.pairs),
    snakemake.input.validation,
    out_csv=snakemake.output.summary,
    out_per_pair_csv=snakemake.output.per_pair,
    batch_size=snakemake.params.inference.get("batch_size", 8),
    watershed=snakemake.params.watershed,
    device=resolve_device(snakemake.params.device),
)
