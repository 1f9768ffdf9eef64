"""What every workflow script does first: logging to the rule's log, and its thread budget."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

from nudiff.logs import configure_logging

logger = logging.getLogger(__name__)


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
