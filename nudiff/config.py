"""Checks on the workflow configuration that a JSON schema cannot express.

The schema (``config/schema.yaml``) catches unknown keys, wrong types and out
of range values; what is left here are rules that relate keys to each other.
Each error names the key to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from nudiff.errors import ConfigError


def subset_key(percent: int) -> str:
    """The name of a subset in paths and config keys: 10 -> ``"10pct"``."""
    return f"{percent}pct"


def check_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first inconsistent key."""
    for name, spec in config["datasets"].items():
        key = f"datasets.{name}"
        if spec["format"] == "demo":
            if "path" in spec:
                raise ConfigError(f"{key}.path: a demo dataset is generated, it takes no path")
        elif "path" not in spec:
            raise ConfigError(f"{key}.path: required for format {spec['format']!r}")
        elif "demo" in spec:
            raise ConfigError(f"{key}.demo: only for format demo")
        missing = [subset_key(p) for p in config["subsets"] if subset_key(p) not in spec["synthetic_pairs"]]
        if missing:
            raise ConfigError(f"{key}.synthetic_pairs: no entry for subset(s) {missing}")
    for name in ("compare_samplers", "guidance_sweep"):
        part = config.get("diffusion", {}).get(name, {})
        if part.get("enabled") and part.get("subset") not in config["subsets"]:
            raise ConfigError(
                f"diffusion.{name}.subset: {part.get('subset')} is not one of subsets {config['subsets']}"
            )
    chosen = config.get("label_to_image", {})
    if chosen.get("dataset") is not None and chosen["dataset"] not in config["datasets"]:
        raise ConfigError(
            f"label_to_image.dataset: {chosen['dataset']!r} is not one of datasets {list(config['datasets'])}"
        )
    if chosen.get("subset") is not None and chosen["subset"] not in config["subsets"]:
        raise ConfigError(f"label_to_image.subset: {chosen['subset']} is not one of subsets {config['subsets']}")
    patches = config.get("patches", {})
    if patches.get("stride", 1) > patches.get("size", 1):
        raise ConfigError("patches.stride: larger than patches.size, so pixels between patches would be skipped")


def structure_watershed(config: Mapping[str, Any]) -> dict[str, Any]:
    """The watershed for synthetic structures: the top-level ``watershed`` with
    ``diffusion.structure_watershed`` laid over it."""
    return {**config.get("watershed", {}), **config.get("diffusion", {}).get("structure_watershed", {})}


def image_sampling(config: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling of synthetic images (image-weight choice, guidance sweep, the pairs'
    images): ``diffusion.sampling`` with ``diffusion.image_sampling`` laid over it."""
    diffusion = config.get("diffusion", {})
    return {**diffusion.get("sampling", {}), **diffusion.get("image_sampling", {})}


def label_to_image_model(config: Mapping[str, Any]) -> tuple[str, int]:
    """The (dataset, subset) whose image model ``label_to_image`` draws with: the configured
    ones, else the first dataset and the largest subset."""
    chosen = config.get("label_to_image", {})
    dataset = chosen.get("dataset") or next(iter(config["datasets"]))
    subset = chosen.get("subset") or max(config["subsets"])
    return dataset, int(subset)


def label_to_image_sampling(config: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling of ``label_to_image``: that of the pairs' images (:func:`image_sampling`) with
    ``label_to_image``'s seed and, when set, guidance scale."""
    chosen = config.get("label_to_image", {})
    out = {**image_sampling(config), "seed": chosen.get("seed", 0)}
    if chosen.get("guidance_scale") is not None:
        out["guidance_scale"] = chosen["guidance_scale"]
    return out


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    # Imported here: rules/common.smk imports this module, and torch would add
    # over a second to every DAG build.
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but no CUDA device is visible")
    return device


def from_mapping(cls, values: Mapping[str, Any], key: str):
    """Build a settings dataclass from a config mapping, naming ``key`` on unknown fields.

    The one check of unknown keys for every settings dataclass (also their ``from_dict``).
    """
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{key}: unknown setting(s) {unknown}")
    return cls(**values)
