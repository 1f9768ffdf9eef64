"""The export folder: every pair in two layouts, and a manifest.

An export folder holds::

    train/images/<name>.png   (H, W, 3) uint8 RGB
    train/labels/<name>.tif   (H, W) int32 instance map, 0 background, ids 1..n (zlib TIFF)
    hovernet/<name>.npy       (H, W, 4) int32: R, G, B, instance id
    manifest.csv              one row per pair (MANIFEST_COLUMNS, then the export's own columns)

``train/`` is nudiff's ``folder`` dataset layout (:mod:`nudiff.datasets.sources`): the folder
reads back with ``list_source_items("folder", <export>, splits=["train"])``, or as a dataset of
format ``folder`` once a ``test/`` split is put beside it.

``hovernet/`` is the layout HoVer-Net's ``extract_patches.py`` writes and its training loader
reads (vqdang/hover_net): ``extract_patches.py`` concatenates the uint8 RGB image with the
int32 annotation (``np.concatenate([img, ann], axis=-1)``, which numpy promotes to int32) and
``np.save``s one ``(H, W, 4)`` array per patch (``(H, W, 5)`` with a type map); the loader
(``dataloader/train_loader.py``) splits ``data[..., :3].astype("uint8")`` and
``data[..., 3:].astype("int32")``. nudiff has no nucleus types, so the arrays are
``(H, W, 4)`` int32. HoVer-Net crops its training input from the centre of each array
(270 px for the original model, 256 px for fast): export patches of at least that size for it.

Instance maps are relabelled 1..n in the order :func:`skimage.segmentation.relabel_sequential`
gives (as :func:`nudiff.datasets.prepare.prepare_dataset` does), so a read-back dataset holds
the same ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from skimage.segmentation import relabel_sequential

from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.digest import file_sha256
from nudiff.io.images import write_image, write_instance_map
from nudiff.io.tables import read_table

IMAGES = "train/images"
LABELS = "train/labels"
HOVERNET = "hovernet"
MANIFEST = "manifest.csv"
# the dtype of HoVer-Net's arrays: its extract_patches.py writes uint8 RGB + int32 ids as int32
HOVERNET_DTYPE = np.int32

# the first columns of every export's manifest; each export adds its own after them
MANIFEST_COLUMNS = [
    "name",
    "image",
    "label",
    "hovernet",
    "height",
    "width",
    "n_nuclei",
    "image_sha256",
    "label_sha256",
    "hovernet_sha256",
]


def hovernet_array(rgb: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """HoVer-Net's training patch: ``(H, W, 4)`` int32, RGB then the instance ids."""
    if rgb.shape[:2] != inst.shape or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb {rgb.shape} and inst {inst.shape} do not make a pair")
    return np.concatenate([rgb.astype(HOVERNET_DTYPE), inst[..., None].astype(HOVERNET_DTYPE)], axis=-1)


def sequential_ids(inst: np.ndarray) -> np.ndarray:
    """The map with its nuclei numbered 1..n (0 stays background), int32."""
    return relabel_sequential(np.asarray(inst))[0].astype(np.int32, copy=False)


class ExportFolder:
    """Writes pairs into ``folder`` (a temporary folder: see :func:`export_folder`).

    ``add`` writes a pair in both layouts and records its manifest row; ``write_manifest``
    writes ``manifest.csv`` with the columns in ``columns`` after :data:`MANIFEST_COLUMNS`.
    """

    def __init__(self, folder: Path, columns: list[str]) -> None:
        self.folder = folder
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = []
        for sub in (IMAGES, LABELS, HOVERNET):
            (folder / sub).mkdir(parents=True)

    def add(self, name: str, rgb: np.ndarray, inst: np.ndarray, **fields: Any) -> np.ndarray:
        """Write one pair named ``name``; returns the instance map as written (ids 1..n)."""
        if (self.folder / IMAGES / f"{name}.png").exists():
            raise InputDataError(f"two exported pairs would share the name {name!r}")
        unknown = sorted(set(fields) - set(self.columns))
        if unknown:
            raise ValueError(f"manifest fields {unknown} are not among the export's columns")
        inst = sequential_ids(inst)
        files = {"image": f"{IMAGES}/{name}.png", "label": f"{LABELS}/{name}.tif", "hovernet": f"{HOVERNET}/{name}.npy"}
        write_image(self.folder / files["image"], rgb)
        write_instance_map(self.folder / files["label"], inst)
        with atomic_path(self.folder / files["hovernet"]) as tmp:
            np.save(tmp, hovernet_array(rgb, inst))
        self.rows.append(
            {
                "name": name,
                **files,
                "height": inst.shape[0],
                "width": inst.shape[1],
                "n_nuclei": int(inst.max(initial=0)),
                **{f"{key}_sha256": file_sha256(self.folder / path) for key, path in files.items()},
                **fields,
            }
        )
        return inst

    def write_manifest(self) -> pd.DataFrame:
        table = pd.DataFrame(self.rows, columns=MANIFEST_COLUMNS + self.columns)
        table.to_csv(self.folder / MANIFEST, index=False)
        return table


@contextmanager
def export_folder(out_dir: str | os.PathLike, columns: list[str]) -> Iterator[ExportFolder]:
    """An :class:`ExportFolder` that becomes ``out_dir`` only when everything, the manifest
    last, was written (:func:`nudiff.io.atomic.atomic_path`): a failure leaves no folder."""
    with atomic_path(out_dir, directory=True) as tmp:
        writer = ExportFolder(Path(tmp), columns)
        yield writer
        writer.write_manifest()


def read_export_manifest(out_dir: str | os.PathLike) -> pd.DataFrame:
    """An export's manifest (file columns relative to ``out_dir``)."""
    return read_table(Path(out_dir) / MANIFEST, required=MANIFEST_COLUMNS, what="export manifest", dtype=str)
