"""A stand-in for Slurm's preemption in the resume tests: SIGTERM raised inside a call."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def sigterm_on_call(function: Callable[..., Any], n: int) -> Callable[..., Any]:
    """``function`` that raises SIGTERM (what Slurm sends to a preempted job) on its ``n``-th call,
    then carries on: the training loop's handler turns the signal into a checkpoint and a stop.
    The wrapper counts its calls in ``.calls``."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        wrapped.calls += 1
        if wrapped.calls == n:
            signal.raise_signal(signal.SIGTERM)
        return function(*args, **kwargs)

    wrapped.calls = 0
    return wrapped
