"""Colour transfer of synthetic images (not in the paper; ``diffusion.colour_transfer``): each
image takes the CIELAB colour statistics of a real patch of the labelled subset, a stain
normalisation for image models too short-trained to draw real stains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.diffusion.quality_measures import colour_statistics
from nudiff.imaging import transfer_colour
from nudiff.samples import real_pairs

# the noise stream of the donor draw (nudiff.diffusion.synthesis.STREAMS["colour"])
COLOUR_STREAM = 5

# Colour transfer draws its real patch among this share of them nearest in nuclear area
# fraction: a patch's colour spread depends on how much of it is nucleus, so the colours of a
# stroma-only patch would leave a crowded label's nuclei faint.
COLOUR_NEIGHBOURS = 0.1


def real_colours(labelled_csv: str | Path) -> pd.DataFrame:
    """:func:`colour_statistics` of every real patch of a sample table and its label's
    ``foreground_fraction``, one row per patch in table order."""
    images, maps = real_pairs(labelled_csv)
    colours = colour_statistics(images)
    colours["foreground_fraction"] = [float((inst > 0).mean()) for inst in maps]
    return colours


def colour_donors(fractions: np.ndarray, indices: np.ndarray, reference: pd.DataFrame, seed: int) -> np.ndarray:
    """For each synthetic label (its nuclear area fraction), the row of ``reference`` whose colours
    it takes: drawn uniformly, by the sample's own generator (:data:`COLOUR_STREAM`), among the
    :data:`COLOUR_NEIGHBOURS` share of real patches nearest in foreground fraction."""
    real = reference["foreground_fraction"].to_numpy()
    k = max(1, int(round(COLOUR_NEIGHBOURS * len(real))))
    rows = []
    for fraction, index in zip(fractions, indices):
        nearest = np.argsort(np.abs(real - fraction), kind="stable")[:k]
        rows.append(nearest[np.random.default_rng([seed, COLOUR_STREAM, int(index)]).integers(k)])
    return np.array(rows, np.int64)


def transfer_colours(
    images: np.ndarray, instances: np.ndarray, indices: np.ndarray, reference: pd.DataFrame, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each image takes the CIELAB mean and std (:func:`transfer_colour`) of one real patch of
    ``reference`` (a :func:`real_colours` table) chosen by :func:`colour_donors` from its label
    ``instances``: the synthetic set gets the stain variety of the real one. Returns the images
    and the row drawn for each."""
    rows = colour_donors((instances > 0).mean(axis=(1, 2)), indices, reference, seed)
    means = reference[["L_mean", "a_mean", "b_mean"]].to_numpy()
    stds = reference[["L_std", "a_std", "b_std"]].to_numpy()
    out = (
        np.stack([transfer_colour(image, means[r], stds[r]) for image, r in zip(images, rows)]) if len(rows) else images
    )
    return out, rows
