"""Write outputs so that a failure leaves nothing half-written behind.

Every writer in nudiff goes through :func:`atomic_path`: the data is written to
a hidden temporary sibling and renamed onto the final path only when the whole
write succeeded. A crash, a bad input or a killed job therefore never leaves a
truncated file that a later step would take for a finished one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temporary_sibling(path: Path) -> Path:
    # Keep the suffix: writers such as tifffile and numpy pick the format from it.
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; move it onto ``path`` on success.

    Args:
        path: the final file or directory.
        directory: create the temporary path as an empty directory (for
            outputs that are folders of files).

    On an exception the temporary path is deleted and ``path`` is left as it
    was. Parent folders are created as needed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    _remove(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {final}")
        if directory and final.exists():
            _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
