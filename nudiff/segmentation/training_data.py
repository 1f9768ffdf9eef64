"""A segmenter run's patches: the sample table read, split into real, synthetic and validation
patches, with training length and mixing resolved (:func:`load_training_data`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nudiff.errors import ConfigError, InputDataError
from nudiff.holdout import split_validation
from nudiff.samples import SampleReader, read_sample_table
from nudiff.segmentation.batches import StepBatches
from nudiff.segmentation.run_settings import SegmenterRun

logger = logging.getLogger(__name__)


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
            table's source images are held out here, drawn with the run's seed. With
            ``settings.validation_images == "train"`` they are training patches instead (and
            nothing is held out).

    Raises:
        InputDataError: nothing left to train on, or paired mixing without real samples.
    """
    table = read_sample_table(samples_csv)
    train_on_validation = settings.validation_images == "train"
    if validation_samples is None:
        fraction = 0.0 if train_on_validation else settings.val_fraction
        train_rows, val_rows = split_validation(table, val_fraction=fraction, seed=settings.seed)
        val_table = table
    else:
        val_table = read_sample_table(validation_samples)
        shared = sorted(set(table["sample_id"]) & set(val_table["sample_id"]))
        if shared:
            raise InputDataError(f"{samples_csv}: validation patches of {validation_samples} also train: {shared[:5]}")
        if train_on_validation:
            logger.info(
                "validation_images train: the %d patches of %s train too; the last weights are kept",
                len(val_table),
                validation_samples,
            )
            table = pd.concat([table, val_table], ignore_index=True)
            train_rows, val_rows = np.arange(len(table)), np.arange(0)
        else:
            train_rows, val_rows = np.arange(len(table)), np.arange(len(val_table))
    if len(train_rows) == 0:
        raise InputDataError(f"{samples_csv}: no training samples left after the validation split")
    reader = SampleReader(table)
    rgb, inst = reader.load_all(train_rows)
    synthetic = table["origin"].to_numpy()[train_rows] == "synthetic"
    if settings.skip_empty:
        has_nuclei = inst.reshape(len(inst), -1).max(axis=1, initial=0) > 0
        if not has_nuclei.all():
            logger.info("left out %d training patches without nuclei (skip_empty)", int((~has_nuclei).sum()))
        rgb, inst, synthetic = rgb[has_nuclei], inst[has_nuclei], synthetic[has_nuclei]
        if len(rgb) == 0:
            raise InputDataError(f"{samples_csv}: no training patch has a nucleus (skip_empty)")
    real_idx, synthetic_idx = np.flatnonzero(~synthetic), np.flatnonzero(synthetic)
    paired = settings.mixing == "paired"
    if paired and len(real_idx) == 0:
        raise InputDataError(f"{samples_csv}: training.mixing 'paired' needs real samples, there are none")
    per_batch_synthetic = _per_batch_synthetic(settings, len(real_idx), len(synthetic_idx)) if paired else 0
    settings = settings.with_epochs(len(real_idx) if paired else len(rgb))
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
