# Helpers shared by every rule file: config validation, targets, wildcard
# constraints, and the functions rules take their inputs and params from.

import re

from snakemake.utils import validate

from nudiff.config import check_config, subset_key
from nudiff.datasets.sources import list_source_items


validate(config, schema="../config/schema.yaml")
check_config(config)

DATASETS = list(config["datasets"])
SUBSETS = sorted(config["subsets"])


wildcard_constraints:
    dataset="|".join(re.escape(name) for name in DATASETS),
    pct="|".join(str(p) for p in SUBSETS),


# ---- datasets ---------------------------------------------------------------


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def prepare_dataset_input(wildcards):
    """A generated demo comes from make_demo_dataset; real data is listed file by file,
    so Snakemake notices a changed or missing source file."""
    spec = dataset_spec(wildcards)
    if spec["format"] == "demo":
        return [f"results/{wildcards.dataset}/source"]
    items = list_source_items(spec["format"], spec["path"], config_key=f"datasets.{wildcards.dataset}.format")
    return sorted({str(p) for item in items for p in (item.image_path, item.label_path)})


def prepare_dataset_params(wildcards):
    spec = dataset_spec(wildcards)
    if spec["format"] == "demo":
        return {"format": "folder", "root": f"results/{wildcards.dataset}/source"}
    return {"format": spec["format"], "root": spec["path"]}


# ---- targets ----------------------------------------------------------------


def subset_summaries(wildcards):
    return expand(
        "results/{dataset}/{pct}pct/trainsets/labelled_summary.json",
        dataset=wildcards.dataset,
        pct=SUBSETS,
    )


def get_final_output():
    return expand("results/{dataset}/subsets.csv", dataset=DATASETS)
