"""Training PFF-Net on a sample table, with the recipe of PFF-Net's own config.

dliu5812/PFFNet trains ``e2e_mask_rcnn_R_101_FPN_1x_gn-tcga.yaml`` on one GPU
(``train_gn_tcga.sh``) with maskrcnn-benchmark's SGD solver: one 256 px image per step, base lr
0.003 with momentum 0.9 and weight decay 1e-4 (biases: twice the lr and no decay), a linear
warm-up from a third of the lr over 500 steps, and the lr divided by 10 at step 19200 of 25600;
training images are flipped horizontally and vertically with probability 0.5 each.

Here the decay points are fractions of the run (0.75 = 19200 / 25600) so that a shorter run
keeps the recipe's shape. As the reference: horizontal and vertical flips (``flips: hv``; the 8
symmetries of the square are an option), patches without nuclei left out (``skip_empty``), and
with pretrained weights (:mod:`.backbone_weights`) the stem and first stage frozen
(``freeze_at``). Everything else (batches per step and seed, paired mixing, validation on
held-out source images, checkpoints and exact resume) is the shared segmenter run of
:mod:`nudiff.segmentation.fit`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from nudiff.config import from_mapping
from nudiff.errors import ConfigError
from nudiff.io.digest import file_sha256
from nudiff.metrics import aji, dice
from nudiff.segmentation.fit import fit_segmenter, rebuild_model
from nudiff.segmentation.pffnet.backbone_weights import load_backbone_weights
from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.inference import predict_pffnet_instances
from nudiff.segmentation.pffnet.network import PFFNet
from nudiff.segmentation.run_settings import SegmenterRun
from nudiff.segmentation.training_data import load_training_data
from nudiff.segmentation.validation import BestWeights
from nudiff.training.checkpoint import load_state

logger = logging.getLogger(__name__)

MODEL_NAME = "pffnet"
NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "affine": False, "blur_noise": False}


@dataclass(frozen=True)
class PFFNetTraining(SegmenterRun):
    """One PFF-Net training run: :class:`SegmenterRun` plus PFF-Net's SGD recipe (its defaults).

    Attributes:
        iterations, batch_size: 25600 steps of one image (PFF-Net's MAX_ITER, IMS_PER_BATCH).
        lr, momentum, weight_decay: SGD (BASE_LR 0.003, MOMENTUM 0.9, WEIGHT_DECAY 1e-4).
        bias_lr_factor: biases train at this multiple of the lr, without weight decay (2).
        warmup_steps, warmup_factor: linear warm-up from ``warmup_factor * lr`` (500, 1/3).
        lr_steps: fractions of the run after which the lr is multiplied by ``gamma``
            (0.75 = 19200 / 25600; PFF-Net's second step is its last iteration).
        gamma: the decay factor (0.1).
        backbone_weights: ``"none"``, a path to saved weights of ``model.backbone.body`` (a torch
            state dict of the ResNet stages), or a path to Detectron's ImageNet ``R-101-GN.pkl``
            (what PFF-Net starts from; converted by :mod:`.detectron_weights`). Never downloaded.
        freeze_at: with backbone weights, the stem (1) and the stages up to this number stay
            frozen (maskrcnn-benchmark ``FREEZE_CONV_BODY_AT`` 2: stem and first stage); 0 =
            none. Without weights nothing is frozen (a random stem would stay random).
        flips: ``"hv"`` (the reference's horizontal and vertical flips) or ``"dihedral"`` (the 8
            symmetries of the square; :func:`nudiff.segmentation.augment.augment_pair`).
        skip_empty: patches without nuclei are left out (the reference skips unannotated images).
        inference: :func:`predict_pffnet_instances`' keyword arguments used for validation.
    """

    iterations: int = 25_600
    batch_size: int = 1
    validate_every: int = 1000
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    warmup_steps: int = 500
    warmup_factor: float = 1.0 / 3.0
    lr_steps: tuple[float, ...] = (0.75,)
    gamma: float = 0.1
    backbone_weights: str = "none"
    freeze_at: int = 2
    flips: str = "hv"
    skip_empty: bool = True
    inference: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr > 0 or not self.weight_decay >= 0 or not 0 <= self.momentum < 1:
            raise ConfigError(
                "training.lr must be > 0, training.weight_decay >= 0 and training.momentum in [0, 1), "
                f"got {self.lr}, {self.weight_decay}, {self.momentum}"
            )
        if not self.bias_lr_factor > 0 or not 0 < self.warmup_factor <= 1 or not 0 < self.gamma <= 1:
            raise ConfigError(
                "training.bias_lr_factor must be > 0, training.warmup_factor in (0, 1] and training.gamma in (0, 1], "
                f"got {self.bias_lr_factor}, {self.warmup_factor}, {self.gamma}"
            )
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ConfigError(f"training.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        steps = tuple(self.lr_steps)
        if any(not 0 < f < 1 for f in steps) or list(steps) != sorted(steps):
            raise ConfigError(f"training.lr_steps must be increasing fractions in (0, 1), got {self.lr_steps!r}")
        if not isinstance(self.freeze_at, int) or isinstance(self.freeze_at, bool) or not 0 <= self.freeze_at <= 5:
            raise ConfigError(f"training.freeze_at must be an integer in 0..5, got {self.freeze_at!r}")
        if self.flips not in ("hv", "dihedral"):
            raise ConfigError(f"training.flips must be 'hv' or 'dihedral', got {self.flips!r}")
        if not isinstance(self.inference, dict):
            raise ConfigError(f"training.inference must be a mapping, got {self.inference!r}")
        object.__setattr__(self, "lr_steps", steps)
        object.__setattr__(self, "inference", dict(self.inference))


class WarmupStepSchedule:
    """maskrcnn-benchmark's WarmupMultiStepLR as a loop callback: :meth:`before_step` sets the lr
    of the coming step in every parameter group (``lr_scale`` of a group: the bias factor).

    ``pretrain_steps`` of synthetic pre-training come first, warmed up as a run's start and then
    at the full lr; after them the momentum is dropped, torch's RNG (which torchvision's RPN and
    RoI samplers draw from) is re-seeded with ``settings.seed``, and the warm-up and decays run as
    in a run without pre-training, so the steps after it are its labelled twin's from new weights.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, settings: PFFNetTraining, *, pretrain_steps: int = 0) -> None:
        self.optimizer, self.settings = optimizer, settings
        self.pretrain_steps = pretrain_steps
        self.step = 0

    def lr_at(self, step: int) -> float:
        """The base lr of ``step`` (1-based)."""
        s = self.settings
        decays = 0
        if step > self.pretrain_steps:
            step -= self.pretrain_steps
            length = s.iterations - self.pretrain_steps
            decays = sum(step > round(f * length) for f in s.lr_steps)
        warm = 1.0
        if step <= s.warmup_steps:
            alpha = (step - 1) / s.warmup_steps
            warm = s.warmup_factor * (1 - alpha) + alpha
        return s.lr * warm * s.gamma**decays

    def before_step(self) -> None:
        lr = self.lr_at(self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def after_step(self, step: int, model: nn.Module, ema: nn.Module | None) -> None:
        self.step = step
        if self.pretrain_steps and step == self.pretrain_steps:
            self.optimizer.state.clear()
            torch.manual_seed(self.settings.seed)  # the labelled twin's RoI draws from here on

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def sgd_with_bias_groups(model: nn.Module, settings: PFFNetTraining) -> torch.optim.SGD:
    """SGD over two groups, as maskrcnn-benchmark's ``make_optimizer``: weights with the lr and
    weight decay, biases with ``bias_lr_factor`` x lr and no decay."""
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    return torch.optim.SGD(
        [
            {"params": weights, "weight_decay": settings.weight_decay, "lr_scale": 1.0},
            {"params": biases, "weight_decay": 0.0, "lr_scale": settings.bias_lr_factor},
        ],
        lr=settings.lr,
        momentum=settings.momentum,
    )


def instance_targets(inst: np.ndarray) -> dict[str, torch.Tensor]:
    """torchvision detection targets of one ``(S, S)`` instance map.

    Returns:
        ``boxes`` ``(N, 4)`` float32 xyxy (x2, y2 one past the last pixel), ``labels`` ``(N,)``
        int64 ones, ``masks`` ``(N, S, S)`` uint8; ``N`` = 0 for a patch without nuclei.
    """
    inst = np.asarray(inst)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    boxes, masks = [], []
    objects = ndimage.find_objects(inst.astype(np.int64))  # the slices of label k at index k - 1
    for label in ids:
        rows, cols = objects[label - 1]
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        masks.append(inst == label)
    size = inst.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(ids), dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))
        if masks
        else torch.zeros((0, *size), dtype=torch.uint8),
    }


