# Data stage: from source files to labelled subsets (spec sections 1-2).


rule make_demo_dataset:
    output:
        directory("results/{dataset}/source"),
    log:
        "logs/{dataset}/make_demo_dataset.log",
    params:
        demo=lambda wildcards: dataset_spec(wildcards).get("demo", {}),
    threads: threads_for("make_demo_dataset")
    resources:
        **resources_for("make_demo_dataset"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/make_demo_dataset.py"


# One folder per split, each from its own source files: the test split is an output of its
# own, read only by test-image inference, scoring and the figures made from scores
# (tests/test_test_split.py checks this for every preset).
rule prepare_dataset:
    input:
        prepare_dataset_input,
    output:
        directory("results/{dataset}/prepared/{split}"),
    log:
        "logs/{dataset}/prepare_dataset_{split}.log",
    params:
        source=prepare_dataset_params,
    threads: threads_for("prepare_dataset")
    resources:
        **resources_for("prepare_dataset"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/prepare_dataset.py"


rule extract_patches:
    input:
        "results/{dataset}/prepared/train",
    output:
        "results/{dataset}/patches/index.csv",
    log:
        "logs/{dataset}/extract_patches.log",
    params:
        size=config["patches"]["size"],
        stride=config["patches"]["stride"],
    threads: threads_for("extract_patches")
    resources:
        **resources_for("extract_patches"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/extract_patches.py"


rule compute_features:
    input:
        prepared="results/{dataset}/prepared/train",
        index="results/{dataset}/patches/index.csv",
    output:
        "results/{dataset}/patches/features.npz",
    log:
        "logs/{dataset}/compute_features.log",
    benchmark:
        "benchmarks/{dataset}/compute_features.tsv"
    params:
        features=config["features"],
    threads: threads_for("compute_features")
    resources:
        **resources_for("compute_features"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/compute_features.py"


rule cluster_patches:
    input:
        "results/{dataset}/patches/features.npz",
    output:
        "results/{dataset}/patches/clusters.csv",
    log:
        "logs/{dataset}/cluster_patches.log",
    params:
        selection=config["selection"],
    threads: threads_for("cluster_patches")
    resources:
        **resources_for("cluster_patches"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/cluster_patches.py"


rule select_subset:
    input:
        prepared="results/{dataset}/prepared/train",
        index="results/{dataset}/patches/index.csv",
        clusters="results/{dataset}/patches/clusters.csv",
    output:
        samples="results/{dataset}/{pct}pct/trainsets/labelled.csv",
        summary="results/{dataset}/{pct}pct/trainsets/labelled_summary.json",
    log:
        "logs/{dataset}/{pct}pct/select_subset.log",
    params:
        percent=lambda wildcards: int(wildcards.pct),
    priority: PAIRS_PRIORITY
    threads: threads_for("select_subset")
    resources:
        **resources_for("select_subset"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/select_subset.py"


# Whole source images of each subset held out for validation before anything trains: the
# generator never sees them, and every segmenter arm and seed picks its weights on them.
rule hold_out_validation:
    input:
        "results/{dataset}/{pct}pct/trainsets/labelled.csv",
    output:
        train="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        validation="results/{dataset}/{pct}pct/trainsets/validation.csv",
    log:
        "logs/{dataset}/{pct}pct/hold_out_validation.log",
    params:
        validation=config["validation"],
    priority: PAIRS_PRIORITY
    threads: threads_for("hold_out_validation")
    resources:
        **resources_for("hold_out_validation"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/hold_out_validation.py"


rule summarize_subsets:
    input:
        subset_summaries,
    output:
        report(
            "results/{dataset}/subsets.csv",
            caption="../config/report/subsets.rst",
            category="Labelled subsets",
        ),
    log:
        "logs/{dataset}/summarize_subsets.log",
    threads: threads_for("summarize_subsets")
    resources:
        **resources_for("summarize_subsets"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/summarize_subsets.py"
