from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads, uses_torch=True)

from nudiff.config import resolve_device
from nudiff.diffusion.training import train_diffusion_model

train_diffusion_model(
    snakemake.params.kind,
    snakemake.input[0],
    snakemake.output.model,
    network=snakemake.params.network,
    training=snakemake.params.training,
    schedule=snakemake.params.schedule,
    checkpoint_dir=snakemake.params.checkpoint_dir,
    device=resolve_device(snakemake.params.device),
    init_model=snakemake.input.get("init_model"),
    loss_csv=snakemake.output.losses,
    loss_png=snakemake.output.curve,
)
