"""The validation split of a labelled subset: whole source images held out before anything trains.

Every model downstream of a subset sees only its training part: the diffusion models, the choice
of their weights, the sampling and cleanup settings, and the segmenters' training batches. The
validation part is shared by every segmenter arm and seed (it picks their weights) and measures
the synthetic pairs' quality against real patches; the test images are never part of it.

Real patches are cut with overlap (paper: 256 px, stride 128), so a random patch split would
score a network on pixels it was trained on; the split therefore holds out whole source images.
Synthetic samples have no source image and always train.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.errors import ConfigError, InputDataError
from nudiff.samples import read_sample_table, write_sample_table

logger = logging.getLogger(__name__)


def _overlaps(a: pd.Series, b: pd.DataFrame) -> np.ndarray:
    """Which crops of ``b`` (columns y, x, size) share a pixel with crop ``a``."""
    return (
        (b["y"] < a["y"] + a["size"])
        & (a["y"] < b["y"] + b["size"])
        & (b["x"] < a["x"] + a["size"])
        & (a["x"] < b["x"] + b["size"])
    ).to_numpy()


def split_validation(table: pd.DataFrame, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a sample table into training and validation rows.

    * two or more real source images (``image_file`` of the ``origin == "real"`` rows): hold out
      ``round(val_fraction * n_sources)`` whole source images, at least 1 and at most
      ``n_sources - 1``, drawn with ``seed``; all their patches validate, the rest train;
    * one source image: hold out ``max(1, round(val_fraction * n_patches))`` of its patches, the
      ones nearest (by top-left corner) to a patch drawn with ``seed``, so they form one compact
      block; training patches that overlap any held-out patch are dropped (unused), so no pixel
      is on both sides;
    * ``val_fraction == 0`` or no real sample: no validation rows.

    Synthetic rows always train.

    Args:
        table: a sample table (:mod:`nudiff.samples`: ``origin``, ``image_file``, ``y``, ``x``, ``size``).
        val_fraction: share of source images (or of the single image's patches) held out, in [0, 1).
        seed: seeds the draw.

    Returns:
        ``(train_rows, val_rows)``: sorted integer positions into ``table``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    table = table.reset_index(drop=True)
    real = table["origin"] == "real"
    everything = np.arange(len(table))
    if val_fraction == 0 or not real.any():
        return everything, everything[:0]
    rng = np.random.default_rng(seed)
    sources = sorted(table.loc[real, "image_file"].unique())
    if len(sources) >= 2:
        n_val = min(max(1, round(val_fraction * len(sources))), len(sources) - 1)
        held = set(rng.choice(sources, size=n_val, replace=False).tolist())
        val = real & table["image_file"].isin(held)
        logger.info(
            "validation: %d of %d source images (%d patches): %s",
            n_val,
            len(sources),
            int(val.sum()),
            ", ".join(sorted(held)),
        )
        return everything[~val.to_numpy()], everything[val.to_numpy()]
    patches = table[real]
    n_val = max(1, round(val_fraction * len(patches)))
    anchor = patches.iloc[int(rng.integers(len(patches)))]
    distance = np.hypot(patches["y"] - anchor["y"], patches["x"] - anchor["x"]).to_numpy()
    val_rows = patches.index.to_numpy()[np.argsort(distance, kind="stable")[:n_val]]
    val_set = set(val_rows.tolist())
    blocked = np.zeros(len(table), dtype=bool)
    for row in val_rows:
        blocked |= real.to_numpy() & _overlaps(table.loc[row], table)
    train_rows = np.array([i for i in everything if i not in val_set and not blocked[i]], dtype=np.int64)
    logger.info(
        "validation: one source image; %d of its %d patches held out, %d overlapping ones dropped",
        n_val,
        len(patches),
        int(blocked.sum()) - n_val,
    )
    return train_rows, np.sort(val_rows)


def hold_out_validation(
    labelled_csv: str | Path,
    train_csv: str | Path,
    validation_csv: str | Path,
    *,
    fraction: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule ``hold_out_validation``: split a labelled subset into its training and validation parts.

    Args:
        labelled_csv: the subset's sample table (real patches only).
        train_csv, validation_csv: the two parts, written as sample tables.
        fraction: share of the subset's source images held out (config ``validation.fraction``).
        seed: seeds the draw (config ``validation.seed``).

    Returns:
        ``(train, validation)`` tables as written.

    Raises:
        ConfigError: ``fraction`` outside (0, 1).
        InputDataError: the subset holds synthetic rows, or too few patches to split.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation.fraction must be in (0, 1), got {fraction!r}")
    table = read_sample_table(labelled_csv)
    if (table["origin"] != "real").any():
        raise InputDataError(f"{labelled_csv}: a labelled subset holds real patches only")
    if len(table) < 2:
        raise InputDataError(f"{labelled_csv}: {len(table)} patch(es), too few to hold out validation images")
    train_rows, val_rows = split_validation(table, val_fraction=fraction, seed=seed)
    if not len(train_rows) or not len(val_rows):
        raise InputDataError(f"{labelled_csv}: validation.fraction {fraction} leaves an empty part")
    train, validation = table.iloc[train_rows], table.iloc[val_rows]
    write_sample_table(train, train_csv)
    write_sample_table(validation, validation_csv)
    logger.info(
        "%s: %d training and %d validation patches (%d and %d source images)",
        labelled_csv,
        len(train),
        len(validation),
        train["image_file"].nunique(),
        validation["image_file"].nunique(),
    )
    return train, validation
