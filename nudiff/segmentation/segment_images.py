"""Rule ``segment_test_images``: a trained segmenter applied to every test image of a dataset.

Each model segments an image its own way (its registry entry's ``predictor``: Hover-Net by
overlapping tiles and the marker-controlled watershed, PFF-Net in one pass over the whole
image). The instance maps are scored by :mod:`nudiff.evaluation`, which stays free of torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nudiff.evaluation import read_test_images
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_image, write_instance_map
from nudiff.segmentation.registry import load_segmenter, segmenter_of

logger = logging.getLogger(__name__)


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
        model_file: from :func:`nudiff.segmentation.registry.train_segmenter` (any registered model).
        prepared_dir: a prepared dataset (its ``manifest.csv``); every ``split == "test"`` image.
        watershed: Hover-Net's ``instances_from_structure`` arguments (ignored for PFF-Net).
        inference: the model's inference settings (its registry entry's ``predictor``: Hover-Net's
            ``tile``, ``margin``, ``batch_size``; PFF-Net's ``predict_pffnet_instances`` arguments).

    Returns:
        One row per image: ``name, height, width, n_pred, inference_s, postprocess_s``.
    """
    model, meta = load_segmenter(model_file, device)
    predict = segmenter_of(meta["model"]).predictor(model, meta, watershed=watershed, device=device, **inference)
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
