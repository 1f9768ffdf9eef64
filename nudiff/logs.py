"""Logging set-up shared by the workflow scripts, and progress lines for long loops."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Send nudiff's log records to ``log_file`` (if given) and to stderr.

    Python warnings are routed into the log too, so a rule's log shows them.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(exc_type, exc, tb) -> None:
    """Put the error that ends a script into its log file, not only on stderr."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("nudiff").critical("failed: %s", exc, exc_info=(exc_type, exc, tb))


def log_progress(
    items: Iterable[T],
    *,
    total: int | None = None,
    desc: str,
    logger: logging.Logger,
    every_seconds: float = 30.0,
) -> Iterator[T]:
    """Yield from ``items``, logging ``desc: i/total`` at most every ``every_seconds``.

    Log files are read by people and by cluster tools, so this writes whole
    lines (unlike a terminal progress bar, which redraws one line).
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    start = last = time.monotonic()
    count = 0
    for count, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_seconds:
            last = now
            of_total = f"/{total}" if total is not None else ""
            logger.info("%s: %d%s (%.0f s)", desc, count, of_total, now - start)
    logger.info("%s: done, %d items in %.1f s", desc, count, time.monotonic() - start)
