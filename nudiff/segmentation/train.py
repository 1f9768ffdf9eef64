"""Training Hover-Net on a sample table (spec section 6: once per labelled and augmented subset).

Runs through :func:`nudiff.training.loop.run_training` (checkpoints, exact resume after SIGTERM).
A training example is a patch of the table, augmented with its instance map
(:mod:`nudiff.segmentation.augment`); the targets come from the nuclei structure of the
augmented map and are centre-cropped to the network output in valid-padding mode
(:func:`nudiff.segmentation.losses.hovernet_loss`).

HoVer-Net's schedule (vqdang/hover_net ``models/hovernet/opt.py``): Adam, lr 1e-4, two phases of
50 epochs each, the first with the (ImageNet) encoder frozen, the second with all weights and a
new optimiser; in each phase ``StepLR(25)`` divides the lr by 10 half-way. Here phase 1 is the
first ``freeze_encoder_fraction`` of the iterations and the lr drops 10x at ``lr_decay_at`` of
each phase. Validation on held-out source images (:mod:`nudiff.segmentation.validation`) keeps
the weights of the best mean (Dice + AJI) / 2; those are the weights saved.

Batches are built by :class:`StepBatches`: batch ``k`` is a function of ``(seed, k)`` alone, so
DataLoader worker processes can prepare the coming batches while the accelerator trains, with
the same batches for any number of workers and after a resume.
"""

from __future__ import annotations

import atexit
import logging
import math
import signal
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nudiff.config import from_mapping
from nudiff.errors import ConfigError, InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.digest import file_sha256
from nudiff.runtime import resolve_cpu_bf16
from nudiff.samples import SampleReader, read_sample_table
from nudiff.segmentation.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    augment_pair,
)
from nudiff.segmentation.encoder_weights import load_encoder_weights
from nudiff.segmentation.hovernet import HoVerNet
from nudiff.segmentation.hovernet_config import HoVerNetConfig
from nudiff.segmentation.losses import hovernet_loss, structure_to_targets
from nudiff.segmentation.validation import (
    BestWeights,
    plot_training,
    score_patches,
    split_validation,
)
from nudiff.structure import nuclei_structure
from nudiff.training.checkpoint import load_state, save_state
from nudiff.training.loop import LoopSettings, TrainResult
from nudiff.training.run import train_to_files

logger = logging.getLogger(__name__)

MODEL_NAME = "hovernet"
PRETRAIN_SOURCES = ("synthetic", "real")
LR_DECAY_FACTOR = 0.1  # HoVer-Net's StepLR gamma


