"""The training run every segmenter shares: batches, validation, checkpoints that survive a
killed job, the loss log and figure, and the model file with the best validated weights.

Each network brings its model, optimiser, loss of one step, validation score and lr schedule
(:mod:`nudiff.segmentation.hovernet.train`, :mod:`nudiff.segmentation.pffnet.train`);
:func:`fit_segmenter` runs them through :func:`nudiff.training.run.train_to_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.segmentation.batches import BatchStream, StepBatches
from nudiff.segmentation.training_data import TrainingData
from nudiff.segmentation.validation import BestWeights, plot_training
from nudiff.training.checkpoint import save_state
from nudiff.training.loop import TrainResult
from nudiff.training.run import train_to_files

logger = logging.getLogger(__name__)


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
    model_label: str,
) -> BestWeights:
    """The training tail every segmenter shares: the batch stream, validation, checkpoints,
    the loss log and figure, and the model file with the best validated weights.

    Args:
        batches: the run's batches; loss_fn: ``(model, batch) -> loss`` of one step (train mode).
        score_fn: ``model -> {"dice", "aji", "score"}`` on the validation patches.
        schedule: a loop callback with ``before_step`` and a ``step`` attribute (the lr schedule).
        model_file: what the model file holds besides the weights and the validation record.
        fingerprint: what defines the weights (a checkpoint of another fingerprint is not resumed).
        model_label: the network's name in the figures.
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
        plot=lambda history, png: plot_training(
            history, validation.table(), png, best_step=validation.best_step, model_label=model_label
        ),
        loss_csv=loss_csv,
        loss_png=loss_png,
        callbacks=[schedule, *([validation] if validation else [])],
        device=device,
    )
    return validation


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
