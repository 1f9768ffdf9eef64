"""The arms of the segmenter comparison: what each one trains on, how, and which arm is its control.

An arm is a training set plus a recipe laid over the model's ``training`` settings:

* ``labelled``: the subset's training part alone (the paper's "labelled" row).
* ``augmented``: the paper's union, the subset's training part plus the synthetic pairs
  (the paper's "augmented" row). With ``mixing: paired`` each step draws the labelled run's
  real samples plus the pairs' proportional share, so it differs from ``labelled`` only by the
  pairs.
* ``pretrained``: the synthetic pairs alone for ``synthetic_pretrain_epochs``, then exactly the
  labelled run's steps from a fresh optimiser state.
* ``pretrained-real``: its control: the same two phases, step counts and optimiser reset, with
  the real training patches in the first phase. If it gains as much, the gain is the schedule's.
* ``shuffled``: the recipe of ``segmentation.shuffled_recipe`` (``augmented`` by default) on
  the pairs with every synthetic image given another pair's label: if it gains as much, the
  images' agreement with their labels is not what helps.

The arms train from the same seeds, and the paired ones on the same real batches, so each
arm's difference from its control (:data:`CONTROLS`) is measured seed by seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nudiff.errors import ConfigError

ARMS = ("labelled", "augmented", "pretrained", "pretrained-real", "shuffled")

# the sample table (results/{dataset}/{pct}pct/trainsets/<name>.csv) each arm trains on
TRAINSETS = {
    "labelled": "labelled_train",
    "augmented": "augmented",
    "pretrained": "augmented",
    "pretrained-real": "augmented",
    "shuffled": "shuffled",
}

# laid over the model's training settings, under the arm's own overrides (segmentation.<model>.arm_training)
RECIPES: dict[str, dict[str, Any]] = {
    "labelled": {"synthetic_pretrain_epochs": 0},
    "augmented": {"synthetic_pretrain_epochs": 0, "synthetic_per_batch": "auto"},
    "pretrained": {"mixing": "paired", "synthetic_per_batch": 0, "pretrain_source": "synthetic"},
    "pretrained-real": {"mixing": "paired", "synthetic_per_batch": 0, "pretrain_source": "real"},
}

# arm -> the arm it is compared with (shuffled's control is its recipe: see control_of)
CONTROLS = {"augmented": "labelled", "pretrained": "pretrained-real", "pretrained-real": "labelled"}

SHUFFLED_RECIPES = ("augmented", "pretrained")


def check_arms(segmentation: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the key when the arms of ``segmentation`` cannot train."""
    arms = segmentation.get("arms", ["labelled", "augmented"])
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ConfigError(f"segmentation.arms: unknown arm(s) {unknown}; known: {list(ARMS)}")
    if "labelled" not in arms:
        raise ConfigError("segmentation.arms: 'labelled' is required (the judge of the pairs and every arm's baseline)")
    for arm in arms:
        control = control_of(arm, segmentation)
        if control is not None and control not in arms:
            raise ConfigError(f"segmentation.arms: {arm!r} needs its control {control!r} in the list")
    for model in segmentation.get("models", ["hovernet"]):
        overrides = segmentation.get(model, {}).get("arm_training", {})
        # an override of a known arm this run does not train is kept (a preset tunes every arm,
        # a block overlay trains some of them); an unknown name is a typo
        stray = sorted(set(overrides) - set(ARMS))
        if stray:
            raise ConfigError(f"segmentation.{model}.arm_training: unknown arm(s) {stray}; known: {list(ARMS)}")
        for arm in arms:
            settings = arm_training(arm, segmentation, model)
            if recipe_of(arm, segmentation) in ("pretrained", "pretrained-real"):
                if not settings.get("synthetic_pretrain_epochs", 0) > 0:
                    raise ConfigError(
                        f"segmentation.{model}.training.synthetic_pretrain_epochs: arm {arm!r} pre-trains, "
                        "it needs a value > 0"
                    )


def recipe_of(arm: str, segmentation: Mapping[str, Any]) -> str:
    """The arm whose recipe ``arm`` trains with (itself, except for ``shuffled``)."""
    if arm == "shuffled":
        return segmentation.get("shuffled_recipe", "augmented")
    return arm


def control_of(arm: str, segmentation: Mapping[str, Any]) -> str | None:
    """The arm ``arm`` is compared with (``None`` for ``labelled``)."""
    if arm == "shuffled":
        return recipe_of(arm, segmentation)
    return CONTROLS.get(arm)


def arm_training(arm: str, segmentation: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The training settings of ``model`` for ``arm``: its ``training``, the arm's recipe over
    them, and the arm's own ``arm_training`` overrides (a schedule tuned for that arm) on top."""
    model_config = segmentation.get(model, {})
    recipe = RECIPES[recipe_of(arm, segmentation)]
    overrides = model_config.get("arm_training", {}).get(arm, {})
    return {**model_config.get("training", {}), **recipe, **overrides}


def comparisons(arms: list[str], segmentation: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(arm, control)`` for every arm of ``arms`` that has a control among them, in arm order;
    plus ``(pretrained, labelled)``: the whole gain of the pre-training recipe, which its
    control (pretrained-real) splits into the schedule's part and the pairs' part."""
    out = [(arm, control_of(arm, segmentation)) for arm in arms if control_of(arm, segmentation) in arms]
    if "pretrained" in arms:
        out.append(("pretrained", "labelled"))
    return out
