"""Numbered training checkpoints in a folder of their own.

The folder is deliberately *not* a declared Snakemake output: Snakemake deletes
the outputs of a failed job, and a job killed by a preemption must find its
last checkpoint when it runs again.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{9})\.pt$")


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, so a kill mid-write leaves the old file intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a file written by :func:`save_state` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise InputDataError(f"cannot read checkpoint {path}: {err}") from err


class CheckpointStore:
    """``step_000001000.pt``-style checkpoints in ``directory``, keeping the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.directory / f"step_{step:09d}.pt"

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.path(step)
        save_state(path, state)
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        logger.info("checkpoint saved: %s", path)
        return path

    def clear(self) -> None:
        """Remove the folder (after the final model is safely written)."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory)
