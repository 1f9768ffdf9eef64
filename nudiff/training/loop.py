"""One training loop for every model nudiff trains.

It owns what the models have in common: AdamW steps with gradient clipping,
EMA weights, bf16 autocast on CUDA, progress lines in the log, periodic
checkpoints, and a clean stop on SIGTERM (what Slurm sends before it kills a
preempted or timed-out job). A stopped or killed run started again with the
same settings resumes from its newest checkpoint and ends with the same
weights as a run that was never interrupted (on the CPU): the checkpoint holds
the model, EMA, optimiser, step, the data/noise generator and the global RNG.

What a model trains on is the caller's ``step_fn``: it draws its batch and
noise from the generator it is given and returns the loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nudiff.training.checkpoint import CheckpointStore

logger = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class LoopSettings:
    """How long and how to train; the optimiser itself is the caller's."""

    iterations: int
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    ema_warmup: bool = False
    snapshot_every: int | None = None
    bf16: bool = True  # autocast on CUDA
    cpu_bf16: bool = False  # autocast on the CPU too (fast where it has bf16 units: AMX, AVX512-BF16)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1 or None, got {self.snapshot_every}")


class Callback(Protocol):
    """Runs after some steps (e.g. validation); its state is checkpointed with the loop's."""

    def after_step(self, step: int, model: nn.Module, ema: nn.Module | None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingInterrupted(RuntimeError):
    """Raised after a stop signal, once the state has been checkpointed."""


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module | None
    history: pd.DataFrame  # one row per step: step, loss, lr, seconds
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # step, model, ema (CPU state dicts)


@contextlib.contextmanager
def stop_requests(signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[list[int]]:
    """Turn stop signals into a flag the loop checks between steps.

    Yields a list that receives the signal numbers; handlers are restored on exit.
    Outside the main thread (where handlers cannot be set) nothing is installed.
    """
    received: list[int] = []
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread
        pass
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ema_decay_at(decay: float, num_averaged: int, *, warmup: bool) -> float:
    """The decay of the EMA update that follows ``num_averaged`` earlier updates.

    With ``warmup`` it is ``min(decay, (1 + n) / (10 + n))`` (the warm-up of TensorFlow's
    ExponentialMovingAverage with ``num_updates``): after 100 steps the EMA weighs the
    initial network by about 1e-4 instead of ``decay ** 100``, so a short run does not
    sample a model that is still largely its zero-initialised start.
    """
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


def make_ema(model: nn.Module, decay: float | None, *, warmup: bool = False) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (and buffers), or None."""
    if decay is None:
        return None
    if not warmup:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def warm_ema(ema_params, current_params, num_averaged):
        d = ema_decay_at(decay, int(num_averaged), warmup=True)
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, current_params, 1.0 - d)
        else:  # integer buffers cannot be interpolated in place
            for e, c in zip(ema_params, current_params):
                e.copy_(e * d + c * (1.0 - d))

    return AveragedModel(model, multi_avg_fn=warm_ema, use_buffers=True)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    settings: LoopSettings,
    *,
    generator: torch.Generator,
    store: CheckpointStore,
    fingerprint: dict[str, Any],
    callbacks: Sequence[Callback] = (),
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train ``model`` for ``settings.iterations`` steps, resuming if a checkpoint exists.

    Args:
        step_fn: ``(model, generator) -> loss``; called in train mode, under autocast on CUDA.
        generator: the source of every random draw of the data and noise.
        store: where checkpoints go.
        fingerprint: everything that defines the run (hyper-parameters, data
            identity). A checkpoint with another fingerprint is not resumed
            from: it is discarded with a log line.
        callbacks: run after each step, checkpointed with the loop.

    Raises:
        TrainingInterrupted: after SIGTERM/SIGINT, once a checkpoint is saved.
    """
    device = torch.device(device)
    ema = make_ema(model, settings.ema_decay, warmup=settings.ema_warmup)
    history: list[dict[str, float]] = []
    snapshots: list[dict[str, Any]] = []
    start_step = _resume(model, optimizer, ema, generator, callbacks, store, fingerprint, history, snapshots)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if (device.type == "cuda" and settings.bf16) or (device.type == "cpu" and settings.cpu_bf16)
        else contextlib.nullcontext()
    )

    def checkpoint(step: int) -> None:
        state = {
            "step": step,
            "fingerprint": fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": _rng_state(generator),
            "callbacks": [cb.state_dict() for cb in callbacks],
            "history": {k: [row[k] for row in history] for k in ("step", "loss", "lr", "seconds")},
            "snapshots": snapshots,
        }
        store.save(step, state)

    model.train()
    t0 = time.monotonic()
    window: list[float] = []
    with stop_requests() as stops:
        for step in range(start_step + 1, settings.iterations + 1):
            tic = time.monotonic()
            with autocast:
                loss = step_fn(model, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # the step's one host sync, after backward is queued (on a GPU it overlaps);
            # a non-finite loss still stops the run before the weights change
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}")
            if settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            for cb in callbacks:
                cb.after_step(step, model, ema)
            history.append(
                {
                    "step": step,
                    "loss": loss_value,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": time.monotonic() - tic,
                }
            )
            window.append(history[-1]["loss"])
            if step % settings.log_every == 0 or step == settings.iterations:
                rate = len(window) / max(time.monotonic() - t0, 1e-9)
                eta = (settings.iterations - step) / rate
                logger.info(
                    "step %d/%d loss %.5f (mean of last %d) %.2f it/s eta %.0f s",
                    step,
                    settings.iterations,
                    sum(window) / len(window),
                    len(window),
                    rate,
                    eta,
                )
                window, t0 = [], time.monotonic()
            if settings.snapshot_every is not None and (
                step % settings.snapshot_every == 0 or step == settings.iterations
            ):
                # candidates for sampling, chosen later by a measured score (not by the last step)
                snapshots.append(
                    {"step": step, "model": _cpu_state(model), "ema": _cpu_state(ema.module) if ema else None}
                )
            if stops:
                checkpoint(step)
                raise TrainingInterrupted(
                    f"stopped by signal {stops[0]} at step {step}; rerun the same command to resume"
                )
            if step % settings.checkpoint_every == 0 and step < settings.iterations:
                checkpoint(step)
    model.eval()
    return TrainResult(
        model=model,
        ema=ema,
        history=pd.DataFrame(history, columns=["step", "loss", "lr", "seconds"]),
        snapshots=snapshots,
    )


def _resume(model, optimizer, ema, generator, callbacks, store, fingerprint, history, snapshots) -> int:
    latest = store.latest()
    if latest is None:
        return 0
    state = torch.load(latest, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        logger.warning("discarding checkpoints in %s: they belong to other settings", store.directory)
        store.clear()
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    for cb, cb_state in zip(callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    _restore_rng(generator, state["rng"])
    saved = state["history"]
    history.extend(dict(zip(saved, values)) for values in zip(*saved.values()))
    snapshots.extend(state.get("snapshots", []))
    logger.info("resumed from %s (step %d)", latest, state["step"])
    return int(state["step"])


def settings_dict(settings: LoopSettings) -> dict[str, Any]:
    return asdict(settings)
