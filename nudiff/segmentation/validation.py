"""Validation during segmenter training: the keep-the-best callback and the training figure.

The validation patches are the subset's held-out source images (:mod:`nudiff.holdout`), fixed
before anything trains and shared by every arm and seed; each network scores them its own way
(:func:`nudiff.segmentation.hovernet.train.score_patches`,
:func:`nudiff.segmentation.pffnet.train.score_pffnet_patches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nudiff.figures import plot_loss_curve, save_figure

logger = logging.getLogger(__name__)

VALIDATION_COLUMNS = ["step", "dice", "aji", "score"]


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class BestWeights:
    """Loop callback: score the model every ``every`` steps (and at the last step) and keep the
    weights of the best score (the first of equal scores): HoVer-Net's "epoch kept by validation".

    Its state (best weights, best step and score, the log) is checkpointed with the loop, so a
    resumed run keeps the same best weights as an uninterrupted one.

    Args:
        score_fn: ``model -> {"dice", "aji", "score", ...}``; called with the training model.
        every: validation period in steps.
        iterations: the run's last step (always validated).
    """

    def __init__(self, score_fn: Callable[[nn.Module], Mapping[str, float]], *, every: int, iterations: int) -> None:
        if every < 1:
            raise ValueError(f"validate_every must be at least 1, got {every}")
        self.score_fn, self.every, self.iterations = score_fn, every, iterations
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None
        self.best_score: float | None = None
        self.log: list[dict[str, float]] = []

    def after_step(self, step: int, model: nn.Module, ema: nn.Module | None) -> None:
        if step % self.every and step != self.iterations:
            return
        scores = dict(self.score_fn(model))
        row = {"step": step, **{k: float(scores[k]) for k in VALIDATION_COLUMNS[1:]}}
        self.log.append(row)
        improved = self.best_score is None or row["score"] > self.best_score
        if improved:
            self.best_state = _cpu_copy(model)
            self.best_step, self.best_score = step, row["score"]
        logger.info(
            "validation at step %d: dice %.4f aji %.4f score %.4f%s",
            step,
            row["dice"],
            row["aji"],
            row["score"],
            " (best so far)" if improved else f" (best {self.best_score:.4f} at step {self.best_step})",
        )

    @classmethod
    def final(cls, model: nn.Module, step: int) -> BestWeights:
        """Without a validation set: keep the weights of ``step`` (``best_score`` stays None)."""
        keeper = cls(lambda m: {}, every=step, iterations=step)
        keeper.best_state, keeper.best_step = _cpu_copy(model), step
        return keeper

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_state": self.best_state,
            "best_step": self.best_step,
            "best_score": self.best_score,
            "log": [dict(row) for row in self.log],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_state, self.best_step = state["best_state"], state["best_step"]
        self.best_score, self.log = state["best_score"], [dict(row) for row in state["log"]]

    def table(self) -> pd.DataFrame:
        """The validation log, one row per validation: ``step, dice, aji, score``."""
        return pd.DataFrame(self.log, columns=VALIDATION_COLUMNS)


def plot_training(
    history: pd.DataFrame, validation: pd.DataFrame, path: str | Path, *, best_step: int | None, model_label: str
) -> None:
    """Loss per step (left) and validation Dice / AJI / score (right), the kept step marked."""
    if validation.empty:
        plot_loss_curve(history, path, title=f"{model_label}: loss")
        return
    import matplotlib.pyplot as plt  # nudiff.figures has set the Agg backend

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    window = max(1, len(history) // 100)
    left.plot(history["step"], history["loss"], lw=0.5, alpha=0.35, color="tab:blue")
    left.plot(history["step"], history["loss"].rolling(window, min_periods=1).mean(), color="tab:blue")
    left.set(yscale="log", xlabel="step", ylabel="loss", title=f"{model_label}: loss")
    for column in ("dice", "aji", "score"):
        right.plot(validation["step"], validation[column], marker=".", label=column)
    if best_step is not None:
        right.axvline(best_step, color="grey", ls="--", lw=0.8, label=f"kept (step {best_step})")
    right.set(xlabel="step", ylabel="validation", title="validation (held-out source images)")
    right.legend(frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
