"""Do synthetic images show the nuclei their instance maps claim? A segmenter decides.

The colour measure of :mod:`nudiff.diffusion.quality_measures` thresholds stain darkness; this
one asks a segmenter trained on the *real* labelled subset only (the ``labelled`` Hover-Net of
the segmentation stage, which never saw a synthetic pair) to segment each synthetic image, and
scores its instances against the pair's instance map with the test metrics (Dice, AJI, PQ of
:func:`nudiff.metrics.compute_all`). Two levels frame the number:

* the same segmenter on the subset's real validation patches (held out of everything the
  generator and the judge trained on; never the test images): what agreement looks like when
  image and map truly belong together, on patches of the pairs' size;
* each synthetic image against the map of another pair: agreement by chance.

A good image model puts the synthetic pairs near the first level and far above the second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nudiff.diffusion.quality import read_shards
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.metrics import compute_all
from nudiff.samples import SampleReader, read_sample_table
from nudiff.segmentation.hovernet.inference import predict_instances
from nudiff.segmentation.hovernet.train import load_hovernet

logger = logging.getLogger(__name__)

PathLike = str | Path
SCORES = ["dice", "aji", "pq"]
REAL = "real validation patches"
SYNTHETIC = "synthetic pairs"
CHANCE = "synthetic images, maps of other pairs"


def _summary(name: str, table: pd.DataFrame) -> dict[str, Any]:
    row: dict[str, Any] = {"set": name, "n": len(table)}
    for score in SCORES:
        row[f"{score}_mean"] = float(table[score].mean())
        row[f"{score}_median"] = float(table[score].median())
    return row


def score_against_maps(predictions: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> pd.DataFrame:
    """One row per pair: :data:`SCORES` of ``predictions[i]`` against the true ``maps[i]``,
    with ``n_true`` and ``n_pred`` nuclei."""
    if len(predictions) != len(maps):
        raise ValueError(f"{len(predictions)} predictions but {len(maps)} maps")
    rows = []
    for i, (pred, true) in enumerate(zip(predictions, maps)):
        scores = compute_all(true, pred)
        rows.append(
            {
                "pair": i,
                **{score: scores[score] for score in SCORES},
                "n_true": len(np.unique(true[true > 0])),
                "n_pred": len(np.unique(pred[pred > 0])),
            }
        )
    return pd.DataFrame(rows, columns=["pair", *SCORES, "n_true", "n_pred"])


def judge_images(
    segmenter: torch.nn.Module,
    meta: Mapping[str, Any],
    images: np.ndarray,
    maps: Sequence[np.ndarray],
    *,
    watershed: Mapping[str, Any] | None,
    device: str,
) -> pd.DataFrame:
    """Segment each image with the labelled Hover-Net and score it against its map (Dice, AJI, PQ)."""
    ws = dict(meta["training"].get("watershed", {}) if watershed is None else watershed)
    tile = int(meta["input_size"])
    predictions = [predict_instances(segmenter, rgb, tile=tile, watershed=ws, device=device) for rgb in images]
    return score_against_maps(predictions, list(maps))


def judge_real_patches(
    segmenter: torch.nn.Module,
    meta: Mapping[str, Any],
    validation_samples: PathLike,
    *,
    watershed: Mapping[str, Any] | None,
    device: str,
) -> pd.DataFrame:
    """The judge on the real validation patches (a sample table), scored against their maps:
    the real level the synthetic pairs are compared with."""
    table = read_sample_table(validation_samples)
    if table.empty:
        raise InputDataError(f"{validation_samples}: no validation patch")
    images, maps = SampleReader(table).load_all()
    return judge_images(segmenter, meta, images, list(maps), watershed=watershed, device=device)


def segment_synthetic_pairs(
    model_file: PathLike,
    pair_shards: Sequence[PathLike],
    validation_samples: PathLike,
    *,
    out_csv: PathLike,
    out_per_pair_csv: PathLike,
    watershed: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Rule ``segment_synthetic_pairs``: the segmenter's agreement with each synthetic pair.

    Args:
        model_file: a Hover-Net trained on the labelled subset
            (:func:`nudiff.segmentation.registry.train_segmenter`).
        pair_shards: synthetic pairs shard files (``images``, ``instances``).
        validation_samples: the subset's real validation patches (a sample table,
            :mod:`nudiff.holdout`): the same model on them is the real reference level.
        out_csv: one row per set (real validation patches, synthetic pairs, and with two pairs or
            more the chance level): ``n`` and the mean and median of each score.
        out_per_pair_csv: one row per synthetic pair (index in shard order) with its scores
            and nuclei counts.
        watershed: ``instances_from_structure`` arguments; default those the model was
            validated with.

    Returns:
        The summary table as written. Nothing is written unless everything was computed.
    """
    shards = read_shards(pair_shards, ("images", "instances"), "pair_shards")
    images, maps = shards["images"], shards["instances"]
    if len(images) == 0:
        raise InputDataError(f"pair_shards hold no synthetic pair: {list(map(str, pair_shards))}")
    model, meta = load_hovernet(model_file, device)
    watershed = dict(meta["training"].get("watershed", {}) if watershed is None else watershed)
    tile = int(meta["input_size"])
    reference = judge_real_patches(model, meta, validation_samples, watershed=watershed, device=device)

    predictions, start = [], time.perf_counter()
    for i, rgb in enumerate(images, start=1):
        predictions.append(
            predict_instances(model, rgb, tile=tile, watershed=watershed, batch_size=batch_size, device=device)
        )
        if i % 50 == 0 or i == len(images):
            logger.info(
                "segmented %d/%d synthetic images (%.2f s each)", i, len(images), (time.perf_counter() - start) / i
            )
    per_pair = score_against_maps(predictions, maps)
    rows = [_summary(REAL, reference), _summary(SYNTHETIC, per_pair)]
    if len(images) > 1:
        # each image against the previous pair's map: how much agreement chance gives
        rows.append(_summary(CHANCE, score_against_maps(predictions, np.roll(maps, 1, axis=0))))
    summary = pd.DataFrame(rows)
    for row in summary.itertuples():
        logger.info(
            "%s (n=%d): dice %.3f, aji %.3f, pq %.3f (means)", row.set, row.n, row.dice_mean, row.aji_mean, row.pq_mean
        )
    # both files appear together or not at all
    with atomic_path(out_per_pair_csv) as per_pair_tmp, atomic_path(out_csv) as summary_tmp:
        per_pair.to_csv(per_pair_tmp, index=False)
        summary.to_csv(summary_tmp, index=False)
    return summary
