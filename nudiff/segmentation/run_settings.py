"""The settings every segmenter's training run shares (Hover-Net's and PFF-Net's add their own).

:class:`SegmenterRun` holds what the shared run needs: training length (steps or epochs), how
synthetic pairs enter the batches (pooled or paired mixing, synthetic pre-training and its
real-patch control), validation, checkpoints and bf16. Each network's training settings
subclass it (:class:`nudiff.segmentation.hovernet.train.HoVerNetTraining`,
:class:`nudiff.segmentation.pffnet.train.PFFNetTraining`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from nudiff.errors import ConfigError
from nudiff.runtime import resolve_cpu_bf16
from nudiff.segmentation.batches import BATCH_STREAM
from nudiff.training.loop import LoopSettings

PRETRAIN_SOURCES = ("synthetic", "real")
VALIDATION_USES = ("select", "train")


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
        validation_images: what the held-out validation patches are for: ``"select"`` (the
            default): validated every ``validate_every`` steps, the best-scoring weights kept;
            ``"train"``: they join the training patches and the last weights are kept, as
            PFF-Net's reference trains (every training image, the final weights).
        augment: random flips/rotations (and the model's further augmentations).
        skip_empty: leave out training patches without nuclei (PFF-Net's reference: only
            images with annotations train).
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
    validation_images: str = "select"
    augment: bool = True
    skip_empty: bool = False
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
        if self.validation_images not in VALIDATION_USES:
            raise ConfigError(
                f"training.validation_images must be one of {VALIDATION_USES}, got {self.validation_images!r}"
            )
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
