"""What every workflow script does first: logging to the rule's log, and its thread budget."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

from nudiff.logs import configure_logging

logger = logging.getLogger(__name__)


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 arithmetic units (AVX512-BF16 or AMX-BF16), from its Linux flags.

    False where the flags cannot be read: bf16 autocast on a CPU without such units is
    emulated and slower than float32, so "don't know" must mean "off".
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_cpu_bf16(value: bool | str) -> bool:
    """A ``cpu_bf16`` setting as a bool: ``"auto"`` is on where :func:`cpu_has_bf16`."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return cpu_has_bf16()
    raise ValueError(f"cpu_bf16 must be true, false or 'auto', got {value!r}")


def start_job(log_file: str | Path, *, threads: int = 1, uses_torch: bool = False) -> None:
    """Log to ``log_file`` and keep numerical libraries within ``threads`` cores.

    Snakemake runs several jobs side by side on the cores it was given; a torch
    job that spawned a thread per machine core would slow all of them down
    (measured here: 10x on a loaded 2-core machine).
    """
    configure_logging(log_file)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    device = ""
    if uses_torch:
        import torch

        torch.set_num_threads(threads)
        device = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    # The host and device of every job, so the logs record what ran where.
    logger.info("job on %s with %d thread(s)%s", platform.node(), threads, device)
