"""Reading the workflow's CSV tables with errors that name the file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from nudiff.errors import InputDataError


def read_table(
    path: str | os.PathLike,
    *,
    required: Iterable[str],
    what: str = "table",
    dtype: Any = None,
    allow_empty: bool = True,
) -> pd.DataFrame:
    """``pd.read_csv`` that raises :class:`InputDataError` naming ``path``.

    Raises when the file is missing or unreadable, lacks one of the ``required``
    columns, or (``allow_empty=False``) holds no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: {what} not found")
    try:
        table = pd.read_csv(path, dtype=dtype, keep_default_na=dtype is not str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: unreadable {what}: {exc}") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputDataError(f"{path}: {what} lacks column(s) {missing}")
    if not allow_empty and table.empty:
        raise InputDataError(f"{path}: {what} has no rows")
    return table
