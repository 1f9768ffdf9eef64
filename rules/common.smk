# Shared helpers (config validation, targets, wildcard constraints) and the
# functions that rules take their inputs and params from.

import re

from snakemake.utils import validate

from nudiff.arms import TRAINSETS as ARM_TRAINSETS
from nudiff.arms import arm_training, check_arms, comparisons
from nudiff.config import check_config, image_sampling, structure_watershed, subset_key
from nudiff.config import label_to_image_model, label_to_image_sampling
from nudiff.datasets.sources import SPLITS as SOURCE_SPLITS
from nudiff.datasets.sources import list_source_items
from nudiff.errors import ConfigError


validate(config, schema="../config/schema.yaml")
check_config(config)
check_arms(config["segmentation"])


def key_sorted(value):
    """``value`` with every mapping's keys in sorted order, recursively."""
    if isinstance(value, dict):
        return {key: key_sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [key_sorted(item) for item in value]
    return value


# Snakemake compares a rule's params with the last run's as written, key order
# included: without this, reordering keys in a config file would rerun jobs.
canonical_config = key_sorted(config)
config.clear()
config.update(canonical_config)

DATASETS = list(config["datasets"])
SUBSETS = sorted(config["subsets"])


SPLITS = list(SOURCE_SPLITS)


wildcard_constraints:
    trainset="|".join(re.escape(name) for name in config["segmentation"]["arms"]),
    dataset="|".join(re.escape(name) for name in DATASETS),
    pct="|".join(str(p) for p in SUBSETS),
    split="|".join(SPLITS),
    exportset="pairs|augmented|extra[1-9][0-9]*",
    n_extra="[1-9][0-9]*",


# ---- datasets ---------------------------------------------------------------


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def prepare_dataset_input(wildcards):
    """A generated demo comes from make_demo_dataset; real data is listed file by file, the
    split's own files only, so Snakemake notices a changed or missing source file and a test
    file never reaches the training split's job."""
    spec = dataset_spec(wildcards)
    if spec["format"] == "demo":
        return [f"results/{wildcards.dataset}/source"]
    items = list_source_items(
        spec["format"], spec["path"], splits=[wildcards.split], config_key=f"datasets.{wildcards.dataset}.format"
    )
    return sorted({str(p) for item in items for p in (item.image_path, item.label_path)})


def prepare_dataset_params(wildcards):
    spec = dataset_spec(wildcards)
    if spec["format"] == "demo":
        return {"format": "folder", "root": f"results/{wildcards.dataset}/source", "split": wildcards.split}
    return {"format": spec["format"], "root": spec["path"], "split": wildcards.split}


# ---- targets ----------------------------------------------------------------


def subset_summaries(wildcards):
    return expand(
        "results/{dataset}/{pct}pct/trainsets/labelled_summary.json",
        dataset=wildcards.dataset,
        pct=SUBSETS,
    )


def get_final_output():
    """The table (which needs every subset's metrics), and the figures beside it."""
    out = ["results/table.csv", "results/provenance.json"]
    out += expand("results/{dataset}/subsets.csv", dataset=DATASETS)
    for dataset in DATASETS:
        out += diffusion_outputs(dataset)
        out += expand("results/{dataset}/{pct}pct/per_image_metrics.png", dataset=dataset, pct=SUBSETS)
        out += expand("results/{dataset}/{pct}pct/prediction_overlays.png", dataset=dataset, pct=SUBSETS)
        out += expand("results/{dataset}/{pct}pct/arms.png", dataset=dataset, pct=SUBSETS)
    return out


# ---- resources ----------------------------------------------------------------

_RESOURCE_DEFAULTS = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}
# Rules whose work is a network on a GPU; they ask Slurm for one unless config says otherwise.
GPU_RULES = {
    "train_structure_model",
    "train_image_model_conditional",
    "train_image_model_guided",
    "sample_structures",
    "sample_images",
    "sample_sampler_comparison",
    "train_segmenter",
    "segment_test_images",
    "segment_synthetic_pairs",
    "select_structure_weights",
    "select_image_weights",
    "guidance_sweep",
    "sample_extra_structures",
    "sample_extra_images",
    "label_to_image",
}


def rule_resources(rule_name):
    """The rule's entry under config resources, over resources.default, over built-in defaults.

    Every rule takes its threads and resources from here (and nowhere else), so
    every key of config resources reaches a job; the schema lists the rule names.
    """
    merged = dict(_RESOURCE_DEFAULTS, gpu=1 if rule_name in GPU_RULES else 0)
    merged.update(config["resources"].get("default", {}))
    own = config["resources"].get(rule_name, {})
    merged.update(own)
    if "gpu_model" in own and merged["gpu"] == 0:
        # A model for no GPU would be dropped without a word.
        raise ConfigError(f"resources.{rule_name}.gpu_model: the rule asks for no GPU (gpu 0)")
    return merged


