"""Training the two diffusion models of the paper (spec sections 4a and 4b).

Both run through :func:`nudiff.training.loop.run_training`; they differ only in
what a training example is:

* ``structure`` (step 1, unconditional): x0 is the nuclei structure of a
  labelled patch, scaled to [-1, 1].
* ``image`` (step 2, structure-conditioned): x0 is the RGB patch scaled to
  [-1, 1], the condition is its structure. Stage 1 trains fully conditional
  (``drop_rate`` 0, lr 1e-4); stage 2 starts from stage 1's weights and
  fine-tunes classifier-free (``drop_rate`` 0.2, lr 2e-5).

Augmentation applies one of the 8 flips/rotations of the square to the patch
and its instance map and recomputes the structure from the transformed map, so
the horizontal/vertical maps keep HoVer-Net's convention exactly (flipping a
map and negating it would be off by HoVer-Net's rounding).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from nudiff.config import from_mapping
from nudiff.diffusion.loss import l_simple
from nudiff.diffusion.schedule import NoiseSchedule, linear_schedule
from nudiff.diffusion.unet import UNet, UNetConfig, count_parameters
from nudiff.errors import ConfigError, InputDataError
from nudiff.figures import plot_loss_curve
from nudiff.imaging import channels_first, dihedral, image_to_model_range
from nudiff.io.digest import file_sha256
from nudiff.runtime import resolve_cpu_bf16
from nudiff.samples import SampleReader, read_sample_table
from nudiff.structure import nuclei_structure, structure_to_model_range
from nudiff.training.checkpoint import load_state, save_state
from nudiff.training.loop import LoopSettings
from nudiff.training.lr_schedule import LR_SCHEDULES, make_lr_schedule
from nudiff.training.run import train_to_files

logger = logging.getLogger(__name__)

ModelKind = Literal["structure", "image"]


@dataclass(frozen=True)
class ScheduleConfig:
    """The forward process (paper: linear, T = 1000, beta 1e-4 to 0.02)."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def build(self) -> NoiseSchedule:
        return linear_schedule(self.timesteps, self.beta_start, self.beta_end)


@dataclass(frozen=True)
class DiffusionTraining:
    """One training run; defaults are the paper's structure model (4a)."""

    iterations: int = 200_000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    snapshot_every: int | None = None
    grad_clip: float = 1.0
    drop_rate: float = 0.0
    augment: bool = True
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    log_every: int = 100
    seed: int = 0
    gradient_checkpointing: bool = False
    cpu_bf16: bool | str = False  # True, False or "auto" (resolved here: on where the CPU has bf16 units)
    channels_last: bool = False
    fused_adamw: bool = False
    min_snr_gamma: float | None = None
    lr_schedule: str = "constant"  # constant (the paper's) | cosine (annealed to 0 over the run)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu_bf16", resolve_cpu_bf16(self.cpu_bf16))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"training.lr_schedule: {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            iterations=self.iterations,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
            log_every=self.log_every,
            grad_clip=self.grad_clip,
            ema_decay=self.ema_decay,
            ema_warmup=self.ema_warmup,
            snapshot_every=self.snapshot_every,
            cpu_bf16=self.cpu_bf16,
        )


# Fast-path options that change only rounding (not what is learned): kept out of the
# fingerprint while off, so checkpoints written before they existed still resume.
FAST_PATH_KEYS = ("channels_last", "fused_adamw")
# Options added later, kept out of the fingerprint at their default for the same reason.
LATER_DEFAULTS = {"lr_schedule": "constant"}


def prepare_for_training(model: torch.nn.Module, training: DiffusionTraining, device: str | torch.device) -> None:
    """Move ``model`` to ``device`` in the memory layout ``training`` asks for (in place)."""
    model.to(device)
    if training.channels_last:
        model.to(memory_format=torch.channels_last)


