"""Segmenting the test images and scoring them (spec section 6).

Three steps, one rule each: :func:`segment_test_images` writes one instance map per test image
of a prepared dataset; :func:`score_predictions` scores them per image (Dice, AJI, AJI+, DQ, SQ,
PQ as HoVer-Net's ``compute_stats``, :mod:`nudiff.metrics`); :func:`summarize_metrics` averages
each run over its test images (the paper's numbers are such per-image means).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nudiff.datasets.prepare import read_manifest
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_image, read_instance_map, write_instance_map
from nudiff.io.tables import read_table
from nudiff.metrics import compute_all
from nudiff.segmentation.hovernet import HoVerNet
from nudiff.segmentation.inference import predict_structure
from nudiff.segmentation.train import load_any_segmenter
from nudiff.structure import instances_from_structure

logger = logging.getLogger(__name__)

METRICS = ["dice", "aji", "aji_plus", "dq", "sq", "pq"]
COUNTS = ["n_true", "n_pred"]
RUN_KEYS = ["model", "trainset", "seed"]
TEST_SPLIT = "test"


def _test_images(prepared_dir: str | Path) -> pd.DataFrame:
    manifest = read_manifest(Path(prepared_dir) / "manifest.csv")
    test = manifest[manifest["split"] == TEST_SPLIT]
    if test.empty:
        raise InputDataError(f"{Path(prepared_dir) / 'manifest.csv'}: no image in split {TEST_SPLIT!r}")
    return test


def _n_instances(inst: np.ndarray) -> int:
    ids = np.unique(inst)
    return int(np.count_nonzero(ids))


Predictor = Callable[[np.ndarray], tuple[np.ndarray, float, float]]  # rgb -> (inst, inference s, post s)


def hovernet_predictor(
    model: HoVerNet,
    meta: Mapping[str, Any],
    *,
    tile: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    watershed: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> Predictor:
    """Hover-Net on whole images by overlapping tiles, then the marker-controlled watershed.

    Args:
        tile: inference tile side (default: the model's training patch size); margin: see
            :func:`nudiff.segmentation.inference.predict_structure`; batch_size: tiles per pass.
        watershed: ``instances_from_structure`` arguments; default those the model was validated with.
    """
    tile = int(meta["input_size"]) if tile is None else tile
    watershed = dict(meta["training"].get("watershed", {}) if watershed is None else watershed)
    logger.info("Hover-Net on tiles of %d px", tile)

    def predict(rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        tic = time.perf_counter()
        structure = predict_structure(model, rgb, tile=tile, margin=margin, batch_size=batch_size, device=device)
        toc = time.perf_counter()
        inst = instances_from_structure(structure, **watershed)
        return inst, toc - tic, time.perf_counter() - toc

    return predict


def pffnet_predictor(
    model: nn.Module, meta: Mapping[str, Any], *, device: str | torch.device = "cpu", **inference
) -> Predictor:
    """PFF-Net on the whole image in one pass, then its ranking, pasting and overlap removal
    (:func:`nudiff.segmentation.pffnet_inference.predict_pffnet_instances` arguments)."""
    from nudiff.segmentation.pffnet_inference import predict_pffnet_instances

    def predict(rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        timing: dict[str, float] = {}
        inst = predict_pffnet_instances(model, rgb, device=device, timing=timing, **inference)
        return inst, timing["network_s"], timing["postprocess_s"]

    return predict


def segment_test_images(
    model_file: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    watershed: Mapping[str, Any] | None = None,
    **inference: Any,
) -> pd.DataFrame:
    """Rule ``segment_test_images``: ``out_dir/<name>.tif`` (int32 instance map) per test image.

    The folder is written whole or not at all (:func:`nudiff.io.atomic.atomic_path`).

    Args:
        model_file: from :func:`nudiff.segmentation.train.train_segmenter` (Hover-Net or PFF-Net).
        prepared_dir: a prepared dataset (its ``manifest.csv``); every ``split == "test"`` image.
        watershed: Hover-Net's ``instances_from_structure`` arguments (ignored for PFF-Net).
        inference: the model's inference settings (:func:`hovernet_predictor`'s ``tile``,
            ``margin``, ``batch_size``; or PFF-Net's, see :func:`pffnet_predictor`).

    Returns:
        One row per image: ``name, height, width, n_pred, inference_s, postprocess_s``.
    """
    model, meta = load_any_segmenter(model_file, device)
    if meta["model"] == "pffnet":
        predict = pffnet_predictor(model, meta, device=device, **inference)
    else:
        predict = hovernet_predictor(model, meta, watershed=watershed, device=device, **inference)
    test = _test_images(prepared_dir)
    rows = []
    with atomic_path(out_dir, directory=True) as tmp:
        for i, item in enumerate(test.itertuples(), start=1):
            rgb = read_image(item.image)
            inst, inference_s, postprocess_s = predict(rgb)
            write_instance_map(tmp / f"{item.name}.tif", inst)
            rows.append(
                {
                    "name": item.name,
                    "height": rgb.shape[0],
                    "width": rgb.shape[1],
                    "n_pred": int(inst.max()),
                    "inference_s": inference_s,
                    "postprocess_s": postprocess_s,
                }
            )
            logger.info(
                "%d/%d %s (%dx%d): %d nuclei; inference %.2f s, post-processing %.2f s",
                i,
                len(test),
                item.name,
                rgb.shape[0],
                rgb.shape[1],
                rows[-1]["n_pred"],
                inference_s,
                postprocess_s,
            )
    timings = pd.DataFrame(rows)
    logger.info(
        "segmented %d test images with %s: %.2f s inference + %.2f s post-processing per image",
        len(timings),
        model_file,
        timings["inference_s"].mean(),
        timings["postprocess_s"].mean(),
    )
    return timings


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
    test = _test_images(prepared_dir)
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