def threads_for(rule_name):
    return rule_resources(rule_name)["threads"]


def resources_for(rule_name):
    """mem_mb, runtime and, for GPU jobs, the Slurm executor's gpu (and gpu_model) resources."""
    chosen = rule_resources(rule_name)
    out = {"mem_mb": chosen["mem_mb"], "runtime": chosen["runtime"]}
    if chosen["gpu"] > 0:
        out["gpu"] = chosen["gpu"]
        if "gpu_model" in chosen:
            out["gpu_model"] = chosen["gpu_model"]
    return out


# ---- diffusion ------------------------------------------------------------------


# The jobs on the way to the synthetic pairs (diffusion training, weight choice, sampling) go
# before other ready jobs: the augmented segmenters wait for them, while the labelled ones and
# the reports can fill the other cores. Without it, a 2-core run of config/monuseg-cpu.yaml
# trained all labelled Hover-Nets before starting the image model (docs/records/2026-12-01-monuseg-cpu-10pct-do-pairs-help).
# A priority does not pass to a job's inputs, so each subset's own data jobs (select_subset,
# hold_out_validation) carry it too: without it the demo's 100% subset waited behind the 10%
# segmenters and its generator started after 7 of the 17.8 minutes (docs/records/2026-12-05-demo-fresh-clone-pffnet900).
PAIRS_PRIORITY = 10
# Segmenter training, the longest jobs after them, goes before the short ones (test-image
# inference, guidance sweep, sampler comparison, reports), which then fill the other cores
# instead of leaving one training to run alone at the end: the 2-core demo's last augmented
# PFF-Net ran 66 s by itself while the short jobs went first (docs/records/2026-12-03-demo-fresh-clone-44752c8).
SEGMENTER_PRIORITY = 5


def synthetic_pairs(wildcards):
    return config["datasets"][wildcards.dataset]["synthetic_pairs"][subset_key(int(wildcards.pct))]


def n_shards(wildcards):
    """Sampling jobs for a subset: the configured count, but never more than the samples."""
    return min(config["diffusion"]["sampling"]["shards"], synthetic_pairs(wildcards))


def pair_shards(wildcards):
    return expand(
        "results/{dataset}/{pct}pct/synthetic/pairs_{shard}.npz",
        dataset=wildcards.dataset,
        pct=wildcards.pct,
        shard=range(n_shards(wildcards)),
    )


def sampler_comparison_shards(wildcards):
    return expand(
        "results/{dataset}/{pct}pct/sampler_comparison/{name}.npz",
        dataset=wildcards.dataset,
        pct=wildcards.pct,
        name=list(config["diffusion"]["compare_samplers"]["samplers"]),
    )


def diffusion_outputs(dataset):
    """Quality evidence of every subset's models, plus the sampler comparison if enabled."""
    out = expand(
        "results/{dataset}/{pct}pct/synthetic/quality/{evidence}.csv",
        dataset=dataset,
        pct=SUBSETS,
        evidence=["statistics", "segmenter_agreement"],
    )
    out += expand(
        "results/{dataset}/{pct}pct/diffusion/{model}_selection.csv",
        dataset=dataset,
        pct=SUBSETS,
        model=["structure_model", "image_model"],
    )
    sweep = config["diffusion"]["guidance_sweep"]
    if sweep["enabled"]:
        out.append(f"results/{dataset}/{sweep['subset']}pct/synthetic/quality/guidance_sweep.csv")
    comparison = config["diffusion"]["compare_samplers"]
    if comparison["enabled"]:
        out.append(f"results/{dataset}/{comparison['subset']}pct/sampler_comparison/statistics.csv")
    return out


# ---- exports and more pairs (rules/export.smk) ---------------------------------

EXTRA_STREAMS = ["extra_structure", "extra_image"]  # nudiff.diffusion.synthesis.STREAMS


def subset_file(wildcards, name):
    """A file of the subset of ``wildcards`` (``name`` relative to results/<dataset>/<pct>pct)."""
    return expand("results/{dataset}/{pct}pct/{name}", dataset=wildcards.dataset, pct=wildcards.pct, name=name)[0]


def n_extra_shards(wildcards):
    """Sampling jobs of N more pairs: the configured count, but never more than N."""
    return min(config["diffusion"]["sampling"]["shards"], int(wildcards.n_extra))


def extra_pair_shards(wildcards, n_extra):
    return expand(
        "results/{dataset}/{pct}pct/extra{n_extra}/pairs_{shard}.npz",
        dataset=wildcards.dataset,
        pct=wildcards.pct,
        n_extra=n_extra,
        shard=range(min(config["diffusion"]["sampling"]["shards"], int(n_extra))),
    )


