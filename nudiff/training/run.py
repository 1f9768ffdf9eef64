"""A checkpointed training run through to its files: what every trainer does after building its model.

The checkpoints are removed only once the model, the loss log and its figure are all written:
a job that fails while writing them resumes from its last checkpoint, not from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nudiff.io.atomic import atomic_path
from nudiff.training.checkpoint import CheckpointStore
from nudiff.training.loop import Callback, LoopSettings, StepFn, TrainResult, run_training


def train_to_files(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    settings: LoopSettings,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    fingerprint: dict[str, Any],
    save: Callable[[TrainResult], None],
    plot: Callable[[pd.DataFrame, str | Path], None],
    loss_csv: str | Path | None = None,
    loss_png: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train (resuming from ``checkpoint_dir``), then write the model and the loss log and figure.

    Args:
        seed: seeds the generator of every batch and noise draw.
        fingerprint: what defines the run (see :func:`run_training`).
        save: writes the model (and anything else the trainer keeps) from the result.
        plot: ``(history, path)``, draws the loss figure at ``loss_png``.
        loss_csv, loss_png: where the loss history and its figure go (None: not written).

    Returns:
        The loop's result.
    """
    store = CheckpointStore(checkpoint_dir, keep=settings.keep_checkpoints)
    result = run_training(
        model,
        optimizer,
        step_fn,
        settings,
        generator=torch.Generator().manual_seed(seed),
        store=store,
        fingerprint=fingerprint,
        callbacks=callbacks,
        device=device,
    )
    save(result)
    if loss_csv is not None:
        with atomic_path(loss_csv) as tmp:
            result.history.to_csv(tmp, index=False)
    if loss_png is not None:
        plot(result.history, loss_png)
    store.clear()
    return result
