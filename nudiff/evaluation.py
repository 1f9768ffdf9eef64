"""Scoring the test images' segmentations (spec section 6).

Three steps, one rule each: :func:`nudiff.segmentation.segment_images.segment_test_images`
writes one instance map per test image of a prepared dataset; :func:`score_predictions` scores
them per image (Dice, AJI, AJI+, DQ, SQ,
PQ as HoVer-Net's ``compute_stats``, :mod:`nudiff.metrics`); :func:`summarize_metrics` averages
each run over its test images (the paper's numbers are such per-image means). This module
imports no torch, so the scoring jobs start in about a second.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nudiff.datasets.prepare import read_manifest
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_instance_map
from nudiff.io.tables import read_table
from nudiff.metrics import compute_all

logger = logging.getLogger(__name__)

METRICS = ["dice", "aji", "aji_plus", "dq", "sq", "pq"]
COUNTS = ["n_true", "n_pred"]
RUN_KEYS = ["model", "trainset", "seed"]
TEST_SPLIT = "test"


def read_test_images(prepared_dir: str | Path) -> pd.DataFrame:
    """The manifest rows of a prepared dataset's test images (InputDataError when there is none)."""
    manifest = read_manifest(Path(prepared_dir) / "manifest.csv")
    test = manifest[manifest["split"] == TEST_SPLIT]
    if test.empty:
        raise InputDataError(f"{Path(prepared_dir) / 'manifest.csv'}: no image in split {TEST_SPLIT!r}")
    return test


def _n_instances(inst: np.ndarray) -> int:
    ids = np.unique(inst)
    return int(np.count_nonzero(ids))


def score_predictions(
    prepared_dir: str | Path,
    predictions_dir: str | Path,
    out_csv: str | Path,
    *,
    labels: Mapping[str, Any],
) -> pd.DataFrame:
    """Rule ``score_predictions``: per-image scores of one run's test predictions.

    Args:
        prepared_dir: the prepared dataset with the true instance maps of the test images.
        predictions_dir: ``<name>.tif`` per test image (:func:`segment_test_images`).
        out_csv: one row per test image: ``name``, the ``labels`` columns, the metrics
            :data:`METRICS`, ``n_true``, ``n_pred``.
        labels: constant columns naming the run, e.g. ``dataset, subset, model, trainset, seed``.

    Raises:
        InputDataError: a prediction is missing (every missing file is named; nothing is
            written) or has another size than its true map.
    """
    clash = sorted(set(labels) & {"name", *METRICS, *COUNTS})
    if clash:
        raise ValueError(f"labels may not use the column names {clash}")
    test = read_test_images(prepared_dir)
    predictions = {name: Path(predictions_dir) / f"{name}.tif" for name in test["name"]}
    missing = [str(p) for p in predictions.values() if not p.is_file()]
    if missing:
        raise InputDataError(f"{len(missing)} prediction(s) missing: {', '.join(missing)}")
    rows = []
    for item in test.itertuples():
        true = read_instance_map(item.label)
        pred = read_instance_map(predictions[item.name])
        if pred.shape != true.shape:
            raise InputDataError(
                f"{predictions[item.name]}: prediction is {pred.shape}, but the true map {item.label} is {true.shape}"
            )
        scores = compute_all(true, pred)
        rows.append({"name": item.name, **labels, **scores, "n_true": _n_instances(true), "n_pred": _n_instances(pred)})
    table = pd.DataFrame(rows, columns=["name", *labels, *METRICS, *COUNTS])
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    logger.info(
        "%s: %d test images, mean dice %.4f aji %.4f", out_csv, len(table), table["dice"].mean(), table["aji"].mean()
    )
    return table


def summarize_metrics(
    per_image_csvs: Sequence[str | Path],
    out_metrics_csv: str | Path,
    out_per_image_csv: str | Path,
) -> pd.DataFrame:
    """Rule ``summarize_metrics``: the mean over test images of every metric, per run.

    Args:
        per_image_csvs: tables from :func:`score_predictions`, all with the same columns,
            including the run keys ``model, trainset, seed``.
        out_metrics_csv: one row per run (the label columns, e.g. ``dataset, subset, model,
            trainset, seed``), the mean of each of :data:`METRICS` and ``n_images``.
        out_per_image_csv: every per-image row, concatenated.

    Raises:
        InputDataError: a file is missing, lacks columns, or an image is scored twice in a run.
    """
    if not per_image_csvs:
        raise ValueError("per_image_csvs is empty: nothing to summarise")
    tables, columns = [], None
    for path in map(Path, per_image_csvs):
        table = read_table(path, required=["name", *RUN_KEYS, *METRICS], what="per-image scores", dtype={"name": str})
        if columns is not None and list(table.columns) != columns:
            raise InputDataError(f"{path} has columns {list(table.columns)}, {per_image_csvs[0]} has {columns}")
        columns = list(table.columns)
        tables.append(table)
    per_image = pd.concat(tables, ignore_index=True)
    keys = [c for c in per_image.columns if c not in {"name", *METRICS, *COUNTS}]
    duplicated = per_image.duplicated([*keys, "name"])
    if duplicated.any():
        raise InputDataError(
            f"images scored twice for one run: {per_image.loc[duplicated, [*keys, 'name']].to_dict('records')[:3]}"
        )
    grouped = per_image.groupby(keys, sort=True, dropna=False)
    summary = grouped[METRICS].mean().join(grouped.size().rename("n_images")).reset_index()
    with atomic_path(out_metrics_csv) as tmp_metrics, atomic_path(out_per_image_csv) as tmp_rows:
        summary.to_csv(tmp_metrics, index=False)
        per_image.to_csv(tmp_rows, index=False)
    logger.info("%d runs over %d per-image rows -> %s", len(summary), len(per_image), out_metrics_csv)
    return summary
