"""How strong should classifier-free guidance be? A sweep judged by the labelled segmenter.

For each guidance scale w (eq. 6), images are sampled for the first ``n`` synthetic pairs'
labels (each conditioned on its label's own structure, the same noise for every w), and the
Hover-Net trained on the labelled subset segments them. Mean Dice / AJI / PQ against the
labels say how well images at that w show the nuclei their labels claim; the same segmenter
on the real validation patches (true pairs) and the sampled images against other pairs' labels
(chance) frame the numbers. A grid shows the images of each w side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nudiff.assessment.segmenter_agreement import CHANCE, REAL, SCORES, SYNTHETIC, judge_images, judge_real_patches
from nudiff.diffusion.quality import read_shards
from nudiff.diffusion.selection import sample_conditioned_images
from nudiff.diffusion.synthesis import SamplingSettings, chosen_weights
from nudiff.diffusion.training import load_diffusion_model
from nudiff.errors import InputDataError
from nudiff.figures import image_grid, render_structure
from nudiff.io.atomic import atomic_path
from nudiff.segmentation.hovernet.train import load_hovernet
from nudiff.structure import nuclei_structure

logger = logging.getLogger(__name__)

PathLike = str | Path
COLUMNS = ["guidance_scale", "set", "n", *(f"{s}_mean" for s in SCORES)]


def guidance_sweep(
    model_path: PathLike,
    pair_shards: Sequence[PathLike],
    segmenter_path: PathLike,
    validation_samples: PathLike,
    *,
    scales: Sequence[float],
    n: int,
    sampling: SamplingSettings,
    out_csv: PathLike,
    out_png: PathLike,
    selection: PathLike | None = None,
    watershed: Mapping[str, Any] | None = None,
    device: str = "cpu",
    n_shown: int = 6,
) -> pd.DataFrame:
    """Rule ``guidance_sweep``: segmenter agreement of images sampled at each guidance scale.

    Returns (and writes) one row per scale and set (synthetic pairs, chance) plus one row of
    the real validation patches (``validation_samples``, a sample table; never the test
    images), with ``n`` and the mean of each score.
    """
    if not scales or any(not w >= 0 or not np.isfinite(w) for w in scales):
        raise ValueError(f"scales must be a non-empty list of numbers >= 0, got {list(scales)}")
    maps = read_shards(pair_shards, ("instances",), "pair_shards")["instances"][:n]
    if len(maps) < 2:
        raise InputDataError(f"the guidance sweep needs at least 2 synthetic pairs, the shards hold {len(maps)}")
    model, schedule, _ = load_diffusion_model(model_path, device=device, expect="image", **chosen_weights(selection))
    segmenter, meta = load_hovernet(segmenter_path, device)
    reference = judge_real_patches(segmenter, meta, validation_samples, watershed=watershed, device=device)
    rows = [{"guidance_scale": np.nan, "set": REAL, "n": len(reference), **_means(reference)}]
    grid = [[render_structure(nuclei_structure(m)) for m in maps[:n_shown]]]
    names = ["label structure"]
    for w in scales:
        images = sample_conditioned_images(
            model, schedule, list(maps), replace(sampling, guidance_scale=float(w)), device=device, stream="sweep_image"
        )
        paired = judge_images(segmenter, meta, images, maps, watershed=watershed, device=device)
        chance = judge_images(segmenter, meta, images, np.roll(maps, 1, axis=0), watershed=watershed, device=device)
        rows.append({"guidance_scale": w, "set": SYNTHETIC, "n": len(maps), **_means(paired)})
        rows.append({"guidance_scale": w, "set": CHANCE, "n": len(maps), **_means(chance)})
        logger.info(
            "w = %g: dice %.3f, aji %.3f (chance: aji %.3f)",
            w,
            rows[-2]["dice_mean"],
            rows[-2]["aji_mean"],
            rows[-1]["aji_mean"],
        )
        grid.append(list(images[:n_shown]))
        names.append(f"w = {w:g}\nAJI {rows[-2]['aji_mean']:.2f}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out_csv) as csv_tmp, atomic_path(out_png) as png_tmp:
        table.to_csv(csv_tmp, index=False)
        image_grid(grid, names, png_tmp, tile_inches=1.6, title="Guidance sweep: images sampled for the same labels")
    return table


def _means(scores: pd.DataFrame) -> dict[str, float]:
    return {f"{s}_mean": float(scores[s].mean()) for s in SCORES}
