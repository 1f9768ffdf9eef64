from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.diffusion.quality import assess_synthetic_pairs

assess_synthetic_pairs(
    snakemake.input.labelled,
    list(snakemake.input.pairs),
    out_stats_csv=snakemake.output.statistics,
    out_agreement_csv=snakemake.output.agreement,
    out_stats_png=snakemake.output.statistics_plot,
    out_samples_png=snakemake.output.samples_plot,
    seed=snakemake.params.seed,
)
