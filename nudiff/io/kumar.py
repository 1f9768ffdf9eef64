"""Read instance maps from HoVer-Net's Kumar ``.mat`` label files.

HoVer-Net distributes the Kumar labels as MATLAB ``.mat`` files with the
instance map under the key ``inst_map`` (0 = background). MATLAB often stores
it as double; integral values are accepted and cast to int32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from nudiff.errors import InputDataError

INST_MAP_KEY = "inst_map"
_INT32_MAX = int(np.iinfo(np.int32).max)


def read_kumar_mat(path: str | os.PathLike, *, key: str = INST_MAP_KEY) -> np.ndarray:
    """Read the instance map stored under ``key`` in a MATLAB v5/v7 ``.mat`` file.

    Args:
        path: the ``.mat`` file.
        key: variable name of the instance map (HoVer-Net: ``"inst_map"``).

    Returns:
        ``(H, W)`` int32 instance map.

    Raises:
        InputDataError: naming the file, when it is missing, a v7.3 (HDF5)
            file, unreadable, lacks ``key`` (the message lists the variables
            found), or the map is not 2-D with non-negative integral values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: label file not found")
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as exc:
        # scipy raises this for v7.3 files, which are HDF5 containers.
        raise InputDataError(
            f"{path}: found a MATLAB v7.3 (HDF5) file, which scipy.io cannot read; re-save it with save(..., '-v7')"
        ) from exc
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError on junk
        raise InputDataError(f"{path}: not a readable MATLAB .mat file: {type(exc).__name__}: {exc}") from exc

    if key not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise InputDataError(f"{path}: no variable {key!r}; found {found}")
    array = np.asarray(contents[key])
    if array.ndim != 2:
        raise InputDataError(f"{path}: {key!r} must be 2-D (H, W), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputDataError(f"{path}: {key!r} must be numeric, got {array.dtype}")
    if array.size:
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputDataError(f"{path}: {key!r} holds non-integer values")
        low, high = array.min(), array.max()
        if low < 0 or high > _INT32_MAX:
            raise InputDataError(f"{path}: {key!r} ids must lie in [0, {_INT32_MAX}], got [{low}, {high}]")
    return array.astype(np.int32)