@dataclass(frozen=True)
class SegmenterRun:
    """The settings every segmenter's training run shares (Hover-Net's and PFF-Net's add theirs).

    Attributes:
        iterations: optimiser steps in all (unless ``epochs`` is set).
        epochs: if set, the steps are ``ceil(epochs * n / batch_size)`` with ``n`` the training
            patches the batches are drawn from (all of them when ``mixing`` is ``pooled``, the
            real ones when ``paired``), so training length scales with the training set.
        mixing: how synthetic samples enter a batch. ``pooled``: every sample of the batch is
            drawn from all training rows alike (the paper). ``paired``: ``batch_size`` real
            samples are drawn exactly as a run without synthetic rows draws them (same
            generator, same augmentations), and ``round(batch_size * n_synthetic / n_real)``
            synthetic samples are added from a generator of their own; an augmented run and
            its labelled twin then see the same real stream, so their difference is the
            synthetic pairs' effect and not another draw of the real batches.
        synthetic_per_batch: paired mixing's synthetic samples per step: ``"auto"`` = the
            proportional share above, or a count (0 with ``synthetic_pretrain_epochs`` trains
            the schedule on the real stream alone, after the synthetic pre-training).
        synthetic_pretrain_epochs: epochs over the synthetic pairs trained on them alone
            before the run's own schedule starts (0 = none). The steps after them are those of
            the run without pre-training (same real stream, same lr schedule, a fresh optimiser
            state), so the synthetic pairs act as an initialisation of the labelled run.
        pretrain_source: what the pre-training steps draw: ``"synthetic"`` (the pairs) or
            ``"real"`` (the real training patches, from a stream of their own): the control of
            synthetic pre-training, with the same number of pre-training steps (still
            ``synthetic_pretrain_epochs`` over the synthetic pairs' count), the same optimiser
            reset and the same steps after it, so the two differ only in what phase 1 sees.
        batch_size: patches per step.
        grad_clip: gradient-norm clipping (none in either paper recipe).
        validate_every: steps between validations (the last step is always validated).
        val_fraction: share of the real source images held out for validation; 0 = none.
        augment: random flips/rotations (and the model's further augmentations).
        checkpoint_every, keep_checkpoints, log_every: the loop's settings.
        loader_workers: DataLoader worker processes that prepare the batches (augmentation and
            targets) ahead of the training step; 0 prepares them in the training process.
            ``"auto"``: the job's torch threads - 1 on a CUDA device (the training process
            mostly waits for the GPU), 0 on the CPU (there the step already uses every thread
            of the job). The batches are the same for any value.
        cpu_bf16: bf16 autocast of the training step on the CPU (CUDA always uses it): about
            1.6x faster for Hover-Net where the CPU has bf16 units (AMX, AVX512-BF16);
            ``"auto"`` = there. Normalisation, the losses and the weights stay float32.
        seed: seeds the weights, the validation split and every batch draw.
    """

    iterations: int = 20_000
    epochs: float | None = None
    mixing: str = "pooled"
    synthetic_per_batch: int | str = "auto"
    synthetic_pretrain_epochs: float = 0.0
    pretrain_source: str = "synthetic"
    batch_size: int = 8
    grad_clip: float | None = None
    validate_every: int = 1000
    val_fraction: float = 0.1
    augment: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 100
    loader_workers: int | str = "auto"
    cpu_bf16: bool | str = False  # True, False or "auto" (resolved here)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "validate_every", "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"training.{name} must be a positive integer, got {value!r}")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ConfigError(f"training.epochs must be a positive number or null, got {self.epochs!r}")
        if self.mixing not in ("pooled", "paired"):
            raise ConfigError(f"training.mixing must be 'pooled' or 'paired', got {self.mixing!r}")
        count = self.synthetic_per_batch
        if count != "auto" and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise ConfigError(f"training.synthetic_per_batch must be 'auto' or an integer >= 0, got {count!r}")
        pretrain = self.synthetic_pretrain_epochs
        if isinstance(pretrain, bool) or not isinstance(pretrain, (int, float)) or pretrain < 0:
            raise ConfigError(f"training.synthetic_pretrain_epochs must be a number >= 0, got {pretrain!r}")
        if self.pretrain_source not in PRETRAIN_SOURCES:
            raise ConfigError(
                f"training.pretrain_source must be one of {PRETRAIN_SOURCES}, got {self.pretrain_source!r}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"training.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        workers = self.loader_workers
        if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
            raise ConfigError(f"training.loader_workers must be 'auto' or an integer >= 0, got {workers!r}")
        try:
            object.__setattr__(self, "cpu_bf16", resolve_cpu_bf16(self.cpu_bf16))
        except ValueError as error:
            raise ConfigError(f"training.{error}") from None

    def with_epochs(self, n_patches: int) -> SegmenterRun:
        """These settings with ``iterations`` from ``epochs`` over ``n_patches`` (unchanged without epochs)."""
        if self.epochs is None:
            return self
        return replace(self, iterations=max(1, math.ceil(self.epochs * n_patches / self.batch_size)))

    def workers(self, device: str | torch.device) -> int:
        """The DataLoader workers of this run on ``device`` (``loader_workers`` resolved)."""
        if self.loader_workers != "auto":
            return int(self.loader_workers)
        return max(0, torch.get_num_threads() - 1) if torch.device(device).type == "cuda" else 0

    def fingerprint(self) -> dict[str, Any]:
        """The settings that define the weights, for the checkpoint fingerprint: all but
        ``loader_workers`` (a resumed run may use other workers), plus the version of the batch
        stream, so a checkpoint of the older stream (drawn from the loop's generator) is not
        continued with per-step batches."""
        settings = {k: v for k, v in asdict(self).items() if k != "loader_workers"}
        return {**settings, "batch_stream": BATCH_STREAM}

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            iterations=self.iterations,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
            log_every=self.log_every,
            grad_clip=self.grad_clip,
            ema_decay=None,
            cpu_bf16=self.cpu_bf16,
        )


