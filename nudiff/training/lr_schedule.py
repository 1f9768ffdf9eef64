"""Learning-rate schedules as training-loop callbacks (:class:`nudiff.training.loop.Callback`).

The paper trains its diffusion models at a constant lr for 200k steps. A run of a few hundred
steps at a high constant lr ends wherever the last noisy updates left it; on the demo the image
model's colours swung between magenta and green from one checkpoint to the next. Annealing the
lr to zero over the run lets the final (and EMA) weights settle.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

LR_SCHEDULES = ("constant", "cosine")


def cosine_lr(base_lr: float, step: int, iterations: int) -> float:
    """The lr of optimiser step ``step + 1``: half a cosine from ``base_lr`` at step 0 to 0 at ``iterations``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, iterations) / iterations))


class CosineLr:
    """A loop callback whose :meth:`before_step` sets every parameter group's lr to
    :func:`cosine_lr` (the step function calls it, so the loss log records the lr each step
    used). Its step count is checkpointed with the loop, so a resumed run follows the same lr
    sequence as one that was never interrupted.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, iterations: int) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        self.optimizer, self.base_lr, self.iterations = optimizer, base_lr, iterations
        self.step = 0  # optimiser steps done

    def before_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(self.base_lr, self.step, self.iterations)

    def after_step(self, step: int, model: nn.Module, ema: nn.Module | None) -> None:
        self.step = step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def make_lr_schedule(
    name: str, optimizer: torch.optim.Optimizer, *, base_lr: float, iterations: int
) -> CosineLr | None:
    """The schedule ``name`` (one of :data:`LR_SCHEDULES`) as a loop callback; None for a constant lr."""
    if name == "constant":
        return None
    if name == "cosine":
        return CosineLr(optimizer, base_lr=base_lr, iterations=iterations)
    raise ValueError(f"unknown lr schedule {name!r}; expected one of {', '.join(LR_SCHEDULES)}")