def make_optimizer(model: torch.nn.Module, training: DiffusionTraining) -> torch.optim.AdamW:
    """AdamW of the run; ``fused_adamw`` picks PyTorch's fused kernel (CPU and CUDA)."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=training.lr,
        weight_decay=training.weight_decay,
        fused=True if training.fused_adamw else None,
    )


def to_layout(x: torch.Tensor, device: str | torch.device, training: DiffusionTraining) -> torch.Tensor:
    """A model input on ``device``, channels_last when ``training.channels_last``."""
    fmt = torch.channels_last if training.channels_last else torch.contiguous_format
    return x.to(device).contiguous(memory_format=fmt)


# ---- training examples -------------------------------------------------------


class TrainingExamples:
    """Labelled patches held in memory, drawn as model-ready batches.

    Every draw (which patches, which symmetry) comes from the generator, so a
    seeded run sees the same batches every time, resumed or not.
    """

    def __init__(self, rgb: np.ndarray, inst: np.ndarray, *, augment: bool) -> None:
        if len(rgb) == 0:
            raise ValueError("no training examples")
        self.rgb, self.inst, self.augment = rgb, inst, augment

    @classmethod
    def from_sample_table(cls, path: str | Path, *, augment: bool) -> TrainingExamples:
        rgb, inst = SampleReader(read_sample_table(path)).load_all()
        logger.info("%d training patches of %dx%d from %s", len(rgb), rgb.shape[1], rgb.shape[2], path)
        return cls(rgb, inst, augment=augment)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(images, structures)``, both ``(B, 3, S, S)`` float32 in [-1, 1]."""
        idx = torch.randint(0, len(self.rgb), (batch_size,), generator=generator).tolist()
        ops = torch.randint(0, 8, (batch_size,), generator=generator).tolist() if self.augment else [0] * batch_size
        images, structures = [], []
        for i, op in zip(idx, ops):
            inst = dihedral(self.inst[i], op)
            images.append(image_to_model_range(dihedral(self.rgb[i], op)))
            structures.append(structure_to_model_range(nuclei_structure(inst)))
        return channels_first(images), channels_first(structures)


# ---- model files -------------------------------------------------------------


def save_diffusion_model(
    path: str | Path,
    *,
    kind: ModelKind,
    network: UNetConfig,
    schedule: ScheduleConfig,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    training: DiffusionTraining,
    patch_size: int,
    snapshots: list[dict[str, Any]] | None = None,
) -> None:
    """A trained model with everything needed to rebuild and sample it.

    ``snapshots`` (``step``, ``model``, ``ema`` state dicts) are earlier weights kept as
    candidates for :mod:`nudiff.diffusion.selection`.
    """
    state = {
        "kind": kind,
        "patch_size": patch_size,
        "network": network.to_dict(),
        "schedule": asdict(schedule),
        "training": asdict(training),
        "model": model.state_dict(),
        # AveragedModel wraps the network as .module; keep the plain state dict
        "ema": ema.module.state_dict() if ema is not None else None,
        "snapshots": list(snapshots or []),
    }
    save_state(path, state)


