"""Cut prepared images into a regular grid of square patches (spec section 2).

A patch is stored as a reference, not as pixels: (source image, y, x, size).
Cropping happens when a patch is read (:mod:`nudiff.samples`), so the patch
index of the 30-image MoNuSeg training set is a few kB and memory use stays at
one source image at a time while it is built.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.datasets.prepare import read_manifest
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_instance_map
from nudiff.io.tables import read_table
from nudiff.logs import log_progress

logger = logging.getLogger(__name__)

PATCH_INDEX_COLUMNS = ["patch_id", "image", "y", "x", "size", "n_nuclei"]


def grid_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of patches along one axis.

    Starts are ``0, stride, 2 * stride, ...``; when the last one does not end
    on the border, one more start is added at ``length - size`` so that every
    pixel is covered (1000 px, size 256, stride 128 -> 7 starts, the last 744).

    Raises:
        ValueError: if ``length < size`` or ``size``/``stride`` are not positive.
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"patch size and stride must be positive, got size={size}, stride={stride}")
    if length < size:
        raise ValueError(f"an axis of length {length} is shorter than the patch size {size}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def patch_grid(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of all patches of an image, row by row."""
    return [(y, x) for y in grid_starts(height, size, stride) for x in grid_starts(width, size, stride)]


def patch_id(image: str, y: int, x: int) -> str:
    """A patch's stable name, e.g. ``TCGA-18-5592-01Z-00-DX1_y128_x256``."""
    return f"{image}_y{y}_x{x}"


def build_patch_index(
    manifest: pd.DataFrame, *, size: int = 256, stride: int = 128, split: str = "train"
) -> pd.DataFrame:
    """List every patch of the images of one split.

    Args:
        manifest: a prepared dataset manifest (:func:`nudiff.datasets.prepare.read_manifest`),
            with resolved ``label`` paths.
        size, stride: patch geometry in pixels (paper: 256 and 128).
        split: which images to cut.

    Returns:
        One row per patch with columns :data:`PATCH_INDEX_COLUMNS`;
        ``n_nuclei`` counts the distinct instance ids the patch touches.
    """
    images = manifest[manifest["split"] == split]
    if images.empty:
        raise InputDataError(f"the manifest has no images in split {split!r}")
    rows = []
    for item in log_progress(list(images.itertuples()), desc=f"cutting {split} images", logger=logger):
        if item.height < size or item.width < size:
            raise InputDataError(f"image {item.name} is {item.height}x{item.width}, smaller than the patch size {size}")
        inst = read_instance_map(item.label)
        for y, x in patch_grid(item.height, item.width, size, stride):
            ids = np.unique(inst[y : y + size, x : x + size])
            rows.append((patch_id(item.name, y, x), item.name, y, x, size, int(np.count_nonzero(ids))))
    index = pd.DataFrame(rows, columns=PATCH_INDEX_COLUMNS)
    logger.info("%d patches of %dx%d (stride %d) from %d images", len(index), size, size, stride, len(images))
    return index


def write_patch_index(index: pd.DataFrame, path: str | Path) -> None:
    """Write a patch index as CSV, atomically."""
    with atomic_path(path) as tmp:
        index.to_csv(tmp, index=False)


def read_patch_index(path: str | Path) -> pd.DataFrame:
    """Read a patch index written by :func:`write_patch_index`, checking its columns."""
    return read_table(path, required=PATCH_INDEX_COLUMNS, what="patch index")


def extract_patches(
    prepared_dir: str | Path, out_csv: str | Path, *, size: int = 256, stride: int = 128
) -> pd.DataFrame:
    """Rule ``extract_patches``: the patch index of a prepared dataset's training images."""
    index = build_patch_index(read_manifest(Path(prepared_dir) / "manifest.csv"), size=size, stride=stride)
    write_patch_index(index, out_csv)
    return index
