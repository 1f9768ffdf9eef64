"""Training Hover-Net on a sample table (spec section 6: once per labelled subset and arm).

HoVer-Net's schedule (vqdang/hover_net ``models/hovernet/opt.py``): Adam, lr 1e-4, two phases of
50 epochs each, the first with the (ImageNet) encoder frozen, the second with all weights and a
new optimiser; in each phase ``StepLR(25)`` divides the lr by 10 half-way. Here phase 1 is the
first ``freeze_encoder_fraction`` of the iterations and the lr drops 10x at ``lr_decay_at`` of
each phase (:class:`PhaseSchedule`). A training example is a patch of the table, augmented with
its instance map (:mod:`nudiff.segmentation.augment`); the targets come from the nuclei
structure of the augmented map and are centre-cropped to the network output in valid-padding
mode (:func:`nudiff.segmentation.hovernet.losses.hovernet_loss`). Validation on held-out source
images keeps the weights of the best mean (Dice + AJI) / 2 (:func:`score_patches`).

Batches, mixing, validation, checkpoints and resume are the shared run's
(:func:`nudiff.segmentation.fit.fit_segmenter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nudiff.config import from_mapping
from nudiff.errors import ConfigError
from nudiff.io.digest import file_sha256
from nudiff.metrics import aji, dice
from nudiff.segmentation.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION
from nudiff.segmentation.fit import fit_segmenter, rebuild_model
from nudiff.segmentation.hovernet.config import HoVerNetConfig
from nudiff.segmentation.hovernet.encoder_weights import load_encoder_weights
from nudiff.segmentation.hovernet.inference import predict_instances
from nudiff.segmentation.hovernet.losses import hovernet_loss, structure_to_targets
from nudiff.segmentation.hovernet.network import HoVerNet
from nudiff.segmentation.run_settings import SegmenterRun
from nudiff.segmentation.training_data import load_training_data
from nudiff.segmentation.validation import BestWeights
from nudiff.training.checkpoint import load_state

MODEL_NAME = "hovernet"
LR_DECAY_FACTOR = 0.1  # HoVer-Net's StepLR gamma


@dataclass(frozen=True)
class HoVerNetTraining(SegmenterRun):
    """One Hover-Net training run: :class:`SegmenterRun` plus Hover-Net's optimiser, schedule and
    augmentations; defaults follow HoVer-Net where it has a value.

    Attributes:
        batch_size: patches per step (HoVer-Net: 16 in phase 1, 4 in phase 2).
        lr: Adam learning rate (HoVer-Net 1e-4, betas 0.9, 0.999).
        weight_decay: Adam L2 penalty (HoVer-Net: 0).
        lr_decay_at: fraction of each phase after which the lr is divided by 10 (HoVer-Net 0.5);
            None keeps it constant.
        encoder_weights: ``"none"``, ``"imagenet"`` (HoVer-Net; torchvision cache, ResNet50 encoder
            only) or a path to a saved ``model.encoder`` state dict.
        freeze_encoder_fraction: share of the iterations trained with the encoder frozen (phase 1;
            HoVer-Net 0.5 with ImageNet weights); 0 = never.
        augment: random flips/rotations and colour jitter of the training patches.
        affine, blur_noise: HoVer-Net's affine warp and blur/noise augmentations (with ``augment``).
        brightness, contrast, saturation, hue: colour jitter strengths (HoVer-Net's ranges, see
            :func:`nudiff.segmentation.augment.colour_jitter`).
        watershed: keyword arguments of ``instances_from_structure`` used for validation (and
            by default at test time).
        channels_last: train in channels_last (NHWC) memory layout: faster oneDNN convolutions
            on the CPU (a bf16 step of the demo's Hover-Net 1.35x); changes rounding only, and
            the saved weights load into a plain model.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_decay_at: float | None = 0.5
    encoder_weights: str = "none"
    freeze_encoder_fraction: float = 0.0
    affine: bool = True
    blur_noise: bool = True
    brightness: float = BRIGHTNESS
    contrast: float = CONTRAST
    saturation: float = SATURATION
    hue: float = HUE
    watershed: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(
                f"training.lr must be > 0 and training.weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.lr_decay_at is not None and not 0 < self.lr_decay_at < 1:
            raise ConfigError(f"training.lr_decay_at must be in (0, 1) or null, got {self.lr_decay_at!r}")
        if not 0 <= self.freeze_encoder_fraction < 1:
            raise ConfigError(
                f"training.freeze_encoder_fraction must be in [0, 1), got {self.freeze_encoder_fraction!r}"
            )
        if not isinstance(self.watershed, dict):
            raise ConfigError(f"training.watershed must be a mapping, got {self.watershed!r}")
        object.__setattr__(self, "watershed", dict(self.watershed))

    @property
    def jitter(self) -> dict[str, Any]:
        """:func:`augment_pair`'s keyword arguments of this run."""
        return {k: getattr(self, k) for k in ("brightness", "contrast", "saturation", "hue", "affine", "blur_noise")}


class PhaseSchedule:
    """HoVer-Net's two phases as a loop callback: :meth:`before_step` sets the encoder's
    ``requires_grad`` and the lr of the coming step; at the end of phase 1 the Adam state is
    dropped (HoVer-Net builds a new optimiser for phase 2).

    ``pretrain_steps`` of synthetic pre-training come first, at the full lr with the whole
    network trained; the phases then run as in a run without them, from a fresh Adam state.
    """

    def __init__(
        self,
        model: HoVerNet,
        optimizer: torch.optim.Optimizer,
        settings: HoVerNetTraining,
        *,
        pretrain_steps: int = 0,
    ) -> None:
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.pretrain_steps = pretrain_steps
        self.step = 0

    @property
    def frozen_steps(self) -> int:
        """Phase 1's steps: a share of the steps after the pre-training."""
        s = self.settings
        return round(s.freeze_encoder_fraction * (s.iterations - self.pretrain_steps))

    def lr_at(self, step: int) -> float:
        s, frozen = self.settings, self.frozen_steps
        if step <= self.pretrain_steps:
            return s.lr
        step -= self.pretrain_steps
        length = s.iterations - self.pretrain_steps
        start, length = (1, frozen) if step <= frozen else (frozen + 1, length - frozen)
        decayed = s.lr_decay_at is not None and step - start >= s.lr_decay_at * length
        return s.lr * (LR_DECAY_FACTOR if decayed else 1.0)

    def before_step(self) -> None:
        step = self.step + 1
        pretraining = step <= self.pretrain_steps
        self.model.encoder.requires_grad_(pretraining or step - self.pretrain_steps > self.frozen_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)

    def after_step(self, step: int, model: nn.Module, ema: nn.Module | None) -> None:
        self.step = step
        ends_pretraining = self.pretrain_steps and step == self.pretrain_steps
        if ends_pretraining or (self.frozen_steps and step == self.pretrain_steps + self.frozen_steps):
            self.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def train_hovernet(
    samples_csv: str | Path,
    out_model: str | Path,
    *,
    network: dict[str, Any],
    training: dict[str, Any],
    checkpoint_dir: str | Path,
    device: str = "cpu",
    loss_csv: str | Path | None = None,
    loss_png: str | Path | None = None,
    validation_csv: str | Path | None = None,
    validation_samples: str | Path | None = None,
) -> BestWeights:
    """Train Hover-Net on a sample table and save the best validated weights (the registry's
    ``train`` for ``hovernet``: :func:`nudiff.segmentation.registry.train_segmenter` calls it).

    Args:
        samples_csv: the training set (an arm's sample table).
        out_model: the model file (:func:`load_hovernet` reads it).
        network: :class:`HoVerNetConfig` fields; training: :class:`HoVerNetTraining` fields.
        checkpoint_dir: periodic checkpoints (removed after success).
        loss_csv, validation_csv, loss_png: the loss log, the validation log
            (``step, dice, aji, score``) and a figure of both.
        validation_samples: the real validation patches that choose the weights (a sample
            table); without it, ``training.val_fraction`` of the source images are held out.

    Returns:
        The validation callback: ``best_step``, ``best_score``, ``table()``.
    """
    try:
        net_cfg = HoVerNetConfig.from_dict(network)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"network: {err}") from err
    data = load_training_data(
        samples_csv,
        from_mapping(HoVerNetTraining, training, "training"),
        "Hover-Net",
        validation_samples=validation_samples,
    )
    cfg: HoVerNetTraining = data.settings  # type: ignore[assignment]
    try:
        net_cfg.output_size(data.size)
    except ValueError as err:
        raise ConfigError(f"network: patches of {samples_csv} are {data.size} px: {err}") from err

    net = HoVerNet(net_cfg, generator=torch.Generator().manual_seed(cfg.seed))
    load_encoder_weights(net, cfg.encoder_weights)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net.to(device, memory_format=layout)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["images"].to(device, non_blocking=True).float().div_(255.0).contiguous(memory_format=layout)
        targets = structure_to_targets(batch["structures"].to(device, non_blocking=True))
        return hovernet_loss(model(x), targets)[0]

    encoder = cfg.encoder_weights
    return fit_segmenter(
        net,
        optimizer,
        data,
        batches=data.batches(jitter=cfg.jitter, targets="structures"),
        loss_fn=loss_fn,
        score_fn=lambda m: score_patches(m, data.val_rgb, data.val_inst, watershed=cfg.watershed, device=device),
        schedule=PhaseSchedule(net, optimizer, cfg, pretrain_steps=data.pretrain_steps),
        model_file={
            "model": MODEL_NAME,
            "network": net_cfg.to_dict(),
            "output_size": net_cfg.output_size(data.size),
        },
        fingerprint={
            "model": MODEL_NAME,
            "network": net_cfg.to_dict(),
            "training": cfg.fingerprint(),
            "samples": file_sha256(samples_csv),
            "validation": file_sha256(validation_samples) if validation_samples else None,
            "encoder": file_sha256(encoder) if encoder not in ("none", "imagenet") else encoder,
        },
        out_model=out_model,
        checkpoint_dir=checkpoint_dir,
        device=device,
        loss_csv=loss_csv,
        loss_png=loss_png,
        validation_csv=validation_csv,
        model_label="Hover-Net",
    )


def load_hovernet(
    path: str | Path, device: str | torch.device = "cpu", *, state: dict[str, Any] | None = None
) -> tuple[HoVerNet, dict[str, Any]]:
    """Rebuild a Hover-Net saved by :func:`train_hovernet`, in eval mode on ``device``.

    Args:
        state: the file's contents when already read (else it is read here).

    Returns:
        ``(model, meta)``: meta holds every saved entry but the weights (``network``,
        ``training``, ``input_size``, ``output_size``, ``best_step``, ``best_score``, ``validation``).
    """
    state = load_state(path) if state is None else state
    return rebuild_model(path, state, MODEL_NAME, lambda net: HoVerNet(HoVerNetConfig.from_dict(net)), device)


def score_patches(
    model: HoVerNet,
    rgb: np.ndarray,
    inst: np.ndarray,
    *,
    watershed: Mapping[str, Any],
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Mean Dice, mean AJI and their mean ``score`` of the model's instances on labelled patches.

    Each ``(S, S)`` patch is predicted as one input (same padding: no margin; valid padding:
    HoVer-Net's mirror-padded tiles) and post-processed by ``instances_from_structure(**watershed)``.

    Args:
        rgb: ``(N, S, S, 3)`` uint8 patches; inst: ``(N, S, S)`` true instance maps.
    """
    size = rgb.shape[1]
    margin = 0 if model.config.same_padding else None
    dices, ajis = [], []
    for image, truth in zip(rgb, inst):
        pred = predict_instances(model, image, tile=size, margin=margin, watershed=watershed, device=device)
        dices.append(dice(truth, pred))
        ajis.append(aji(truth, pred))
    d, a = float(np.mean(dices)), float(np.mean(ajis))
    return {"dice": d, "aji": a, "score": (d + a) / 2.0}
