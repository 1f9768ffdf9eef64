"""Which weights of the trained image model to sample: agreement with the labels and realistic colour.

Images are sampled conditioned on the structures of real labelled patches. Two measures:

* **agreement**: the Hover-Net trained on the labelled subset segments them; the mean AJI of
  its instances against the conditioning maps (an image that shows the nuclei its structure
  asks for is segmented like one);
* **colour**: the mean KS statistic between the per-patch CIELAB statistics of the images and
  of all real labelled patches (:func:`nudiff.diffusion.quality.colour_distance`).

Score (higher is better): ``aji - colour_ks``, both in [0, 1] and weighted alike. (A product,
``aji * (1 - colour_ks)``, would score every candidate 0 when none has a real colour, and then
the agreement could no longer choose.) Agreement alone chose, on real MoNuSeg at CPU scale, raw weights whose
images had pale cyan or yellow backgrounds (CIELAB a* 3 against the real 28) while the EMA
weights drew pink-purple tissue: the segmenter found the nuclei on either, and a segmenter
trained on the pale ones learns from a stain no test slide has. The candidates and the written
choice are those of :mod:`nudiff.diffusion.selection`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from nudiff.assessment.segmenter_agreement import judge_images
from nudiff.diffusion.colour_transfer import real_colours
from nudiff.diffusion.quality import colour_distance, colour_statistics
from nudiff.diffusion.selection import (
    Candidate,
    conditioning_maps,
    keep_best,
    sample_conditioned_images,
    weight_candidates,
)
from nudiff.diffusion.synthesis import SamplingSettings
from nudiff.diffusion.training import load_diffusion_model
from nudiff.segmentation.hovernet.train import load_hovernet

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
    """Rule ``select_image_weights``: score every candidate by agreement and colour.

    Each candidate draws an image for each of ``n`` real label maps (same maps, same noise
    seeds of stream ``select_image``). Writes one row per candidate (``candidate``,
    ``weights``, ``step``, the segmenter's mean ``dice``, ``aji``, ``pq`` against those maps,
    ``colour_ks`` and ``score`` = ``aji - colour_ks``, highest chosen) and the JSON of
    the chosen one.
    """
    maps = conditioning_maps(labelled_csv, n)
    real_colour = real_colours(labelled_csv)
    segmenter, meta = load_hovernet(segmenter_path, device)
    rows = []
    for candidate in weight_candidates(model_path):
        t0 = time.monotonic()
        model, schedule, _ = load_diffusion_model(
            model_path, device=device, expect="image", weights=candidate.weights, step=candidate.step
        )
        images = sample_conditioned_images(model, schedule, maps, sampling, device=device, stream="select_image")
        scores = judge_images(segmenter, meta, images, maps, watershed=watershed, device=device)
        row = {
            "candidate": candidate.name,
            "weights": candidate.weights,
            "step": candidate.step,
            **{k: float(scores[k].mean()) for k in ("dice", "aji", "pq")},
            "colour_ks": colour_distance(real_colour, colour_statistics(images))["colour_ks"],
        }
        row["score"] = row["aji"] - row["colour_ks"]
        rows.append(row)
        logger.info(
            "image weights %s: segmenter agreement dice %.3f aji %.3f, colour KS %.3f, score %.3f (%d images, %.0f s)",
            candidate.name,
            row["dice"],
            row["aji"],
            row["colour_ks"],
            row["score"],
            len(maps),
            time.monotonic() - t0,
        )
    return keep_best(
        pd.DataFrame(rows), "score", higher_is_better=True, what="image", out_csv=out_csv, out_json=out_json
    )
