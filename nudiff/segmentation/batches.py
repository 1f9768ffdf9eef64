"""The training batches of a segmenter run, indexed by step, and the stream that prepares them.

Batch ``k`` is a function of ``(seed, k)`` alone (:class:`StepBatches`), so DataLoader worker
processes can prepare the coming batches while the accelerator trains (:class:`BatchStream`),
with the same batches for any number of workers and after a resume.
"""

from __future__ import annotations

import atexit
import signal
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nudiff.segmentation.augment import augment_pair
from nudiff.structure import nuclei_structure

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
