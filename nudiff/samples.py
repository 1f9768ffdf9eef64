"""Training sets as tables of references to (image, instance map) pairs.

A *sample table* is what every training stage reads: the labelled subset (real
patches cropped from prepared images) and the augmented set (those plus
synthetic pairs stored in shard files). Each row points at pixels that already
exist on disk, so an augmented set never copies image data a second time.

Columns:
    sample_id: unique name of the sample.
    origin: ``"real"`` or ``"synthetic"``.
    image_file, label_file: paths relative to the table's folder. A real sample
        points at a prepared image (PNG) and instance map (TIFF); a synthetic
        one at a shard ``.npz`` holding arrays ``images`` and ``instances``.
    index: row in the shard arrays (synthetic), -1 for real samples.
    y, x, size: the square crop to take (synthetic: 0, 0 and the full size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_image, read_instance_map
from nudiff.io.tables import read_table

SAMPLE_COLUMNS = ["sample_id", "origin", "image_file", "label_file", "index", "y", "x", "size"]

# Names of the arrays inside a synthetic shard file.
SHARD_IMAGES = "images"
SHARD_INSTANCES = "instances"


def real_samples(patches: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Sample rows for patches of prepared images, with absolute file paths.

    Args:
        patches: rows of a patch index (``image``, ``y``, ``x``, ``size``, ``patch_id``).
        manifest: the prepared dataset's manifest with resolved ``image``/``label`` paths.
    """
    by_name = manifest.set_index("name")
    unknown = sorted(set(patches["image"]) - set(by_name.index))
    if unknown:
        raise InputDataError(f"patches refer to images missing from the manifest: {unknown[:5]}")
    return pd.DataFrame(
        {
            "sample_id": patches["patch_id"].to_numpy(),
            "origin": "real",
            "image_file": [str(by_name.at[name, "image"]) for name in patches["image"]],
            "label_file": [str(by_name.at[name, "label"]) for name in patches["image"]],
            "index": -1,
            "y": patches["y"].to_numpy(),
            "x": patches["x"].to_numpy(),
            "size": patches["size"].to_numpy(),
        }
    )


def synthetic_samples(shard_file: str | Path, n: int, size: int, *, prefix: str) -> pd.DataFrame:
    """Sample rows for the ``n`` pairs stored in one synthetic shard file."""
    return pd.DataFrame(
        {
            "sample_id": [f"{prefix}_{i:05d}" for i in range(n)],
            "origin": "synthetic",
            "image_file": str(shard_file),
            "label_file": str(shard_file),
            "index": np.arange(n),
            "y": 0,
            "x": 0,
            "size": size,
        }
    )


def write_sample_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write a sample table, storing paths relative to the table's folder."""
    path = Path(path)
    base = path.parent.resolve()
    out = table[SAMPLE_COLUMNS].copy()
    for column in ("image_file", "label_file"):
        out[column] = [os.path.relpath(Path(p).resolve(), base) for p in out[column]]
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)


def read_sample_table(path: str | Path) -> pd.DataFrame:
    """Read a sample table and resolve its paths to absolute ones."""
    path = Path(path)
    table = read_table(path, required=SAMPLE_COLUMNS, what="sample table")
    base = path.parent.resolve()
    for column in ("image_file", "label_file"):
        table[column] = [str((base / p).resolve()) for p in table[column]]
    return table


class SampleReader:
    """Random access to the (image, instance map) pairs of a sample table.

    Source files are read once and kept in memory: a training set refers to
    few files (prepared images, shard files) many times over.

    ``reader[i]`` returns ``(rgb, inst)`` with shapes ``(S, S, 3)`` uint8 and
    ``(S, S)`` int32.
    """

    def __init__(self, table: pd.DataFrame) -> None:
        missing = [c for c in SAMPLE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"sample table lacks columns {missing}")
        self.table = table.reset_index(drop=True)
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.table.iloc[i]
        y, x, s = int(row["y"]), int(row["x"]), int(row["size"])
        if row["origin"] == "synthetic":
            images, labels = self._shard(row["image_file"])
            k = int(row["index"])
            rgb, inst = images[k], labels[k]
        else:
            rgb = self._cached(self._images, row["image_file"], read_image)
            inst = self._cached(self._labels, row["label_file"], read_instance_map)
        rgb, inst = rgb[y : y + s, x : x + s], inst[y : y + s, x : x + s]
        if rgb.shape[:2] != (s, s) or inst.shape != (s, s):
            raise InputDataError(f"sample {row['sample_id']}: crop ({y}, {x}, {s}) exceeds {row['image_file']}")
        return rgb, inst.astype(np.int32, copy=False)

    def load_all(self, indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stack samples into arrays ``(N, S, S, 3)`` uint8 and ``(N, S, S)`` int32."""
        indices = range(len(self)) if indices is None else indices
        pairs = [self[i] for i in indices]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    @staticmethod
    def _cached(cache: dict[str, np.ndarray], path: str, read) -> np.ndarray:
        if path not in cache:
            cache[path] = read(path)
        return cache[path]

    def _shard(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if path not in self._images:
            try:
                with np.load(path) as shard:
                    self._images[path] = shard[SHARD_IMAGES]
                    self._labels[path] = shard[SHARD_INSTANCES]
            except (OSError, KeyError, ValueError) as err:
                raise InputDataError(f"cannot read synthetic shard {path}: {err}") from err
        return self._images[path], self._labels[path]


def real_pairs(table_csv: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The (RGB, instance map) pairs of a sample table's real rows, in table order, as two lists."""
    table = read_sample_table(table_csv)
    table = table[table["origin"] == "real"].reset_index(drop=True)
    if table.empty:
        raise InputDataError(f"sample table {table_csv} holds no real patch")
    reader = SampleReader(table)
    pairs = [reader[i] for i in range(len(reader))]
    return [p[0] for p in pairs], [p[1] for p in pairs]
