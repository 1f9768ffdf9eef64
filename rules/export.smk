# Synthetic data for use elsewhere (README, "Use the synthetic data elsewhere"); none of these
# is part of rule all. Targets:
#   results/{dataset}/{pct}pct/export/pairs       the subset's synthetic pairs
#   results/{dataset}/{pct}pct/export/augmented   the labelled training part + the pairs
#   results/{dataset}/{pct}pct/export/extra{N}    N more pairs from the finished models
#   results/label_to_image                        images for the maps of label_to_image.labels


rule export_training_set:
    input:
        unpack(export_inputs),
    output:
        directory("results/{dataset}/{pct}pct/export/{exportset}"),
    log:
        "logs/{dataset}/{pct}pct/export_training_set_{exportset}.log",
    params:
        sampling=config["diffusion"]["sampling"],
        image_sampling=image_sampling(config),
        colour_transfer=config["diffusion"]["colour_transfer"],
        streams=export_streams,
        prefix=export_prefix,
    threads: threads_for("export_training_set")
    resources:
        **resources_for("export_training_set"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/export_training_set.py"


# N more pairs from the finished models: the pairs' rules with their own noise streams
# (extra_structure, extra_image), so no extra pair reuses a pair's noise; extra{N} and
# extra{M} share their first min(N, M) structures (sample i draws from generator i).
rule sample_extra_structures:
    input:
        model="results/{dataset}/{pct}pct/diffusion/structure_model.pt",
        selection="results/{dataset}/{pct}pct/diffusion/structure_model_selection.json",
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        "results/{dataset}/{pct}pct/extra{n_extra}/structures_{shard}.npz",
    log:
        "logs/{dataset}/{pct}pct/sample_extra_structures_{n_extra}_{shard}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/sample_extra_structures_{n_extra}_{shard}.tsv"
    params:
        n_total=lambda wildcards: int(wildcards.n_extra),
        n_shards=n_extra_shards,
        sampling=config["diffusion"]["sampling"],
        watershed=structure_watershed(config),
        cleanup=config["diffusion"]["cleanup"],
        oversample=config["diffusion"]["structure_oversample"],
        device=config["diffusion"]["device"],
        resume_file="checkpoints/{dataset}/{pct}pct/extra{n_extra}/structures_{shard}.npz",
        stream=EXTRA_STREAMS[0],
    threads: threads_for("sample_extra_structures")
    resources:
        **resources_for("sample_extra_structures"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/sample_extra_structures.py"


rule sample_extra_images:
    input:
        model="results/{dataset}/{pct}pct/diffusion/image_model.pt",
        selection="results/{dataset}/{pct}pct/diffusion/image_model_selection.json",
        structures="results/{dataset}/{pct}pct/extra{n_extra}/structures_{shard}.npz",
        labelled="results/{dataset}/{pct}pct/trainsets/labelled_train.csv",
    output:
        "results/{dataset}/{pct}pct/extra{n_extra}/pairs_{shard}.npz",
    log:
        "logs/{dataset}/{pct}pct/sample_extra_images_{n_extra}_{shard}.log",
    benchmark:
        "benchmarks/{dataset}/{pct}pct/sample_extra_images_{n_extra}_{shard}.tsv"
    params:
        sampling=image_sampling(config),
        colour_transfer=config["diffusion"]["colour_transfer"],
        device=config["diffusion"]["device"],
        resume_file="checkpoints/{dataset}/{pct}pct/extra{n_extra}/pairs_{shard}.npz",
        stream=EXTRA_STREAMS[1],
    threads: threads_for("sample_extra_images")
    resources:
        **resources_for("sample_extra_images"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/sample_extra_images.py"


rule label_to_image:
    input:
        unpack(label_to_image_inputs),
    output:
        directory("results/label_to_image"),
    log:
        "logs/label_to_image.log",
    params:
        sampling=label_to_image_sampling(config),
        n_per_map=config["label_to_image"]["n_per_map"],
        device=config["diffusion"]["device"],
    threads: threads_for("label_to_image")
    resources:
        **resources_for("label_to_image"),
    conda:
        "../envs/nudiff.yaml"
    script:
        "../workflow_scripts/label_to_image.py"