@dataclass(frozen=True)
class SegmenterTraining(SegmenterRun):
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
        settings: SegmenterTraining,
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


# the seed streams of a step: its real (or pooled) samples and the synthetic extras of paired mixing
REAL_STREAM, SYNTHETIC_STREAM = 0, 1
BATCH_STREAM = "per-step-v1"
TARGET_KINDS = {"structures", "instances"}


def _step_seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _to_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """``N x (S, S, C)`` -> ``(N, C, S, S)``."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class StepBatches(Dataset):
    """The training batches, indexed by step: ``batches[k]`` is the batch of step ``k``.

    Each step draws from generators seeded by ``(seed, k)`` and nothing else, so a batch does
    not depend on which process builds it, on the batches before it, or on a resume.

    Args:
        rgb, inst: the training patches ``(N, S, S, 3)`` uint8 and ``(N, S, S)``.
        rows: the patches the ``batch_size`` samples are drawn from (all of them when pooled,
            the real ones when paired).
        synthetic_rows, per_batch_synthetic: paired mixing's extra synthetic samples per step,
            from a stream of their own (none when ``per_batch_synthetic`` is 0).
        pretrain_steps: the first steps draw all ``batch_size`` samples from ``pretrain_rows``
            (pre-training); step ``pretrain_steps + k`` then draws the real samples of step ``k``
            of a run without pre-training.
        pretrain_rows: the rows pre-training draws from (default ``synthetic_rows``); the real
            rows for the real-patch control, drawn from the pre-training stream, not the real one.
        augment, jitter: whether to augment, and :func:`augment_pair`'s keyword arguments.
        targets: what each augmented instance map becomes: ``"structures"`` (its nuclei structure,
            Hover-Net's targets) or ``"instances"`` (the map itself, for instance-level models).

    Returns (per item):
        ``{"step": k, "images": (B, 3, S, S) uint8, "structures": (B, 3, S, S)}``, or
        ``"instances": (B, S, S)`` int32 in place of ``"structures"``.
    """

    def __init__(
        self,
        rgb: np.ndarray,
        inst: np.ndarray,
        rows: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        augment: bool,
        jitter: dict[str, Any],
        synthetic_rows: np.ndarray | None = None,
        per_batch_synthetic: int = 0,
        pretrain_steps: int = 0,
        pretrain_rows: np.ndarray | None = None,
        targets: str = "structures",
    ) -> None:
        if targets not in TARGET_KINDS:
            raise ValueError(f"targets must be one of {sorted(TARGET_KINDS)}, got {targets!r}")
        self.targets = targets
        self.rgb, self.inst, self.rows = rgb, inst, np.asarray(rows)
        self.synthetic_rows = np.asarray([] if synthetic_rows is None else synthetic_rows, dtype=np.int64)
        self.pretrain_rows = self.synthetic_rows if pretrain_rows is None else np.asarray(pretrain_rows)
        if per_batch_synthetic and not len(self.synthetic_rows):
            raise ValueError("per_batch_synthetic needs synthetic rows")
        if pretrain_steps and not len(self.pretrain_rows):
            raise ValueError("pretrain_steps needs rows to pre-train on")
        self.batch_size, self.per_batch_synthetic = batch_size, per_batch_synthetic
        self.pretrain_steps = pretrain_steps
        self.seed, self.augment, self.jitter = seed, augment, dict(jitter)

    def _draw(self, rows: np.ndarray, n: int, generator: torch.Generator, images: list, targets: list) -> None:
        for i in rows[torch.randint(0, len(rows), (n,), generator=generator).numpy()]:
            pair = (self.rgb[i], self.inst[i])
            image, labels = augment_pair(*pair, generator, **self.jitter) if self.augment else pair
            images.append(image)
            targets.append(nuclei_structure(labels) if self.targets == "structures" else labels.astype(np.int32))

    def __getitem__(self, step: int) -> dict[str, Any]:
        images: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        if step <= self.pretrain_steps:
            synthetic = torch.Generator().manual_seed(_step_seed(self.seed, step, SYNTHETIC_STREAM))
            self._draw(self.pretrain_rows, self.batch_size, synthetic, images, targets)
            return self._batch(step, images, targets)
        real = torch.Generator().manual_seed(_step_seed(self.seed, step - self.pretrain_steps, REAL_STREAM))
        self._draw(self.rows, self.batch_size, real, images, targets)
        if self.per_batch_synthetic:
            # a stream of its own: the real samples are those of a run without synthetic rows
            extra = torch.Generator().manual_seed(_step_seed(self.seed, step, SYNTHETIC_STREAM))
            self._draw(self.synthetic_rows, self.per_batch_synthetic, extra, images, targets)
        return self._batch(step, images, targets)

    def _batch(self, step: int, images: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, Any]:
        stacked = _to_batch(targets) if self.targets == "structures" else torch.from_numpy(np.stack(targets))
        return {"step": step, "images": _to_batch(images), self.targets: stacked}


def _ignore_stop_signals(worker_id: int) -> None:
    # Slurm signals every process of the job. The training process checkpoints and stops after
    # its step; a worker killed first would make the loader raise in it mid-step instead.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchStream:
    """The batches of steps ``first..last`` in order, built by ``workers`` processes (0: here).

    The workers ignore SIGTERM and SIGINT, so multiprocessing's exit handler, which stops
    daemonic children with SIGTERM and then waits for them, cannot end them: :meth:`close` does,
    and streams still open when the interpreter exits (a run stopped by a signal) are closed by
    an exit handler registered after multiprocessing's, which therefore runs before it.
    """

    _open: ClassVar[weakref.WeakSet[BatchStream]] = weakref.WeakSet()
    _exit_hook = False

    def __init__(
        self, batches: StepBatches, first: int, last: int, *, workers: int = 0, pin_memory: bool = False
    ) -> None:
        loader = DataLoader(
            batches,
            batch_size=None,  # an item is already a batch
            sampler=range(first, last + 1),
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            pin_memory=pin_memory,
            worker_init_fn=_ignore_stop_signals,
            # the loader draws its workers' base seed from this generator, not from torch's global
            # RNG (which the checkpoints hold); the batches never use that seed
            generator=torch.Generator(),
        )
        self._batches: Iterator[dict[str, Any]] | None = iter(loader)
        if workers:
            if not BatchStream._exit_hook:
                atexit.register(BatchStream.close_all)
                BatchStream._exit_hook = True
            BatchStream._open.add(self)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._batches is None:
            raise StopIteration
        return next(self._batches)

    def close(self) -> None:
        """Stop the workers (the loader's iterator shuts them down when it is released)."""
        self._batches = None
        BatchStream._open.discard(self)

    @classmethod
    def close_all(cls) -> None:
        for stream in list(cls._open):
            stream.close()


@dataclass
class TrainingData:
    """The patches of one training run, split and ready for :class:`StepBatches`.

    Attributes:
        rgb, inst: the training patches ``(N, S, S, 3)`` uint8 and ``(N, S, S)``.
        real_idx, synthetic_idx: rows of ``rgb`` that are real / synthetic.
        val_rgb, val_inst: the held-out validation patches (empty when there are none).
        settings: the run's settings with ``iterations`` resolved from ``epochs``.
        per_batch_synthetic: paired mixing's synthetic samples per step (0 when pooled).
        pretrain_steps: synthetic pre-training steps before the run's own schedule (included in
            ``settings.iterations``).
    """

    rgb: np.ndarray
    inst: np.ndarray
    real_idx: np.ndarray
    synthetic_idx: np.ndarray
    val_rgb: np.ndarray
    val_inst: np.ndarray
    settings: SegmenterRun
    per_batch_synthetic: int
    pretrain_steps: int = 0

    @property
    def paired(self) -> bool:
        return self.settings.mixing == "paired"

    @property
    def size(self) -> int:
        return self.rgb.shape[1]

    def batches(self, *, jitter: Mapping[str, Any], targets: str) -> StepBatches:
        """The run's :class:`StepBatches` (real rows only as the main stream when paired)."""
        cfg = self.settings
        return StepBatches(
            self.rgb,
            self.inst,
            self.real_idx if self.paired else np.arange(len(self.rgb)),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            augment=cfg.augment,
            jitter=jitter,
            synthetic_rows=self.synthetic_idx,
            per_batch_synthetic=self.per_batch_synthetic,
            pretrain_steps=self.pretrain_steps,
            pretrain_rows=self.real_idx if cfg.pretrain_source == "real" else self.synthetic_idx,
            targets=targets,
        )


def load_training_data(
    samples_csv: str | Path,
    settings: SegmenterRun,
    model_label: str,
    *,
    validation_samples: str | Path | None = None,
) -> TrainingData:
    """Read a sample table and its validation patches, resolve epochs and mixing, and log it.

    Args:
        validation_samples: a sample table of real validation patches (the subset's held-out
            source images, :mod:`nudiff.holdout`); without one, ``settings.val_fraction`` of the
            table's source images are held out here, drawn with the run's seed.

    Raises:
        InputDataError: nothing left to train on, or paired mixing without real samples.
    """
    table = read_sample_table(samples_csv)
    if validation_samples is None:
        train_rows, val_rows = split_validation(table, val_fraction=settings.val_fraction, seed=settings.seed)
        val_table = table
    else:
        val_table = read_sample_table(validation_samples)
        shared = sorted(set(table["sample_id"]) & set(val_table["sample_id"]))
        if shared:
            raise InputDataError(f"{samples_csv}: validation patches of {validation_samples} also train: {shared[:5]}")
        train_rows, val_rows = np.arange(len(table)), np.arange(len(val_table))
    if len(train_rows) == 0:
        raise InputDataError(f"{samples_csv}: no training samples left after the validation split")
    reader = SampleReader(table)
    rgb, inst = reader.load_all(train_rows)
    synthetic = table["origin"].to_numpy()[train_rows] == "synthetic"
    real_idx, synthetic_idx = np.flatnonzero(~synthetic), np.flatnonzero(synthetic)
    paired = settings.mixing == "paired"
    if paired and len(real_idx) == 0:
        raise InputDataError(f"{samples_csv}: training.mixing 'paired' needs real samples, there are none")
    per_batch_synthetic = _per_batch_synthetic(settings, len(real_idx), len(synthetic_idx)) if paired else 0
    settings = settings.with_epochs(len(real_idx) if paired else len(train_rows))
    pretrain_steps = 0
    if len(synthetic_idx) and settings.synthetic_pretrain_epochs > 0:
        pretrain_steps = math.ceil(settings.synthetic_pretrain_epochs * len(synthetic_idx) / settings.batch_size)
        settings = replace(settings, iterations=settings.iterations + pretrain_steps)
    from_real = settings.pretrain_source == "real"
    if len(synthetic_idx) and not per_batch_synthetic and (not pretrain_steps or from_real) and paired:
        if not from_real:
            raise ConfigError(
                f"training.synthetic_per_batch is 0 and synthetic_pretrain_epochs 0: the {len(synthetic_idx)} "
                f"synthetic pairs of {samples_csv} would never be trained on"
            )
        logger.info(
            "pretrain_source real: the %d synthetic pairs of %s only set the pre-training length; no step draws them",
            len(synthetic_idx),
            samples_csv,
        )
    if len(val_rows):
        val_rgb, val_inst = SampleReader(val_table).load_all(val_rows)
    else:
        val_rgb, val_inst = rgb[:0], inst[:0]
    logger.info(
        "training %s on %d patches (%d real, %d synthetic) of %d px from %s (%d validation patches); "
        "%d steps, batches of %d%s",
        model_label,
        len(rgb),
        len(real_idx),
        len(synthetic_idx),
        rgb.shape[1],
        samples_csv,
        len(val_rows),
        settings.iterations,
        settings.batch_size,
        f" real + {per_batch_synthetic} synthetic (paired)" if paired else " (pooled)",
    )
    if pretrain_steps:
        logger.info(
            "the first %d steps train on the %s alone (%s epochs over the synthetic pairs' count), then %d "
            "steps as the run without them",
            pretrain_steps,
            "real patches" if from_real else "synthetic pairs",
            settings.synthetic_pretrain_epochs,
            settings.iterations - pretrain_steps,
        )
    return TrainingData(
        rgb, inst, real_idx, synthetic_idx, val_rgb, val_inst, settings, per_batch_synthetic, pretrain_steps
    )


def _per_batch_synthetic(settings: SegmenterRun, n_real: int, n_synthetic: int) -> int:
    """Paired mixing's synthetic samples per step: the configured count, or ``auto``'s share."""
    if not n_synthetic:
        return 0
    if settings.synthetic_per_batch != "auto":
        return int(settings.synthetic_per_batch)
    share = settings.batch_size * n_synthetic / n_real
    if round(share) == 0:
        # at least one: rounding a small share to 0 would train the augmented run on the real
        # stream alone, i.e. make it its labelled twin
        logger.warning(
            "paired mixing: %d synthetic per %d real samples is %.2f per batch; using 1 (a larger share)",
            n_synthetic,
            n_real,
            share,
        )
    return max(1, round(share))


def fit_segmenter(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    *,
    batches: StepBatches,
    loss_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor],
    score_fn: Callable[[nn.Module], Mapping[str, float]],
    schedule: Any,
    model_file: dict[str, Any],
    fingerprint: dict[str, Any],
    out_model: str | Path,
    checkpoint_dir: str | Path,
    device: str | torch.device,
    loss_csv: str | Path | None,
    loss_png: str | Path | None,
    validation_csv: str | Path | None,
) -> BestWeights:
    """The training tail every segmenter shares: the batch stream, validation, checkpoints,
    the loss log and figure, and the model file with the best validated weights.

    Args:
        batches: the run's batches; loss_fn: ``(model, batch) -> loss`` of one step (train mode).
        score_fn: ``model -> {"dice", "aji", "score"}`` on the validation patches.
        schedule: a loop callback with ``before_step`` and a ``step`` attribute (the lr schedule).
        model_file: what the model file holds besides the weights and the validation record.
        fingerprint: what defines the weights (a checkpoint of another fingerprint is not resumed).
    """
    cfg = data.settings
    workers = cfg.workers(device)
    logger.info("batches prepared by %s", f"{workers} loader worker(s)" if workers else "the training process")
    stream: BatchStream | None = None

    def step(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        nonlocal stream
        schedule.before_step()
        k = schedule.step + 1
        if stream is None:  # started here, after any resume: the schedule knows the first step
            on_cuda = torch.device(device).type == "cuda"
            stream = BatchStream(batches, k, cfg.iterations, workers=workers, pin_memory=on_cuda)
        batch = next(stream)
        if batch["step"] != k:
            raise RuntimeError(f"batch of step {batch['step']} arrived for step {k}")
        if k == cfg.iterations:  # the workers are not needed for validation and saving
            stream.close()
        return loss_fn(model, batch)

    validation = None
    if len(data.val_rgb):
        validation = BestWeights(score_fn, every=cfg.validate_every, iterations=cfg.iterations)

    def save(result: TrainResult) -> None:
        nonlocal validation
        if validation is None:  # nothing to choose from: keep the last weights
            validation = BestWeights.final(result.model, cfg.iterations)
        save_state(
            out_model,
            {
                **model_file,
                "state": validation.best_state,
                "best_step": validation.best_step,
                "best_score": validation.best_score,
                "training": asdict(cfg),
                "input_size": data.size,
                "validation": validation.log,
            },
        )
        logger.info(
            "saved %s: weights of step %s (validation score %s)", out_model, validation.best_step, validation.best_score
        )
        if validation_csv is not None:
            with atomic_path(validation_csv) as tmp:
                validation.table().to_csv(tmp, index=False)

    train_to_files(
        model,
        optimizer,
        step,
        cfg.loop_settings(),
        seed=cfg.seed,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        save=save,
        plot=lambda history, png: plot_training(history, validation.table(), png, best_step=validation.best_step),
        loss_csv=loss_csv,
        loss_png=loss_png,
        callbacks=[schedule, *([validation] if validation else [])],
        device=device,
    )
    return validation


def train_segmenter(
    samples_csv: str | Path,
    out_model: str | Path,
    *,
    model: str = MODEL_NAME,
    network: dict[str, Any],
    training: dict[str, Any],
    checkpoint_dir: str | Path,
    device: str = "cpu",
    loss_csv: str | Path | None = None,
    loss_png: str | Path | None = None,
    validation_csv: str | Path | None = None,
    validation_samples: str | Path | None = None,
) -> BestWeights:
    """Rule ``train_segmenter``: train a segmenter on a sample table and save the best weights.

    Args:
        samples_csv: the training set (labelled or augmented subset; a sample table).
        out_model: the model file (:func:`load_segmenter` reads it).
        model: ``"hovernet"`` or ``"pffnet"`` (:func:`nudiff.segmentation.pffnet_train.train_pffnet`).
        network: the model's network config fields (:class:`HoVerNetConfig` for Hover-Net);
            training: its training settings (:class:`SegmenterTraining` for Hover-Net).
        checkpoint_dir: periodic checkpoints (removed after success).
        loss_csv, validation_csv, loss_png: the loss log, the validation log
            (``step, dice, aji, score``) and a figure of both.
        validation_samples: the real validation patches that choose the weights (a sample
            table); without it, ``training.val_fraction`` of the source images are held out.

    Returns:
        The validation callback: ``best_step``, ``best_score``, ``table()``.
    """
    if model == "pffnet":
        from nudiff.segmentation.pffnet_train import train_pffnet

        return train_pffnet(
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
    if model != MODEL_NAME:
        raise ConfigError(f"segmentation.models: unknown model {model!r} (hovernet, pffnet)")
    try:
        net_cfg = HoVerNetConfig.from_dict(network)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"network: {err}") from err
    data = load_training_data(
        samples_csv,
        from_mapping(SegmenterTraining, training, "training"),
        "Hover-Net",
        validation_samples=validation_samples,
    )
    cfg: SegmenterTraining = data.settings  # type: ignore[assignment]
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
    )


def rebuild_model(
    path: str | Path,
    state: dict[str, Any],
    name: str,
    build: Callable[[dict[str, Any]], nn.Module],
    device: str | torch.device,
) -> tuple[nn.Module, dict[str, Any]]:
    """A model file's network (``build(state["network"])``) with its weights, in eval mode on
    ``device``, and its other entries; the file must hold a ``name`` model."""
    if state.get("model") != name:
        raise InputDataError(f"{path} holds a {state.get('model')!r} model, expected {name!r}")
    model = build(state["network"])
    model.load_state_dict(state["state"])
    meta = {k: v for k, v in state.items() if k != "state"}
    return model.to(device).eval(), meta


def load_segmenter(
    path: str | Path, device: str | torch.device = "cpu", *, state: dict[str, Any] | None = None
) -> tuple[HoVerNet, dict[str, Any]]:
    """Rebuild a model saved by :func:`train_segmenter`, in eval mode on ``device``.

    Args:
        state: the file's contents when already read (else it is read here).

    Returns:
        ``(model, meta)``: meta holds every saved entry but the weights (``network``,
        ``training``, ``input_size``, ``output_size``, ``best_step``, ``best_score``, ``validation``).
    """
    state = load_state(path) if state is None else state
    return rebuild_model(path, state, MODEL_NAME, lambda net: HoVerNet(HoVerNetConfig.from_dict(net)), device)


def load_any_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a Hover-Net or PFF-Net model file (its ``model`` entry says which), in eval mode."""
    state = load_state(path)
    if state.get("model") == "pffnet":
        from nudiff.segmentation.pffnet_train import load_pffnet

        return load_pffnet(path, device, state=state)
    return load_segmenter(path, device, state=state)
