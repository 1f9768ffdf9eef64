# Results a person reads: per-image metric plots, prediction overlays, the
# paper-style table and the provenance of the run (all in `snakemake --report`).


rule plot_per_image_metrics:
    input:
        "results/{dataset}/{pct}pct/metrics_per_image.csv",
    output:
        report(
            "results/{dataset}/{pct}pct/per_image_metrics.png",
            caption="../config/report/per_image_metrics.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/plot_per_image_metrics.log",
    group:
        "evaluate"
    threads: threads_for("plot_per_image_metrics")
    resources:
        **resources_for("plot_per_image_metrics"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/plot_per_image_metrics.py"


rule plot_prediction_overlays:
    input:
        unpack(overlay_predictions),
        prepared="results/{dataset}/prepared/test",
    output:
        report(
            "results/{dataset}/{pct}pct/prediction_overlays.png",
            caption="../config/report/prediction_overlays.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/plot_prediction_overlays.log",
    params:
        labels=lambda wildcards: list(overlay_predictions(wildcards)),
    group:
        "evaluate"
    threads: threads_for("plot_prediction_overlays")
    resources:
        **resources_for("plot_prediction_overlays"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/plot_prediction_overlays.py"


# Every arm against its control, seed by seed (nudiff.arm_comparison); pooled over blocks
# (generators) by docs' block records.
rule compare_arms:
    input:
        metrics="results/{dataset}/{pct}pct/metrics.csv",
        validation=arm_validation_logs,
    output:
        summary=report(
            "results/{dataset}/{pct}pct/arms.csv",
            caption="../config/report/arms.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
        differences=report(
            "results/{dataset}/{pct}pct/arm_differences.csv",
            caption="../config/report/arms.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
        figure=report(
            "results/{dataset}/{pct}pct/arms.png",
            caption="../config/report/arms.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/compare_arms.log",
    params:
        comparisons=comparisons(TRAINSETS, config["segmentation"]),
        runs=RUN_NAMES,
    group:
        "evaluate"
    threads: threads_for("compare_arms")
    resources:
        **resources_for("compare_arms"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/compare_arms.py"


rule make_table:
    input:
        all_metrics(),
    output:
        table=report("results/table.csv", caption="../config/report/table.rst", category="Results"),
        markdown="results/table.md",
        html=report("results/table.html", caption="../config/report/table.rst", category="Results"),
        bars=report("results/table.png", caption="../config/report/table.rst", category="Results"),
    log:
        "logs/make_table.log",
    params:
        paper_tables=paper_tables(),
    threads: threads_for("make_table")
    resources:
        **resources_for("make_table"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/make_table.py"


rule record_provenance:
    input:
        manifests=expand("results/{dataset}/prepared/{split}", dataset=DATASETS, split=SPLITS),
        table="results/table.csv",
    output:
        json="results/provenance.json",
        html=report("results/provenance.html", caption="../config/report/provenance.rst", category="Provenance"),
    log:
        "logs/record_provenance.log",
    params:
        config=config,
        datasets=[f"{dataset}/{split}" for dataset in DATASETS for split in SPLITS],
        repo_dir=workflow.basedir,
    threads: threads_for("record_provenance")
    resources:
        **resources_for("record_provenance"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/record_provenance.py"
