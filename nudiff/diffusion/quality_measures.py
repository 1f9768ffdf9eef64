"""Measured quality of synthetic nuclei: shape statistics and image-map agreement.

The numbers behind :mod:`nudiff.diffusion.quality` (import them from there). Two kinds
of evidence, neither needing a trained segmenter:

* **Instance statistics** (:func:`instance_statistics`, :func:`compare_instance_statistics`):
  does the structure model draw nuclei like the real ones? Per patch: the number of nuclei
  and the nuclear area fraction; per nucleus: area, eccentricity and solidity. Real and
  synthetic distributions are compared by their Wasserstein-1 distance (also divided by the
  real standard deviation, so statistics of different units can be read on one scale) and
  the two-sample Kolmogorov-Smirnov statistic. No p-value is given: nuclei of one patch are
  not independent draws, so a test's p-value would be overconfident.
* **Colour agreement** (:func:`colour_agreement`, :func:`agreement_table`): does the image
  model put nuclei where the instance map says? The Dice between the map's foreground and
  a haematoxylin mask found by colour deconvolution. Its level on real labelled patches is
  the reference a synthetic set is read against (the colour mask is crude; real pairs do
  not score 1 either).
* **Colour realism** (:func:`colour_statistics`, :func:`colour_distance`): are the images
  stained like the real patches? Per patch: the mean and standard deviation of each CIELAB
  channel. Real and synthetic per-patch values are compared by the two-sample
  Kolmogorov-Smirnov statistic, averaged over the six (0: same distributions, 1: disjoint).
  Shapes of nuclei can be right on a background no real slide has (pale cyan instead of
  pink stroma); this measure sees that, the segmenter's agreement does not.

Nuclei touching the patch border are cut by the crop: they are **counted** (in
``n_nuclei`` and the area fraction) but **left out of the per-nucleus shape statistics**,
since a cut nucleus looks smaller, more elongated and so biases area and eccentricity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.color import rgb2hed, rgb2lab
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table

logger = logging.getLogger(__name__)

PER_PATCH_COLUMNS = ["patch", "n_nuclei", "n_border", "foreground_fraction"]
COLOUR_STATISTICS = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std")
PER_NUCLEUS_COLUMNS = ["patch", "label", "area", "eccentricity", "solidity", "axis_major_length", "axis_minor_length"]

# Compared statistic -> (table, column, axis label for figures).
STATISTICS: dict[str, tuple[str, str, str]] = {
    "nuclei_per_patch": ("per_patch", "n_nuclei", "nuclei per patch"),
    "foreground_fraction": ("per_patch", "foreground_fraction", "nuclear area fraction"),
    "area": ("per_nucleus", "area", "nucleus area (px)"),
    "eccentricity": ("per_nucleus", "eccentricity", "eccentricity"),
    "solidity": ("per_nucleus", "solidity", "solidity"),
}
REAL = "real"
"""Name of the real set in agreement tables (so no synthetic set may take it)."""

StatisticTables = tuple[pd.DataFrame, pd.DataFrame]


def _check_instance_map(inst: np.ndarray, where: str) -> np.ndarray:
    inst = np.asarray(inst)
    if inst.ndim != 2 or inst.size == 0:
        raise ValueError(f"{where} must be a non-empty 2-D (H, W) instance map, got shape {inst.shape}")
    if inst.dtype == bool:
        return inst.astype(np.int32)
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"{where} must hold integer ids, got dtype {inst.dtype}")
    if inst.min() < 0:
        raise ValueError(f"{where} holds a negative id {inst.min()}")
    return inst


def instance_statistics(instance_maps: Sequence[np.ndarray]) -> StatisticTables:
    """Count and measure the nuclei of a set of instance maps.

    Every distinct non-zero id is one nucleus (even if its pixels are not connected).
    A nucleus *touches the border* when any of its pixels lies in the first or last row or
    column of its patch; such nuclei count in ``n_nuclei`` and ``foreground_fraction`` but
    have no row in ``per_nucleus`` (see the module docstring).

    Args:
        instance_maps: ``(H, W)`` integer maps, 0 = background; sizes may differ.

    Returns:
        ``per_patch`` with columns ``patch`` (position in ``instance_maps``), ``n_nuclei``
        (all nuclei), ``n_border`` (those touching the border) and ``foreground_fraction``
        (nuclear pixels / patch pixels); ``per_nucleus`` with one row per whole nucleus:
        ``patch``, ``label``, ``area`` (px), ``eccentricity`` (of the ellipse with the same
        second moments: 0 = circle), ``solidity`` (area / convex-hull area),
        ``axis_major_length`` and ``axis_minor_length`` (px).
    """
    patch_rows, nucleus_parts = [], []
    for k, inst in enumerate(instance_maps):
        inst = _check_instance_map(inst, f"instance_maps[{k}]")
        height, width = inst.shape
        props = regionprops_table(
            inst,
            properties=("label", "bbox", "area", "eccentricity", "solidity", "axis_major_length", "axis_minor_length"),
        )
        border = (
            (props["bbox-0"] == 0) | (props["bbox-1"] == 0) | (props["bbox-2"] == height) | (props["bbox-3"] == width)
        )
        patch_rows.append((k, len(props["label"]), int(border.sum()), float(np.count_nonzero(inst)) / inst.size))
        whole = {name: props[name][~border] for name in PER_NUCLEUS_COLUMNS[1:]}
        nucleus_parts.append(pd.DataFrame({"patch": k, **whole}))
    per_patch = pd.DataFrame(patch_rows, columns=PER_PATCH_COLUMNS)
    per_nucleus = (
        pd.concat(nucleus_parts, ignore_index=True) if nucleus_parts else pd.DataFrame(columns=PER_NUCLEUS_COLUMNS)
    )
    per_nucleus = per_nucleus[PER_NUCLEUS_COLUMNS].astype({"patch": np.int64, "label": np.int64, "area": np.float64})
    return per_patch.astype({"patch": np.int64, "n_nuclei": np.int64, "n_border": np.int64}), per_nucleus


def statistic_values(tables: StatisticTables, statistic: str) -> np.ndarray:
    """The values of one of :data:`STATISTICS` from :func:`instance_statistics` tables."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not one of {list(STATISTICS)}")
    table, column, _ = STATISTICS[statistic]
    frame = tables[0] if table == "per_patch" else tables[1]
    return frame[column].to_numpy(dtype=np.float64)


