# Segmentation stage: each segmenter trained for each arm (nudiff.arms: labelled, the paper's
# augmented union, and the controls a preset asks for), applied to the whole test images, and
# scored (spec section 6). {trainset} is the arm.


rule train_segmenter:
    input:
        samples=arm_samples,
        validation="results/{dataset}/{pct}pct/trainsets/validation.csv",
    output:
        model="results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/model.pt",
        losses="results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/loss.csv",
        validation="results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/validation.csv",
        curve=report(
            "results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/training.png",
            caption="../config/report/segmenter_training.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/train_segmenter_{model}_{trainset}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/train_segmenter_{model}_{trainset}_seed{seed}.tsv"
    params:
        network=lambda wildcards: config["segmentation"][wildcards.model]["network"],
        training=segmenter_training,
        device=config["segmentation"]["device"],
        checkpoint_dir="checkpoints/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}",
    priority: SEGMENTER_PRIORITY
    threads: threads_for("train_segmenter")
    resources:
        **resources_for("train_segmenter"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/train_segmenter.py"


rule segment_test_images:
    input:
        model="results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/model.pt",
        prepared="results/{dataset}/prepared/test",
    output:
        directory("results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/predictions"),
    log:
        "logs/{dataset}/{pct}pct/segment_test_images_{model}_{trainset}_seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/segment_test_images_{model}_{trainset}_seed{seed}.tsv"
    params:
        inference=lambda wildcards: config["segmentation"][wildcards.model]["inference"],
        watershed=config["watershed"],
        device=config["segmentation"]["device"],
    threads: threads_for("segment_test_images")
    resources:
        **resources_for("segment_test_images"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/segment_test_images.py"


rule score_predictions:
    input:
        prepared="results/{dataset}/prepared/test",
        predictions="results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/predictions",
    output:
        "results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/scores.csv",
    log:
        "logs/{dataset}/{pct}pct/score_predictions_{model}_{trainset}_seed{seed}.log",
    params:
        labels=lambda wildcards: {
            "dataset": wildcards.dataset,
            "subset": f"{wildcards.pct}pct",
            "model": wildcards.model,
            "trainset": wildcards.trainset,
            "seed": int(wildcards.seed),
        },
    group:
        "evaluate"
    threads: threads_for("score_predictions")
    resources:
        **resources_for("score_predictions"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/score_predictions.py"


rule summarize_metrics:
    input:
        subset_scores,
    output:
        metrics=report(
            "results/{dataset}/{pct}pct/metrics.csv",
            caption="../config/report/metrics.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
        per_image="results/{dataset}/{pct}pct/metrics_per_image.csv",
        over_seeds=report(
            "results/{dataset}/{pct}pct/metrics_over_seeds.csv",
            caption="../config/report/metrics_over_seeds.rst",
            category="Segmentation",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/summarize_metrics.log",
    group:
        "evaluate"
    threads: threads_for("summarize_metrics")
    resources:
        **resources_for("summarize_metrics"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/summarize_metrics.py"