def score_pffnet_patches(
    model: PFFNet, rgb: np.ndarray, inst: np.ndarray, *, inference: dict[str, Any], device: str | torch.device
) -> dict[str, float]:
    """Mean Dice, mean AJI and their mean ``score`` of PFF-Net's instance maps on labelled patches."""
    was_training = model.training
    dices, ajis = [], []
    for image, truth in zip(rgb, inst):
        pred = predict_pffnet_instances(model, image, device=device, **inference)
        dices.append(dice(truth, pred))
        ajis.append(aji(truth, pred))
    model.train(was_training)
    d, a = float(np.mean(dices)), float(np.mean(ajis))
    return {"dice": d, "aji": a, "score": (d + a) / 2.0}


def train_pffnet(
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
    """Train PFF-Net on a sample table and save the best validated weights (the registry's
    ``train`` for ``pffnet``: :func:`nudiff.segmentation.registry.train_segmenter` calls it)."""
    try:
        net_cfg = PFFNetConfig.from_dict(network)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"network: {err}") from err
    data = load_training_data(
        samples_csv,
        from_mapping(PFFNetTraining, training, "training"),
        "PFF-Net",
        validation_samples=validation_samples,
    )
    cfg: PFFNetTraining = data.settings  # type: ignore[assignment]

    net = PFFNet(net_cfg, seed=cfg.seed)
    load_backbone_weights(net, cfg.backbone_weights, freeze_at=cfg.freeze_at)
    net.to(device)
    optimizer = sgd_with_bias_groups(net, cfg)

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["images"].to(device, non_blocking=True).float().div_(255.0)
        targets = [{k: v.to(device) for k, v in instance_targets(inst).items()} for inst in batch["instances"].numpy()]
        return sum(model(x, targets).values())

    weights = cfg.backbone_weights
    on_cuda = torch.device(device).type == "cuda"
    # torchvision's RPN and RoI samplers draw from torch's global RNG: seed it for this run (the
    # loop's checkpoints hold it, so a resumed run draws the same samples) and restore it after
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if on_cuda else []):
        torch.manual_seed(cfg.seed)
        return fit_segmenter(
            net,
            optimizer,
            data,
            batches=data.batches(jitter={**NO_JITTER, "flips": cfg.flips}, targets="instances"),
            loss_fn=loss_fn,
            score_fn=lambda m: score_pffnet_patches(
                m, data.val_rgb, data.val_inst, inference=cfg.inference, device=device
            ),
            schedule=WarmupStepSchedule(optimizer, cfg, pretrain_steps=data.pretrain_steps),
            model_file={"model": MODEL_NAME, "network": net_cfg.to_dict()},
            fingerprint={
                "model": MODEL_NAME,
                "network": net_cfg.to_dict(),
                "training": cfg.fingerprint(),
                "samples": file_sha256(samples_csv),
                "validation": file_sha256(validation_samples) if validation_samples else None,
                "backbone": file_sha256(weights) if weights != "none" else weights,
            },
            out_model=out_model,
            checkpoint_dir=checkpoint_dir,
            device=device,
            loss_csv=loss_csv,
            loss_png=loss_png,
            validation_csv=validation_csv,
            model_label="PFF-Net",
        )


def load_pffnet(
    path: str | Path, device: str | torch.device = "cpu", *, state: dict[str, Any] | None = None
) -> tuple[PFFNet, dict[str, Any]]:
    """Rebuild a PFF-Net saved by :func:`train_pffnet`, in eval mode on ``device`` (``state``:
    the file's contents when already read)."""
    state = load_state(path) if state is None else state
    return rebuild_model(path, state, MODEL_NAME, lambda net: PFFNet(PFFNetConfig.from_dict(net)), device)
