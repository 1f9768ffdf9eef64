"""One entry per segmenter: the name config uses (``segmentation.models``) mapped to the
functions that train it, rebuild it from its model file and turn it into an image predictor.

Nothing generic imports a specific network; the rules' functions go through this table, so a
new segmenter is a package beside ``hovernet/`` and ``pffnet/`` plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nudiff.errors import ConfigError, InputDataError
from nudiff.segmentation.hovernet.inference import hovernet_predictor
from nudiff.segmentation.hovernet.train import load_hovernet, train_hovernet
from nudiff.segmentation.pffnet.inference import pffnet_predictor
from nudiff.segmentation.pffnet.train import load_pffnet, train_pffnet
from nudiff.segmentation.validation import BestWeights
from nudiff.training.checkpoint import load_state

# an image -> (its instance map, network seconds, post-processing seconds)
Predictor = Callable[[np.ndarray], tuple[np.ndarray, float, float]]


@dataclass(frozen=True)
class Segmenter:
    """A segmenter's entry points.

    Attributes:
        label: its name in logs and figures.
        train: ``(samples_csv, out_model, *, network, training, checkpoint_dir, device, loss_csv,
            loss_png, validation_csv, validation_samples) -> BestWeights``.
        load: ``(path, device, *, state) -> (model, meta)``: the model file rebuilt, in eval mode.
        predictor: ``(model, meta, *, watershed, device, **inference) -> Predictor``.
    """

    label: str
    train: Callable[..., BestWeights]
    load: Callable[..., tuple[nn.Module, dict[str, Any]]]
    predictor: Callable[..., Predictor]


SEGMENTERS: Mapping[str, Segmenter] = {
    "hovernet": Segmenter("Hover-Net", train_hovernet, load_hovernet, hovernet_predictor),
    "pffnet": Segmenter("PFF-Net", train_pffnet, load_pffnet, pffnet_predictor),
}


def segmenter_of(name: str) -> Segmenter:
    """The registry entry of ``name``; a ConfigError names the known models."""
    if name not in SEGMENTERS:
        raise ConfigError(f"segmentation.models: unknown model {name!r} ({', '.join(SEGMENTERS)})")
    return SEGMENTERS[name]


def train_segmenter(
    samples_csv: str | Path,
    out_model: str | Path,
    *,
    model: str = "hovernet",
    network: dict[str, Any],
    training: dict[str, Any],
    checkpoint_dir: str | Path,
    device: str = "cpu",
    loss_csv: str | Path | None = None,
    loss_png: str | Path | None = None,
    validation_csv: str | Path | None = None,
    validation_samples: str | Path | None = None,
) -> BestWeights:
    """Rule ``train_segmenter``: train ``model`` on a sample table and save the best weights.

    Args:
        samples_csv: the training set (an arm's sample table).
        out_model: the model file (:func:`load_segmenter` reads it).
        model: a name of :data:`SEGMENTERS`.
        network, training: the model's network config and training settings (for Hover-Net
            :class:`~nudiff.segmentation.hovernet.config.HoVerNetConfig` and
            :class:`~nudiff.segmentation.hovernet.train.HoVerNetTraining`).
        checkpoint_dir: periodic checkpoints (removed after success).
        loss_csv, validation_csv, loss_png: the loss log, the validation log
            (``step, dice, aji, score``) and a figure of both.
        validation_samples: the real validation patches that choose the weights (a sample
            table); without it, ``training.val_fraction`` of the source images are held out.

    Returns:
        The validation callback: ``best_step``, ``best_score``, ``table()``.
    """
    return segmenter_of(model).train(
        samples_csv,
        out_model,
        network=network,
        training=training,
        checkpoint_dir=checkpoint_dir,
        device=device,
        loss_csv=loss_csv,
        loss_png=loss_png,
        validation_csv=validation_csv,
        validation_samples=validation_samples,
    )


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild any registered model file (its ``model`` entry says which), in eval mode."""
    state = load_state(path)
    name = state.get("model")
    if name not in SEGMENTERS:
        raise InputDataError(f"{path} holds a {name!r} model, not one of {', '.join(SEGMENTERS)}")
    return SEGMENTERS[name].load(path, device, state=state)