def _summary(values: np.ndarray, prefix: str) -> dict[str, float]:
    if len(values) == 0:
        return {f"n_{prefix}": 0, f"{prefix}_mean": np.nan, f"{prefix}_std": np.nan, f"{prefix}_median": np.nan}
    return {
        f"n_{prefix}": len(values),
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
        f"{prefix}_median": float(np.median(values)),
    }


def check_set_names(synthetic: Mapping, argument: str) -> None:
    """Raise ValueError naming ``argument`` unless it holds >= 1 set and none named :data:`REAL`."""
    if not synthetic:
        raise ValueError(f"{argument} is empty: give at least one named synthetic set")
    if REAL in synthetic:
        raise ValueError(f"{argument} may not hold a set named {REAL!r} (reserved for the real set)")


def compare_statistic_tables(real: StatisticTables, synthetic: Mapping[str, StatisticTables]) -> pd.DataFrame:
    """:func:`compare_instance_statistics` on tables already made by :func:`instance_statistics`."""
    from scipy import stats  # imported here: scipy.stats costs every sampling job about 0.7 s

    check_set_names(synthetic, "synthetic")
    rows = []
    for name, tables in synthetic.items():
        for statistic in STATISTICS:
            a, b = statistic_values(real, statistic), statistic_values(tables, statistic)
            row = {"set": name, "statistic": statistic, **_summary(a, "real"), **_summary(b, "synthetic")}
            if len(a) and len(b):
                w1 = float(stats.wasserstein_distance(a, b))
                spread = row["real_std"]
                row["wasserstein"] = w1
                row["wasserstein_per_real_std"] = w1 / spread if spread > 0 else np.nan
                row["ks_statistic"] = float(stats.ks_2samp(a, b).statistic)
            else:  # a set without nuclei (or patches) has no distribution to compare
                row.update(wasserstein=np.nan, wasserstein_per_real_std=np.nan, ks_statistic=np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


def compare_instance_statistics(
    real_maps: Sequence[np.ndarray], synthetic: Mapping[str, Sequence[np.ndarray]]
) -> pd.DataFrame:
    """Compare the nuclei of real instance maps with one or more synthetic sets.

    Args:
        real_maps: ``(H, W)`` real instance maps (e.g. the labelled subset's patches).
        synthetic: set name (e.g. ``"ddpm-1000"``, ``"ddim-50"``) -> ``(H, W)`` instance maps.

    Returns:
        One row per (``set``, ``statistic``) with ``n_real``, ``real_mean``, ``real_std``
        (ddof 1), ``real_median``, the same four for ``synthetic``, ``wasserstein``
        (Wasserstein-1 distance, in the statistic's unit), ``wasserstein_per_real_std``
        (scale-free; NaN when the real std is 0 or undefined) and ``ks_statistic``
        (two-sample Kolmogorov-Smirnov, in [0, 1]). Distances are NaN when either side has
        no value (e.g. no whole nucleus).
    """
    check_set_names(synthetic, "synthetic")
    real_tables = instance_statistics(real_maps)
    return compare_statistic_tables(real_tables, {name: instance_statistics(maps) for name, maps in synthetic.items()})


def colour_nuclei_mask(rgb: np.ndarray, *, min_object_size: int = 10, max_hole_size: int = 30) -> np.ndarray | None:
    """Nuclei of an H&E image found by colour alone; ``None`` when the image has no contrast.

    Haematoxylin (which stains nuclei) is separated by colour deconvolution
    (``skimage.color.rgb2hed``, Ruifrok & Johnston 2001) and thresholded with Otsu's method
    on this image (computed between its 1st and 99th percentiles, so a few saturated
    pixels cannot move it). Specks of fewer than ``min_object_size`` pixels are dropped (noise,
    stained debris) unless they touch the image border, where a nucleus cut by the crop can
    be a small piece; holes of at most ``max_hole_size`` pixels that do not reach the border
    are filled (the pale centres of vesicular nuclei). Connectivity is 4 for objects and holes.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.

    Returns:
        ``(H, W)`` bool mask, or ``None`` when the haematoxylin channel is constant.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"rgb must be a (H, W, 3) image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got dtype {rgb.dtype}")
    for key, value in (("min_object_size", min_object_size), ("max_hole_size", max_hole_size)):
        if value < 0:
            raise ValueError(f"{key}={value} must be >= 0")
    haematoxylin = rgb2hed(rgb)[..., 0]
    if np.ptp(haematoxylin) <= 1e-12:
        return None
    # Otsu on the 1st-99th percentile range: a few saturated pixels (a channel at 0, as
    # sampled images have) give haematoxylin outliers that would pull the threshold above
    # every nucleus.
    low, high = np.percentile(haematoxylin, [1, 99])
    if high - low <= 1e-12:
        return None
    mask = haematoxylin > threshold_otsu(np.clip(haematoxylin, low, high))
    objects, n = ndimage.label(mask)
    keep = np.bincount(objects.ravel(), minlength=n + 1) >= min_object_size
    keep[_border_labels(objects)] = True  # a nucleus cut by the crop may be a small piece
    mask = keep[objects] & mask
    holes, n = ndimage.label(~mask)
    fill = np.bincount(holes.ravel(), minlength=n + 1) <= max_hole_size
    fill[_border_labels(holes)] = False  # open to the border: background, not a hole
    fill[0] = False
    return mask | fill[holes]


def _border_labels(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))


def colour_agreement(rgb: np.ndarray, inst: np.ndarray, *, min_object_size: int = 10, max_hole_size: int = 30) -> float:
    """Dice between an instance map's foreground and the image's colour-based nuclei mask.

    Args:
        rgb: ``(H, W, 3)`` uint8 H&E image.
        inst: ``(H, W)`` integer instance map, 0 = background.
        min_object_size, max_hole_size: see :func:`colour_nuclei_mask`.

    Returns:
        Dice in [0, 1] (1 = the stain lies exactly on the map's nuclei), or NaN when it is
        undefined: the map has no nucleus, or the image has no haematoxylin contrast.
    """
    inst = _check_instance_map(inst, "inst")
    if inst.shape != np.shape(rgb)[:2]:
        raise ValueError(f"inst shape {inst.shape} differs from the image's {np.shape(rgb)[:2]}")
    mask = colour_nuclei_mask(rgb, min_object_size=min_object_size, max_hole_size=max_hole_size)
    if mask is None or not inst.any():
        return float("nan")
    labelled = inst > 0
    return float(2 * np.count_nonzero(labelled & mask) / (np.count_nonzero(labelled) + np.count_nonzero(mask)))


def agreement_table(
    real: Sequence[tuple[np.ndarray, np.ndarray]],
    synthetic: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    **mask_options: int,
) -> pd.DataFrame:
    """:func:`colour_agreement` summarised per set: the real pairs first, as the reference.

    Args:
        real: ``(rgb, inst)`` pairs, ``(H, W, 3)`` uint8 and ``(H, W)`` int.
        synthetic: set name -> ``(rgb, inst)`` pairs.
        mask_options: ``min_object_size`` / ``max_hole_size`` for :func:`colour_nuclei_mask`.

    Returns:
        One row per set (``set`` = ``"real"`` first) with ``n_pairs``, ``n_scored`` (pairs
        whose agreement is defined), ``mean``, ``std`` (ddof 1), ``median`` of the defined
        scores and ``mean_relative_to_real`` (the set's mean / the real mean).
    """
    check_set_names(synthetic, "synthetic")
    rows = []
    for name, pairs in {REAL: real, **synthetic}.items():
        scores = np.array([colour_agreement(rgb, inst, **mask_options) for rgb, inst in pairs], dtype=np.float64)
        valid = scores[~np.isnan(scores)]
        rows.append(
            {
                "set": name,
                "n_pairs": len(scores),
                "n_scored": len(valid),
                "mean": float(valid.mean()) if len(valid) else np.nan,
                "std": float(valid.std(ddof=1)) if len(valid) > 1 else np.nan,
                "median": float(np.median(valid)) if len(valid) else np.nan,
            }
        )
        if len(valid) < len(scores):
            logger.info(
                "%s: %d of %d pairs have no defined colour agreement", name, len(scores) - len(valid), len(scores)
            )
    table = pd.DataFrame(rows)
    table["mean_relative_to_real"] = table["mean"] / table.loc[0, "mean"]
    return table


def colour_statistics(images: Sequence[np.ndarray] | np.ndarray) -> pd.DataFrame:
    """Per ``(H, W, 3)`` uint8 RGB patch: mean and std of its CIELAB L, a and b (:data:`COLOUR_STATISTICS`)."""
    rows = []
    for image in images:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"colour statistics need (H, W, 3) RGB patches, got shape {image.shape}")
        lab = rgb2lab(image).reshape(-1, 3)
        rows.append([*lab.mean(axis=0), *lab.std(axis=0)])
    return pd.DataFrame(rows, columns=list(COLOUR_STATISTICS), dtype=float)


def colour_distance(real: pd.DataFrame, synthetic: pd.DataFrame) -> dict[str, float]:
    """KS statistic of each colour statistic between two :func:`colour_statistics` tables,
    as ``ks_<statistic>``, and their mean as ``colour_ks`` (in [0, 1], lower is more alike)."""
    if real.empty or synthetic.empty:
        raise ValueError("colour distance needs at least one real and one synthetic patch")
    from scipy import stats

    out = {f"ks_{name}": float(stats.ks_2samp(real[name], synthetic[name]).statistic) for name in COLOUR_STATISTICS}
    out["colour_ks"] = float(np.mean(list(out.values())))
    return out
