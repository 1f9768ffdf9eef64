"""Rule ``segment_test_images``: a trained segmenter applied to every test image of a dataset.

Hover-Net runs by overlapping tiles and the marker-controlled watershed; PFF-Net in one pass
over the whole image. The instance maps are scored by :mod:`nudiff.evaluation`, which stays
free of torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nudiff.evaluation import read_test_images
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_image, write_instance_map
from nudiff.segmentation.hovernet import HoVerNet
from nudiff.segmentation.inference import predict_structure
from nudiff.segmentation.train import load_any_segmenter
from nudiff.structure import instances_from_structure

logger = logging.getLogger(__name__)


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
    test = read_test_images(prepared_dir)
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
