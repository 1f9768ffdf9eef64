from nudiff.logs import configure_logging

configure_logging(snakemake.log[0])

from nudiff.holdout import hold_out_validation

hold_out_validation(
    snakemake.input[0],
    snakemake.output.train,
    snakemake.output.validation,
    fraction=snakemake.params.validation["fraction"],
    seed=snakemake.params.validation["seed"],
)
