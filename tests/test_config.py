"""The workflow configuration: its schema's defaults are the library's, and reading it
(what the Snakefile and rules/*.smk import) needs no torch."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nudiff.config import image_sampling, structure_watershed
from nudiff.datasets.demo import make_demo_dataset
from nudiff.diffusion.synthesis import CleanupSettings, SamplingSettings
from nudiff.diffusion.training import DiffusionTraining, ScheduleConfig
from nudiff.diffusion.unet import UNetConfig
from nudiff.features import extract_features
from nudiff.patches import extract_patches
from nudiff.segmentation.hovernet.config import HoVerNetConfig
from nudiff.segmentation.hovernet.inference import hovernet_predictor
from nudiff.segmentation.hovernet.train import HoVerNetTraining
from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.inference import predict_pffnet_instances
from nudiff.segmentation.pffnet.train import PFFNetTraining
from nudiff.structure import instances_from_structure
from nudiff.subsets import cluster_patches

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
PROPS = SCHEMA["properties"]

# Schema section -> what in nudiff takes its keys, and the keys only the workflow reads.
# "device": the library takes a torch device; the schema's "auto" is resolved by the
# workflow script (nudiff.config.resolve_device) before the call.
CONSUMERS = {
    "$defs.unet": (UNetConfig, set()),
    "$defs.hovernet_network": (HoVerNetConfig, set()),
    "$defs.segmenter_training": (HoVerNetTraining, set()),
    "$defs.pffnet_network": (PFFNetConfig, set()),
    "$defs.pffnet_training": (PFFNetTraining, set()),
    "$defs.diffusion_training": (DiffusionTraining, set()),
    "patches": (extract_patches, set()),
    "features": (extract_features, {"device"}),
    "selection": (cluster_patches, set()),
    "watershed": (instances_from_structure, set()),
    "diffusion.schedule": (ScheduleConfig, set()),
    "diffusion.sampling": (SamplingSettings, {"shards"}),  # rules/common.smk n_shards
    "diffusion.cleanup": (CleanupSettings, set()),
    "segmentation.hovernet.inference": (hovernet_predictor, set()),
    "segmentation.pffnet.inference": (predict_pffnet_instances, set()),
    "datasets.*.demo": (make_demo_dataset, set()),
}


def schema_section(path: str) -> dict:
    if path.startswith("$defs."):
        return SCHEMA["$defs"][path.removeprefix("$defs.")]
    node = {"properties": PROPS}
    for part in path.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node


def code_defaults(consumer) -> dict:
    """Field or keyword defaults of a dataclass or function, tuples as lists (as in YAML)."""
    if dataclasses.is_dataclass(consumer):
        found = {f.name: f.default for f in dataclasses.fields(consumer) if f.default is not dataclasses.MISSING}
    else:
        params = inspect.signature(consumer).parameters.values()
        found = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in found.items()}


@pytest.mark.parametrize("path", sorted(CONSUMERS))
def test_every_schema_default_is_the_code_default(path):
    consumer, workflow_only = CONSUMERS[path]
    defaults = code_defaults(consumer)
    schema = {key: spec["default"] for key, spec in schema_section(path)["properties"].items() if "default" in spec}
    assert schema, path
    for key, value in schema.items():
        if key in workflow_only:
            continue
        assert key in defaults, f"{path}.{key}: nothing in {consumer.__qualname__} takes it"
        assert value == defaults[key], f"{path}.{key}: schema {value!r}, {consumer.__qualname__} {defaults[key]!r}"


def test_the_image_model_stages_differ_from_the_structure_model_only_where_they_say():
    """The two image-model stages are the structure model's training keys with a few
    overrides (the paper's image-model values), described in their own entries."""
    base = SCHEMA["$defs"]["diffusion_training"]["properties"]
    for stage in ("image_conditional_training", "image_guided_training"):
        props = SCHEMA["$defs"][stage]["properties"]
        assert set(props) == set(base), stage
        changed = {key for key in props if props[key] != base[key]}
        assert changed <= {"iterations", "batch_size", "lr", "drop_rate"}, (stage, changed)


def dag_imports() -> list[str]:
    """The nudiff import lines of the Snakefile and rules/*.smk."""
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    return [
        line.strip()
        for path in files
        for line in path.read_text().splitlines()
        if re.match(r"\s*(from nudiff\S* import|import nudiff)", line)
    ]


def test_building_the_dag_imports_no_torch():
    """Snakemake imports these on every DAG build; torch would add over a second to each."""
    imports = dag_imports()
    assert imports
    code = "\n".join([*imports, "import sys", "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", imports


PRESETS = sorted(p.name for p in (Path(__file__).parents[1] / "config").glob("*.yaml") if p.name != "schema.yaml")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_schema(preset):
    """Each config/*.yaml is a whole config (--configfile replaces the default one): it must
    pass the schema the workflow validates with, so a typo in a preset fails here, not hours
    into a cluster run."""
    from snakemake.utils import validate

    root = Path(__file__).parents[1] / "config"
    validate(yaml.safe_load((root / preset).read_text()), str(root / "schema.yaml"))


OVERLAYS = sorted(p.name for p in (Path(__file__).parents[1] / "config" / "overlays").glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_merged_onto_its_preset_passes_the_schema(overlay):
    """config/overlays/<preset>-<what>.yaml adds to config/<preset>.yaml on the command line
    (demo-<what>.yaml to the demo, config/config.yaml); the merged config passes the schema and
    the checks the workflow makes of it."""
    from snakemake.utils import update_config, validate

    from nudiff.arms import check_arms
    from nudiff.config import check_config

    root = Path(__file__).parents[1] / "config"
    names = {p.removesuffix(".yaml"): p for p in PRESETS} | {"demo": "config.yaml"}
    base = names[max((n for n in names if overlay.startswith(n + "-")), key=len)]
    # what Snakemake does with a later --configfile: mappings merged recursively, the rest replaced
    config = yaml.safe_load((root / base).read_text())
    update_config(config, yaml.safe_load((root / "overlays" / overlay).read_text()))
    validate(config, str(root / "schema.yaml"))
    check_config(config)
    check_arms(config["segmentation"])
    assert config != yaml.safe_load((root / base).read_text())


def test_a_preset_with_a_misspelt_key_fails_the_schema():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    root = Path(__file__).parents[1] / "config"
    config = yaml.safe_load((root / "monuseg-cpu.yaml").read_text())
    config["diffusion"]["colour_transfers"] = config["diffusion"].pop("colour_transfer")
    with pytest.raises(WorkflowError, match="colour_transfers"):
        validate(config, str(root / "schema.yaml"))


def test_structure_watershed_overrides_the_watershed_for_synthetic_structures_only():
    config = {"watershed": {"marker_threshold": 0.4, "sobel_ksize": 5}, "diffusion": {}}
    assert structure_watershed(config) == config["watershed"]
    config["diffusion"]["structure_watershed"] = {"marker_threshold": 0.5}
    assert structure_watershed(config) == {"marker_threshold": 0.5, "sobel_ksize": 5}
    assert config["watershed"]["marker_threshold"] == 0.4  # Hover-Net's stays as it was


def test_a_misspelt_structure_watershed_key_fails_the_schema():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    root = Path(__file__).parents[1] / "config"
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["diffusion"]["structure_watershed"] = {"marker_treshold": 0.5}
    with pytest.raises(WorkflowError, match="marker_treshold"):
        validate(config, str(root / "schema.yaml"))


def test_image_sampling_overrides_the_sampling_for_synthetic_images_only():
    config = {"diffusion": {"sampling": {"sampler": "ddpm", "steps": 100, "seed": 3}}}
    assert image_sampling(config) == config["diffusion"]["sampling"]
    config["diffusion"]["image_sampling"] = {"steps": 25}
    assert image_sampling(config) == {"sampler": "ddpm", "steps": 25, "seed": 3}
    assert config["diffusion"]["sampling"]["steps"] == 100  # structures keep theirs


@pytest.mark.parametrize("override", [{"step": 25}, {"steps": 0}, {"seed": 1}])
def test_a_bad_image_sampling_entry_fails_the_schema(override):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    root = Path(__file__).parents[1] / "config"
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["diffusion"]["image_sampling"] = override
    with pytest.raises(WorkflowError, match="image_sampling"):
        validate(config, str(root / "schema.yaml"))
