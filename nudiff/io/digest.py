"""sha256 checksums of files, read in blocks so large model files need little memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

_BLOCK = 1 << 20


def sha256_of_files(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    return sha256_of_files([path])
