"""Convert a source dataset into the prepared form every later stage reads.

The prepared form of a dataset is one folder::

    out_dir/
        images/<name>.png      (H, W, 3) uint8 RGB
        labels/<name>.tif      (H, W) int32 instance map, ids 1..n, zlib TIFF
        manifest.csv           one row per image, columns MANIFEST_COLUMNS

``image`` and ``label`` in the manifest are relative to ``out_dir`` so the
folder can be moved; ``source_*`` columns record where each item came from
and a checksum of its source bytes.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.segmentation import relabel_sequential

from nudiff.datasets.sources import SPLITS, SourceItem
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.digest import sha256_of_files
from nudiff.io.images import (
    read_image,
    read_instance_map,
    write_image,
    write_instance_map,
)
from nudiff.io.kumar import read_kumar_mat
from nudiff.io.monuseg import read_monuseg_xml
from nudiff.io.tables import read_table

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = (
    "name",
    "split",
    "height",
    "width",
    "n_nuclei",
    "image",
    "label",
    "source_image",
    "source_label",
    "source_sha256",
)
_INT_COLUMNS = ("height", "width", "n_nuclei")


def read_source_label(item: SourceItem, image_shape: tuple[int, int]) -> np.ndarray:
    """Read the labels of ``item`` as an ``(H, W)`` int32 instance map.

    ``image_shape`` is ``(H, W)`` of the item's image: XML polygons are
    rasterised onto it; instance maps read from files must match it.

    Raises:
        InputDataError: naming both files and both shapes on a size mismatch.
    """
    if item.label_kind == "monuseg_xml":
        return read_monuseg_xml(item.label_path, image_shape)
    if item.label_kind == "kumar_mat":
        label = read_kumar_mat(item.label_path)
    elif item.label_kind == "instance_map":
        label = read_instance_map(item.label_path)
    else:
        raise ValueError(f"unknown label_kind {item.label_kind!r} for {item.name}")
    if label.shape != tuple(image_shape):
        raise InputDataError(
            f"size mismatch: image {item.image_path} is {tuple(image_shape)} (H, W) but "
            f"label {item.label_path} is {label.shape}"
        )
    return label


def _source_sha256(item: SourceItem) -> str:
    """sha256 of the source image bytes followed by the source label bytes."""
    return sha256_of_files((item.image_path, item.label_path))


def _check_unique_names(items: Sequence[SourceItem]) -> None:
    counts = Counter(item.name for item in items)
    duplicated = sorted(name for name, n in counts.items() if n > 1)
    if duplicated:
        where = [f"{i.name} ({i.split}: {i.image_path})" for i in items if i.name in duplicated]
        raise InputDataError(f"image names must be unique across splits; duplicated: {'; '.join(where)}")


def prepare_dataset(items: Sequence[SourceItem], out_dir: str | os.PathLike) -> pd.DataFrame:
    """Write the prepared form of ``items`` (images, relabelled labels, manifest).

    Items are processed one at a time, so memory holds one image and its
    labels. The folder is built under a temporary name and moved onto
    ``out_dir`` only when every item succeeded: a bad item leaves no
    ``out_dir`` behind, and an existing ``out_dir`` is replaced only on
    success.

    Args:
        items: from :func:`nudiff.datasets.sources.list_source_items`.
        out_dir: the prepared-dataset folder to create.

    Returns:
        The manifest as :func:`read_manifest` returns it (absolute paths).

    Raises:
        InputDataError: duplicate names, unreadable files, or an image and
            label of different sizes.
    """
    if not items:
        raise ValueError("items is empty: nothing to prepare")
    _check_unique_names(items)
    out_dir = Path(out_dir)
    rows = []
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for item in items:
            image = read_image(item.image_path)
            label = read_source_label(item, image.shape[:2])
            label = relabel_sequential(label)[0].astype(np.int32, copy=False)
            image_rel = f"images/{item.name}.png"
            label_rel = f"labels/{item.name}.tif"
            write_image(tmp / image_rel, image)
            write_instance_map(tmp / label_rel, label)
            height, width = label.shape
            n_nuclei = int(label.max(initial=0))
            rows.append(
                {
                    "name": item.name,
                    "split": item.split,
                    "height": height,
                    "width": width,
                    "n_nuclei": n_nuclei,
                    "image": image_rel,
                    "label": label_rel,
                    "source_image": str(item.image_path),
                    "source_label": str(item.label_path),
                    "source_sha256": _source_sha256(item),
                }
            )
            logger.info("%s (%s): %dx%d, %d nuclei", item.name, item.split, height, width, n_nuclei)
        table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        table.to_csv(tmp / MANIFEST_NAME, index=False)

    per_split = table["split"].value_counts()
    logger.info(
        "prepared %d images (%s), %d nuclei, in %s",
        len(table),
        ", ".join(f"{per_split[s]} {s}" for s in SPLITS if s in per_split),
        int(table["n_nuclei"].sum()),
        out_dir,
    )
    return read_manifest(out_dir / MANIFEST_NAME)


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Read a prepared dataset's ``manifest.csv``.

    ``image`` and ``label`` are resolved against the manifest's folder and
    returned as absolute path strings; the other columns are as written.

    Args:
        path: the ``manifest.csv`` file.
        check_files: also require every ``image`` and ``label`` file to exist.

    Raises:
        InputDataError: naming the file, when it is missing, lacks a column,
            holds an unknown split or duplicate names, or (``check_files``)
            points to a missing file.
    """
    path = Path(path)
    # Names such as "001" must stay strings.
    table = read_table(path, required=MANIFEST_COLUMNS, what="manifest", dtype=str)
    try:
        for column in _INT_COLUMNS:
            table[column] = table[column].astype(np.int64)
    except ValueError as exc:
        raise InputDataError(f"{path}: non-integer value in {_INT_COLUMNS}: {exc}") from exc
    bad_splits = sorted(set(table["split"]) - set(SPLITS))
    if bad_splits:
        raise InputDataError(f"{path}: unknown split(s) {bad_splits}; expected {SPLITS}")
    duplicated = sorted(table.loc[table["name"].duplicated(), "name"])
    if duplicated:
        raise InputDataError(f"{path}: duplicate name(s) {duplicated}")

    base = path.parent.absolute()
    for column in ("image", "label"):
        table[column] = [str(base / p) for p in table[column]]
        if check_files:
            absent = [p for p in table[column] if not Path(p).is_file()]
            if absent:
                raise InputDataError(f"{path}: {column} file(s) not found: {absent[:5]}")
    return table[list(MANIFEST_COLUMNS)]
