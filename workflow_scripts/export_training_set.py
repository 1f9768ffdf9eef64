from nudiff.runtime import start_job

start_job(snakemake.log[0], threads=snakemake.threads)

from nudiff.export.training_set import export_training_set

export_training_set(
    snakemake.output[0],
    pair_shards=list(snakemake.input.pairs),
    labelled_csv=snakemake.input.get("labelled"),
    structure_model=snakemake.input.structure_model,
    structure_selection=snakemake.input.structure_selection,
    image_model=snakemake.input.image_model,
    image_selection=snakemake.input.image_selection,
    sampling=snakemake.params.sampling,
    image_sampling=snakemake.params.image_sampling,
    colour_transfer=snakemake.params.colour_transfer,
    streams=tuple(snakemake.params.streams),
    prefix=snakemake.params.prefix,
)