def load_diffusion_model(
    path: str | Path,
    *,
    device: str = "cpu",
    weights: Literal["ema", "model"] = "ema",
    expect: ModelKind | None = None,
    step: int | None = None,
) -> tuple[UNet, NoiseSchedule, dict[str, Any]]:
    """Rebuild a saved model in eval mode with its noise schedule.

    ``weights`` picks EMA or raw weights; ``step`` picks a snapshot kept during training
    (None: the final weights).
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    state = load_state(path)
    if expect is not None and state.get("kind") != expect:
        raise InputDataError(f"{path} holds a {state.get('kind')!r} model, expected {expect!r}")
    model = UNet(UNetConfig.from_dict(state["network"]))
    source = state
    if step is not None:
        by_step = {int(s["step"]): s for s in state.get("snapshots", [])}
        if step not in by_step:
            raise InputDataError(f"{path} has no snapshot of step {step} (it has {sorted(by_step)})")
        source = by_step[step]
    chosen = source["ema"] if weights == "ema" and source["ema"] is not None else source["model"]
    model.load_state_dict(chosen)
    schedule = ScheduleConfig(**state["schedule"]).build()
    return model.to(device).eval(), schedule, state


# ---- the rule entry point ---------------------------------------------------


def train_diffusion_model(
    kind: ModelKind,
    samples_csv: str | Path,
    out_model: str | Path,
    *,
    network: dict[str, Any],
    training: dict[str, Any],
    schedule: dict[str, Any],
    checkpoint_dir: str | Path,
    device: str = "cpu",
    init_model: str | Path | None = None,
    loss_csv: str | Path | None = None,
    loss_png: str | Path | None = None,
) -> pd.DataFrame:
    """Rules ``train_structure_model`` / ``train_image_model_*``: train and save one model.

    Args:
        kind: ``"structure"`` (unconditional, on structures) or ``"image"``
            (conditioned on structures, on RGB patches).
        samples_csv: the labelled subset (a sample table).
        network, training, schedule: config mappings for :class:`UNetConfig`,
            :class:`DiffusionTraining`, :class:`ScheduleConfig`.
        checkpoint_dir: where periodic checkpoints go (removed after success).
        init_model: start from this saved model's weights (stage 2 of the image model).
        loss_csv, loss_png: where to write the loss log and its figure.

    Returns:
        The loss history.
    """
    net_cfg = from_mapping(UNetConfig, {**network, "condition_channels": 3 if kind == "image" else 0}, "network")
    train_cfg = from_mapping(DiffusionTraining, training, "training")
    sched_cfg = from_mapping(ScheduleConfig, schedule, "schedule")
    if kind == "structure" and train_cfg.drop_rate:
        raise ConfigError("training.drop_rate: the structure model has no condition to drop")

    examples = TrainingExamples.from_sample_table(samples_csv, augment=train_cfg.augment)
    size = examples.rgb.shape[1]
    if size % net_cfg.downsampling_factor:
        raise ConfigError(
            f"network.channels: {len(net_cfg.channels)} levels need patches divisible by "
            f"{net_cfg.downsampling_factor}, but patches are {size} px"
        )
    torch.manual_seed(train_cfg.seed)
    model = UNet(net_cfg)
    if init_model is not None:
        model.load_state_dict(load_state(init_model)["model"])
        logger.info("initialised from %s", init_model)
    model.set_gradient_checkpointing(train_cfg.gradient_checkpointing)
    prepare_for_training(model, train_cfg, device)
    logger.info("%s model: %s parameters, %s", kind, f"{count_parameters(model):,}", net_cfg)
    if train_cfg.gradient_checkpointing:
        logger.info("gradient checkpointing on: block activations are recomputed in backward")
    noise_schedule = sched_cfg.build()
    optimizer = make_optimizer(model, train_cfg)
    lr_schedule = make_lr_schedule(
        train_cfg.lr_schedule, optimizer, base_lr=train_cfg.lr, iterations=train_cfg.iterations
    )

    def step(model: UNet, generator: torch.Generator) -> torch.Tensor:
        if lr_schedule is not None:
            lr_schedule.before_step()
        images, structures = examples.draw(train_cfg.batch_size, generator)
        if kind == "structure":
            return l_simple(
                model,
                to_layout(structures, device, train_cfg),
                noise_schedule,
                generator=generator,
                min_snr_gamma=train_cfg.min_snr_gamma,
            )
        return l_simple(
            model,
            to_layout(images, device, train_cfg),
            noise_schedule,
            generator=generator,
            cond=to_layout(structures, device, train_cfg),
            drop_rate=train_cfg.drop_rate,
            min_snr_gamma=train_cfg.min_snr_gamma,
        )

    # Gradient checkpointing changes memory, not weights: a run killed for memory may be
    # resumed with it switched on (or off), so it stays out of the fingerprint.
    fingerprint = {
        "kind": kind,
        "network": net_cfg.to_dict(),
        "training": {
            k: v
            for k, v in asdict(train_cfg).items()
            if k != "gradient_checkpointing"
            and not (k in FAST_PATH_KEYS and not v)
            and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])
        },
        "schedule": asdict(sched_cfg),
        "samples": file_sha256(samples_csv),
        "init": file_sha256(init_model) if init_model is not None else None,
    }
    result = train_to_files(
        model,
        optimizer,
        step,
        train_cfg.loop_settings(),
        seed=train_cfg.seed,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        save=lambda trained: save_diffusion_model(
            out_model,
            kind=kind,
            network=net_cfg,
            schedule=sched_cfg,
            model=trained.model,
            ema=trained.ema,
            training=train_cfg,
            patch_size=size,
            snapshots=trained.snapshots,
        ),
        plot=lambda history, png: plot_loss_curve(history, png, title=f"{kind} model: L_simple"),
        loss_csv=loss_csv,
        loss_png=loss_png,
        callbacks=[] if lr_schedule is None else [lr_schedule],
        device=device,
    )
    return result.history