def export_inputs(wildcards):
    """The models and weight choices that drew the pairs, the pairs' shards, and for the
    augmented set the labelled training part."""
    out = {
        "structure_model": subset_file(wildcards, "diffusion/structure_model.pt"),
        "structure_selection": subset_file(wildcards, "diffusion/structure_model_selection.json"),
        "image_model": subset_file(wildcards, "diffusion/image_model.pt"),
        "image_selection": subset_file(wildcards, "diffusion/image_model_selection.json"),
    }
    if wildcards.exportset.startswith("extra"):
        out["pairs"] = extra_pair_shards(wildcards, wildcards.exportset.removeprefix("extra"))
    else:
        out["pairs"] = pair_shards(wildcards)
    if wildcards.exportset == "augmented":
        out["labelled"] = subset_file(wildcards, "trainsets/labelled_train.csv")
    return out


def export_streams(wildcards):
    return EXTRA_STREAMS if wildcards.exportset.startswith("extra") else ["structure", "image"]


def export_prefix(wildcards):
    return "extra" if wildcards.exportset.startswith("extra") else "synthetic"


def label_to_image_inputs(wildcards):
    """The folder of maps, and the image model (and its chosen weights) of the configured subset."""
    folder = config["label_to_image"]["labels"]
    if not folder:
        raise ConfigError("label_to_image.labels: set it to the folder of instance maps to draw images for")
    dataset, subset = label_to_image_model(config)
    model = expand(
        "results/{dataset}/{pct}pct/diffusion/{name}",
        dataset=dataset,
        pct=subset,
        name=["image_model.pt", "image_model_selection.json"],
    )
    return {"labels": folder, "model": model[0], "selection": model[1]}


# ---- segmentation and evaluation ----------------------------------------------

MODELS = config["segmentation"]["models"]
SEEDS = config["segmentation"]["seeds"]
TRAINSETS = config["segmentation"]["arms"]  # the arms, named as in the table
_PAPER_TABLES = {"monuseg": "monuseg", "kumar": "kumar"}


JUDGE_MODEL = "hovernet"  # the segmenter-agreement judge (nudiff.assessment) reads Hover-Net


def labelled_segmenter(name):
    """A file of the Hover-Net of the first seed trained on the labelled subset: the judge of
    the synthetic pairs (it never saw one); trained for the judge even if not in models."""
    return f"results/{{dataset}}/{{pct}}pct/segmentation/{JUDGE_MODEL}/labelled/seed{SEEDS[0]}/{name}"


def segmenter_training(wildcards):
    """The model's training settings for the arm (its recipe and overrides, nudiff.arms), with
    this run's seed and how validation turns outputs into instances (Hover-Net: the shared
    watershed; PFF-Net: its inference settings)."""
    model = config["segmentation"][wildcards.model]
    extra = {"watershed": config["watershed"]} if wildcards.model == "hovernet" else {"inference": model["inference"]}
    training = arm_training(wildcards.trainset, config["segmentation"], wildcards.model)
    return {**training, "seed": int(wildcards.seed), **extra}


def arm_samples(wildcards):
    """The sample table the arm trains on."""
    return f"results/{wildcards.dataset}/{wildcards.pct}pct/trainsets/{ARM_TRAINSETS[wildcards.trainset]}.csv"


def subset_scores(wildcards):
    return expand(
        "results/{dataset}/{pct}pct/segmentation/{model}/{trainset}/seed{seed}/scores.csv",
        dataset=wildcards.dataset,
        pct=wildcards.pct,
        model=MODELS,
        trainset=TRAINSETS,
        seed=SEEDS,
    )


# every run of a subset, (model, arm, seed); compare_arms names them "<model>/<arm>/<seed>"
RUNS = [(model, arm, seed) for model in MODELS for arm in TRAINSETS for seed in SEEDS]
RUN_NAMES = ["{}/{}/{}".format(*run) for run in RUNS]


def arm_validation_logs(wildcards):
    """Every run's validation log of a subset, in the order of RUN_NAMES."""
    return [
        f"results/{wildcards.dataset}/{wildcards.pct}pct/segmentation/{model}/{arm}/seed{seed}/validation.csv"
        for model, arm, seed in RUNS
    ]


def overlay_predictions(wildcards):
    """Predictions of the first seed of every model and training set, by label."""
    return {
        f"{model}_{trainset}": f"results/{wildcards.dataset}/{wildcards.pct}pct/segmentation/{model}/{trainset}/seed{SEEDS[0]}/predictions"
        for model in MODELS
        for trainset in TRAINSETS
        if trainset in ("labelled", "augmented")  # the paper's two rows; every arm is in compare_arms
    }


def paper_tables():
    """Dataset -> the paper's dataset its numbers are compared with (None: no comparison)."""
    out = {}
    for name, spec in config["datasets"].items():
        chosen = spec.get("paper_table", _PAPER_TABLES.get(spec["format"], "none"))
        out[name] = None if chosen == "none" else chosen
    return out


def all_metrics():
    return expand("results/{dataset}/{pct}pct/metrics.csv", dataset=DATASETS, pct=SUBSETS)
