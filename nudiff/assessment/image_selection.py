"""Which weights of the trained image model to sample: chosen by the labelled Hover-Net.

Images are sampled conditioned on the structures of real labelled patches, and the Hover-Net
trained on the labelled subset segments them. Score: mean AJI of its instances against the
conditioning maps (higher is better): an image that shows the nuclei its structure asks for is
segmented like one. The candidates and the written choice are those of
:mod:`nudiff.diffusion.selection`, which chooses the structure model's weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from nudiff.assessment.segmenter_agreement import judge_images
from nudiff.diffusion.selection import (
    Candidate,
    conditioning_maps,
    keep_best,
    sample_conditioned_images,
    weight_candidates,
)
from nudiff.diffusion.synthesis import SamplingSettings
from nudiff.diffusion.training import load_diffusion_model
from nudiff.segmentation.train import load_segmenter

logger = logging.getLogger(__name__)

PathLike = str | Path


def select_image_weights(
    model_path: PathLike,
    labelled_csv: PathLike,
    segmenter_path: PathLike,
    *,
    out_csv: PathLike,
    out_json: PathLike,
    n: int,
    sampling: SamplingSettings,
    watershed: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> Candidate:
    """Rule ``select_image_weights``: score every candidate by the labelled Hover-Net's agreement.

    Each candidate draws an image for each of ``n`` real label maps (same maps, same noise
    seeds of stream ``select_image``); the segmenter's mean AJI against those maps is the
    score (highest chosen). Writes one row per candidate (``candidate``, ``weights``,
    ``step``, ``dice``, ``aji``, ``pq``) and the JSON of the chosen one.
    """
    maps = conditioning_maps(labelled_csv, n)
    segmenter, meta = load_segmenter(segmenter_path, device)
    rows = []
    for candidate in weight_candidates(model_path):
        t0 = time.monotonic()
        model, schedule, _ = load_diffusion_model(
            model_path, device=device, expect="image", weights=candidate.weights, step=candidate.step
        )
        images = sample_conditioned_images(model, schedule, maps, sampling, device=device, stream="select_image")
        scores = judge_images(segmenter, meta, images, maps, watershed=watershed, device=device)
        rows.append(
            {
                "candidate": candidate.name,
                "weights": candidate.weights,
                "step": candidate.step,
                **{k: float(scores[k].mean()) for k in ("dice", "aji", "pq")},
            }
        )
        logger.info(
            "image weights %s: segmenter agreement dice %.3f aji %.3f (%d images, %.0f s)",
            candidate.name,
            rows[-1]["dice"],
            rows[-1]["aji"],
            len(maps),
            time.monotonic() - t0,
        )
    return keep_best(pd.DataFrame(rows), "aji", higher_is_better=True, what="image", out_csv=out_csv, out_json=out_json)
