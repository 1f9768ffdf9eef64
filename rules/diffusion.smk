# Diffusion stage: the structure model, the structure-conditioned image model,
# sampling synthetic pairs in shards, and evidence of their quality (spec sections 4-5).


rule train_structure_model:
    input:
        "results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        model="results/{dataset}/{pct}pct/diffusion/structure_model.pt",
        losses="results/{dataset}/{pct}pct/diffusion/structure_model_loss.csv",
        curve=report(
            "results/{dataset}/{pct}pct/diffusion/structure_model_loss.png",
            caption="../config/report/loss_curve.rst",
            category="Diffusion models",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/train_structure_model.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/train_structure_model.tsv"
    params:
        kind="structure",
        network=config["diffusion"]["structure_model"]["network"],
        training=config["diffusion"]["structure_model"]["training"],
        schedule=config["diffusion"]["schedule"],
        device=config["diffusion"]["device"],
        checkpoint_dir="checkpoints/{dataset}/{pct}pct/structure_model",
        init_model=None,
    priority: PAIRS_PRIORITY
    threads: threads_for("train_structure_model")
    resources:
        **resources_for("train_structure_model"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/train_diffusion_model.py"


rule train_image_model_conditional:
    input:
        "results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        model="results/{dataset}/{pct}pct/diffusion/image_model_conditional.pt",
        losses="results/{dataset}/{pct}pct/diffusion/image_model_conditional_loss.csv",
        curve=report(
            "results/{dataset}/{pct}pct/diffusion/image_model_conditional_loss.png",
            caption="../config/report/loss_curve.rst",
            category="Diffusion models",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/train_image_model_conditional.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/train_image_model_conditional.tsv"
    params:
        kind="image",
        network=config["diffusion"]["image_model"]["network"],
        training=config["diffusion"]["image_model"]["conditional"],
        schedule=config["diffusion"]["schedule"],
        device=config["diffusion"]["device"],
        checkpoint_dir="checkpoints/{dataset}/{pct}pct/image_model_conditional",
        init_model=None,
    priority: PAIRS_PRIORITY
    threads: threads_for("train_image_model_conditional")
    resources:
        **resources_for("train_image_model_conditional"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/train_diffusion_model.py"


rule train_image_model_guided:
    input:
        samples="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        init_model="results/{dataset}/{pct}pct/diffusion/image_model_conditional.pt",
    output:
        model="results/{dataset}/{pct}pct/diffusion/image_model.pt",
        losses="results/{dataset}/{pct}pct/diffusion/image_model_guided_loss.csv",
        curve=report(
            "results/{dataset}/{pct}pct/diffusion/image_model_guided_loss.png",
            caption="../config/report/loss_curve.rst",
            category="Diffusion models",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/train_image_model_guided.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/train_image_model_guided.tsv"
    params:
        kind="image",
        network=config["diffusion"]["image_model"]["network"],
        training=config["diffusion"]["image_model"]["guided"],
        schedule=config["diffusion"]["schedule"],
        device=config["diffusion"]["device"],
        checkpoint_dir="checkpoints/{dataset}/{pct}pct/image_model_guided",
    priority: PAIRS_PRIORITY
    threads: threads_for("train_image_model_guided")
    resources:
        **resources_for("train_image_model_guided"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/train_diffusion_model.py"


rule select_structure_weights:
    input:
        model="results/{dataset}/{pct}pct/diffusion/structure_model.pt",
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        scores=report(
            "results/{dataset}/{pct}pct/diffusion/structure_model_selection.csv",
            caption="../config/report/weight_selection.rst",
            category="Diffusion models",
            subcategory="{dataset} {pct}%",
        ),
        chosen="results/{dataset}/{pct}pct/diffusion/structure_model_selection.json",
    log:
        "logs/{dataset}/{pct}pct/select_structure_weights.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/select_structure_weights.tsv"
    params:
        n=config["diffusion"]["selection"]["n_structures"],
        sampling=config["diffusion"]["sampling"],
        watershed=structure_watershed(config),
        cleanup=config["diffusion"]["cleanup"],
        device=config["diffusion"]["device"],
    priority: PAIRS_PRIORITY
    threads: threads_for("select_structure_weights")
    resources:
        **resources_for("select_structure_weights"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/select_structure_weights.py"


rule select_image_weights:
    input:
        model="results/{dataset}/{pct}pct/diffusion/image_model.pt",
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        segmenter=labelled_segmenter("model.pt"),
    output:
        scores=report(
            "results/{dataset}/{pct}pct/diffusion/image_model_selection.csv",
            caption="../config/report/weight_selection.rst",
            category="Diffusion models",
            subcategory="{dataset} {pct}%",
        ),
        chosen="results/{dataset}/{pct}pct/diffusion/image_model_selection.json",
    log:
        "logs/{dataset}/{pct}pct/select_image_weights.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/select_image_weights.tsv"
    params:
        n=config["diffusion"]["selection"]["n_images"],
        sampling=image_sampling(config),
        watershed=config["watershed"],
        device=config["diffusion"]["device"],
    priority: PAIRS_PRIORITY
    threads: threads_for("select_image_weights")
    resources:
        **resources_for("select_image_weights"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/select_image_weights.py"


rule guidance_sweep:
    input:
        model="results/{dataset}/{pct}pct/diffusion/image_model.pt",
        selection="results/{dataset}/{pct}pct/diffusion/image_model_selection.json",
        pairs=pair_shards,
        segmenter=labelled_segmenter("model.pt"),
        validation="results/{dataset}/{pct}pct/trainsets/validation.csv",
    output:
        table=report(
            "results/{dataset}/{pct}pct/synthetic/quality/guidance_sweep.csv",
            caption="../config/report/guidance_sweep.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
        figure=report(
            "results/{dataset}/{pct}pct/synthetic/quality/guidance_sweep.png",
            caption="../config/report/guidance_sweep.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/guidance_sweep.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/guidance_sweep.tsv"
    params:
        scales=config["diffusion"]["guidance_sweep"]["scales"],
        n=config["diffusion"]["guidance_sweep"]["n"],
        sampling=image_sampling(config),
        watershed=config["watershed"],
        device=config["diffusion"]["device"],
    threads: threads_for("guidance_sweep")
    resources:
        **resources_for("guidance_sweep"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/guidance_sweep.py"


rule sample_structures:
    input:
        model="results/{dataset}/{pct}pct/diffusion/structure_model.pt",
        selection="results/{dataset}/{pct}pct/diffusion/structure_model_selection.json",
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        "results/{dataset}/{pct}pct/synthetic/structures_{shard}.npz",
    log:
        "logs/{dataset}/{pct}pct/sample_structures_{shard}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/sample_structures_{shard}.tsv"
    params:
        n_total=synthetic_pairs,
        n_shards=n_shards,
        sampling=config["diffusion"]["sampling"],
        watershed=structure_watershed(config),
        cleanup=config["diffusion"]["cleanup"],
        oversample=config["diffusion"]["structure_oversample"],
        device=config["diffusion"]["device"],
        resume_file="checkpoints/{dataset}/{pct}pct/synthetic/structures_{shard}.npz",
    priority: PAIRS_PRIORITY
    threads: threads_for("sample_structures")
    resources:
        **resources_for("sample_structures"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/sample_structures.py"


rule sample_images:
    input:
        model="results/{dataset}/{pct}pct/diffusion/image_model.pt",
        selection="results/{dataset}/{pct}pct/diffusion/image_model_selection.json",
        structures="results/{dataset}/{pct}pct/synthetic/structures_{shard}.npz",
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        "results/{dataset}/{pct}pct/synthetic/pairs_{shard}.npz",
    log:
        "logs/{dataset}/{pct}pct/sample_images_{shard}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/sample_images_{shard}.tsv"
    params:
        sampling=image_sampling(config),
        colour_transfer=config["diffusion"]["colour_transfer"],
        device=config["diffusion"]["device"],
        resume_file="checkpoints/{dataset}/{pct}pct/synthetic/pairs_{shard}.npz",
    priority: PAIRS_PRIORITY
    threads: threads_for("sample_images")
    resources:
        **resources_for("sample_images"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/sample_images.py"


rule build_augmented_set:
    input:
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        pairs=pair_shards,
    output:
        "results/{dataset}/{pct}pct/trainsets/augmented.csv",
    log:
        "logs/{dataset}/{pct}pct/build_augmented_set.log",
    priority: PAIRS_PRIORITY
    threads: threads_for("build_augmented_set")
    resources:
        **resources_for("build_augmented_set"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/build_augmented_set.py"


# The consistency control (arm shuffled): the same pairs, each image with another pair's label.
rule build_shuffled_set:
    input:
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        pairs=pair_shards,
    output:
        shard="results/{dataset}/{pct}pct/synthetic/shuffled_pairs.npz",
        samples="results/{dataset}/{pct}pct/trainsets/shuffled.csv",
    log:
        "logs/{dataset}/{pct}pct/build_shuffled_set.log",
    params:
        seed=config["diffusion"]["sampling"]["seed"],
    priority: PAIRS_PRIORITY
    threads: threads_for("build_shuffled_set")
    resources:
        **resources_for("build_shuffled_set"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/build_shuffled_set.py"


rule assess_synthetic_pairs:
    input:
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        pairs=pair_shards,
    output:
        statistics=report(
            "results/{dataset}/{pct}pct/synthetic/quality/statistics.csv",
            caption="../config/report/synthetic_statistics.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
        agreement=report(
            "results/{dataset}/{pct}pct/synthetic/quality/agreement.csv",
            caption="../config/report/synthetic_agreement.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
        statistics_plot=report(
            "results/{dataset}/{pct}pct/synthetic/quality/statistics.png",
            caption="../config/report/synthetic_statistics.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
        samples_plot=report(
            "results/{dataset}/{pct}pct/synthetic/quality/samples.png",
            caption="../config/report/synthetic_samples.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
    log:
        "logs/{dataset}/{pct}pct/assess_synthetic_pairs.log",
    params:
        seed=config["diffusion"]["sampling"]["seed"],
    threads: threads_for("assess_synthetic_pairs")
    resources:
        **resources_for("assess_synthetic_pairs"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/assess_synthetic_pairs.py"



rule segment_synthetic_pairs:
    input:
        model=labelled_segmenter("model.pt"),
        validation="results/{dataset}/{pct}pct/trainsets/validation.csv",
        pairs=pair_shards,
    output:
        summary=report(
            "results/{dataset}/{pct}pct/synthetic/quality/segmenter_agreement.csv",
            caption="../config/report/segmenter_agreement.rst",
            category="Synthetic pairs",
            subcategory="{dataset} {pct}%",
        ),
        per_pair="results/{dataset}/{pct}pct/synthetic/quality/segmenter_agreement_per_pair.csv",
    log:
        "logs/{dataset}/{pct}pct/segment_synthetic_pairs.log",
    params:
        inference=config["segmentation"][JUDGE_MODEL]["inference"],  # the judge's, whatever models lists first
        watershed=config["watershed"],
        device=config["segmentation"]["device"],
    threads: threads_for("segment_synthetic_pairs")
    resources:
        **resources_for("segment_synthetic_pairs"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/segment_synthetic_pairs.py"

rule sample_sampler_comparison:
    input:
        "results/{dataset}/{pct}pct/diffusion/structure_model.pt",
    output:
        "results/{dataset}/{pct}pct/sampler_comparison/{name}.npz",
    log:
        "logs/{dataset}/{pct}pct/sample_sampler_comparison_{name}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/sample_sampler_comparison_{name}.tsv"
    params:
        n_total=config["diffusion"]["compare_samplers"]["n"],
        sampling=lambda wildcards: {
            **config["diffusion"]["sampling"],
            **config["diffusion"]["compare_samplers"]["samplers"][wildcards.name],
        },
        watershed=structure_watershed(config),
        cleanup=config["diffusion"]["cleanup"],
        device=config["diffusion"]["device"],
        resume_file="checkpoints/{dataset}/{pct}pct/sampler_comparison/{name}.npz",
    threads: threads_for("sample_sampler_comparison")
    resources:
        **resources_for("sample_sampler_comparison"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/sample_sampler_comparison.py"


rule compare_samplers:
    input:
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
        samples=sampler_comparison_shards,
    output:
        table=report(
            "results/{dataset}/{pct}pct/sampler_comparison/statistics.csv",
            caption="../config/report/sampler_comparison.rst",
            category="Synthetic pairs",
            subcategory="Samplers",
        ),
        plot=report(
            "results/{dataset}/{pct}pct/sampler_comparison/statistics.png",
            caption="../config/report/sampler_comparison.rst",
            category="Synthetic pairs",
            subcategory="Samplers",
        ),
    log:
        "logs/{dataset}/{pct}pct/compare_samplers.log",
    params:
        names=list(config["diffusion"]["compare_samplers"]["samplers"]),
    threads: threads_for("compare_samplers")
    resources:
        **resources_for("compare_samplers"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/compare_samplers.py"
