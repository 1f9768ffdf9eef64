from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.provenance import record_provenance

manifests = dict(zip(snakemake.params.datasets, snakemake.input.manifests))
record_provenance(
    snakemake.params.config, manifests, snakemake.params.repo_dir, snakemake.output.json, snakemake.output.html
)
