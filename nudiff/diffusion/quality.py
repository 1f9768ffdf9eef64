"""Quality evidence of the synthetic data per model: figures and the rule-level entry points.

The authors picked diffusion checkpoints by eye (SPEC.md section 8); nudiff measures. The
numbers come from :mod:`nudiff.diffusion.quality_measures` (re-exported here, so this module
is the one place to import from); this module reads the files a workflow produces (the
labelled subset's sample table, synthetic shard files; formats in
:mod:`nudiff.diffusion.synthesis`), draws the figures and writes every output atomically.

* :func:`assess_synthetic_pairs`: one subset's synthetic pairs against its real patches
  (instance statistics, colour agreement, an ECDF figure and a sample grid like the
  paper's Fig. 3).
* :func:`compare_samplers`: instance statistics of structures drawn with different
  samplers (e.g. 1000-step DDPM against a fast sampler) against the real ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from nudiff.diffusion.quality_measures import (
    REAL,
    STATISTICS,
    StatisticTables,
    agreement_table,
    check_set_names,
    colour_agreement,
    colour_distance,
    colour_nuclei_mask,
    colour_statistics,
    compare_instance_statistics,
    compare_statistic_tables,
    instance_statistics,
    statistic_values,
)
from nudiff.errors import InputDataError
from nudiff.figures import image_grid, overlay_instances, render_structure, save_figure
from nudiff.io.atomic import atomic_path
from nudiff.samples import real_pairs
from nudiff.structure import nuclei_structure

logger = logging.getLogger(__name__)

__all__ = [
    "REAL",
    "STATISTICS",
    "agreement_table",
    "assess_synthetic_pairs",
    "colour_agreement",
    "colour_distance",
    "colour_nuclei_mask",
    "colour_statistics",
    "compare_instance_statistics",
    "compare_samplers",
    "compare_statistic_tables",
    "instance_statistics",
    "plot_statistic_tables",
    "plot_statistics",
    "plot_synthetic_samples",
    "read_shards",
    "real_pairs",
    "statistic_values",
]

PathLike = str | Path


def plot_statistic_tables(
    real: StatisticTables, synthetic: Mapping[str, StatisticTables], path: PathLike, *, title: str | None = None
) -> None:
    """:func:`plot_statistics` on tables already made by :func:`instance_statistics`."""
    check_set_names(synthetic, "synthetic")
    comparison = compare_statistic_tables(real, synthetic).set_index(["set", "statistic"])
    sets = {REAL: real, **synthetic}
    colours = {REAL: "black", **{name: plt.cm.tab10(i % 10) for i, name in enumerate(synthetic)}}
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.6))
    for ax, (statistic, (_, _, label)) in zip(axes.flat, STATISTICS.items()):
        for name, tables in sets.items():
            values = np.sort(statistic_values(tables, statistic))
            if len(values):
                ecdf = np.arange(1, len(values) + 1) / len(values)
                ax.step(
                    np.r_[values[0], values],
                    np.r_[0, ecdf],
                    where="post",
                    color=colours[name],
                    lw=2.2 if name == REAL else 1.4,
                )
        lines = [
            f"{name}: W1/sd {comparison.at[(name, statistic), 'wasserstein_per_real_std']:.2f}, "
            f"KS {comparison.at[(name, statistic), 'ks_statistic']:.2f}"
            for name in synthetic
        ]
        ax.set_title("\n".join(lines), fontsize=7.5, loc="left")  # above the axes: never hides a curve
        ax.set_xlabel(label)
        if statistic == "area":  # long right tail (clusters, large tumour nuclei)
            ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("cumulative fraction")
    legend_ax = axes.flat[len(STATISTICS)]
    legend_ax.axis("off")
    for name, (per_patch, per_nucleus) in sets.items():
        legend_ax.plot(
            [],
            [],
            color=colours[name],
            lw=2.2 if name == REAL else 1.4,
            label=f"{name}: {len(per_patch)} patches, {len(per_nucleus)} whole nuclei",
        )
    legend_ax.legend(
        loc="center",
        frameon=False,
        fontsize=9,
        title="ECDF per set\n(shapes: nuclei not touching\nthe patch border)",
        title_fontsize=9,
    )
    fig.suptitle(title or "Nuclei statistics, real vs synthetic", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def plot_statistics(
    real_maps: Sequence[np.ndarray],
    synthetic: Mapping[str, Sequence[np.ndarray]],
    path: PathLike,
    *,
    title: str | None = None,
) -> None:
    """ECDFs of every compared statistic, one panel per statistic, one curve per set.

    Each panel also prints, per synthetic set, the Wasserstein-1 distance over the real
    std and the KS statistic (see :func:`compare_instance_statistics`).

    Args:
        real_maps: ``(H, W)`` real instance maps.
        synthetic: set name -> ``(H, W)`` instance maps.
        path: PNG to write.
    """
    check_set_names(synthetic, "synthetic")
    plot_statistic_tables(
        instance_statistics(real_maps),
        {name: instance_statistics(maps) for name, maps in synthetic.items()},
        path,
        title=title,
    )


def plot_synthetic_samples(
    real_rgb: np.ndarray,
    real_inst: np.ndarray,
    synthetic_structures: np.ndarray,
    synthetic_inst: np.ndarray,
    synthetic_rgb: np.ndarray,
    path: PathLike,
    *,
    n: int = 8,
    title: str | None = None,
) -> None:
    """A grid like the paper's Fig. 3; columns are the first ``n`` of each input.

    Rows: real images, their structures, synthetic structures, synthetic instance maps as
    outlines over the synthetic images, synthetic images. A real and a synthetic tile in
    one column are unrelated draws (the paper hand-picked look-alikes).

    Args:
        real_rgb: ``(N, S, S, 3)`` uint8; real_inst: ``(N, S, S)`` int.
        synthetic_structures: ``(M, S, S, 3)`` float (semantic in [0, 1], maps in [-1, 1]).
        synthetic_inst: ``(M, S, S)`` int; synthetic_rgb: ``(M, S, S, 3)`` uint8.
        n: at most this many columns (>= 1).
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    real_rgb, real_inst = np.asarray(real_rgb), np.asarray(real_inst)
    structures, inst, rgb = np.asarray(synthetic_structures), np.asarray(synthetic_inst), np.asarray(synthetic_rgb)
    for name, real, other in (("real", real_rgb, real_inst), ("synthetic", rgb, inst)):
        if len(real) == 0 or real.ndim != 4 or other.shape != real.shape[:3]:
            raise ValueError(
                f"{name} images {real.shape} and instance maps {other.shape} must be non-empty "
                "(N, S, S, 3) and (N, S, S)"
            )
    if structures.shape[:3] != inst.shape or structures.ndim != 4:
        raise ValueError(f"synthetic_structures {structures.shape} do not match synthetic_inst {inst.shape}")
    rows = [
        list(real_rgb[:n]),
        [render_structure(nuclei_structure(m)) for m in real_inst[:n]],
        [render_structure(s) for s in structures[:n]],
        [overlay_instances(image, m) for image, m in zip(rgb[:n], inst[:n])],
        list(rgb[:n]),
    ]
    names = ["real image", "real structure", "synthetic structure", "synthetic nuclei\n(outlines)", "synthetic image"]
    image_grid(rows, names, path, tile_inches=2.0, title=title)


def read_shards(paths: Sequence[PathLike], keys: tuple[str, ...], argument: str) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of shard files concatenated along the sample axis (empty shards add nothing)."""
    if isinstance(paths, (str, Path)) or len(paths) == 0:
        raise ValueError(f"{argument} must be a non-empty list of shard files, got {paths!r}")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for path in paths:
        try:
            with np.load(path) as shard:
                arrays = {key: shard[key] for key in keys}
        except (OSError, KeyError, ValueError) as err:
            raise InputDataError(f"cannot read arrays {list(keys)} of shard {path}: {err}") from err
        if len({len(a) for a in arrays.values()}) > 1:
            raise InputDataError(f"arrays {list(keys)} of shard {path} differ in length")
        for key, array in arrays.items():
            parts[key].append(array)
    shapes = {a.shape[1:] for a in parts[keys[0]]}
    if len(shapes) > 1:
        raise InputDataError(f"shards of {argument} differ in patch shape {sorted(shapes)}: {list(map(str, paths))}")
    return {key: np.concatenate(arrays) for key, arrays in parts.items()}


def _check_same_size(real_inst: Sequence[np.ndarray], synthetic_inst: np.ndarray, where: str) -> None:
    # nuclei per patch and area fraction only compare between patches of one size
    real_shapes = {m.shape for m in real_inst}
    if real_shapes != {synthetic_inst.shape[1:]}:
        raise InputDataError(
            f"real patches of shape {sorted(real_shapes)} and {where} of shape "
            f"{synthetic_inst.shape[1:]} differ: per-patch statistics would not compare"
        )


def _log_comparison(comparison: pd.DataFrame) -> None:
    for row in comparison.itertuples():
        logger.info(
            "%s %s: real median %.3g, synthetic median %.3g, W1/sd %.3f, KS %.3f",
            row.set,
            row.statistic,
            row.real_median,
            row.synthetic_median,
            row.wasserstein_per_real_std,
            row.ks_statistic,
        )


def assess_synthetic_pairs(
    labelled_csv: PathLike,
    pair_shards: Sequence[PathLike],
    *,
    out_stats_csv: PathLike,
    out_agreement_csv: PathLike,
    out_stats_png: PathLike,
    out_samples_png: PathLike,
    seed: int = 0,
    n_shown: int = 8,
    set_name: str = "synthetic",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule ``assess_synthetic_pairs``: how like the labelled subset a subset's synthetic pairs are.

    Real = every patch of the labelled subset (overlapping patches share nuclei, exactly
    as the diffusion models saw them in training). Synthetic = every pair of
    ``pair_shards``; an empty shard (all its structures had no nucleus) adds nothing, but
    if no shard holds a pair there is nothing to assess and :class:`InputDataError` is
    raised. Everything is computed before anything is written.

    Args:
        labelled_csv: sample table of the labelled subset.
        pair_shards: pairs shard files (``images``, ``instances``, ``structures``).
        out_stats_csv: :func:`compare_instance_statistics` table.
        out_agreement_csv: :func:`agreement_table`: real first, then the synthetic pairs,
            then (with two pairs or more) each synthetic image against another pair's map,
            the level of agreement by chance.
        out_stats_png: :func:`plot_statistics` figure.
        out_samples_png: :func:`plot_synthetic_samples` of ``n_shown`` real and synthetic
            samples chosen with ``seed``.

    Returns:
        ``(statistics, agreement)`` tables as written.
    """
    shards = read_shards(pair_shards, ("images", "instances", "structures"), "pair_shards")
    if len(shards["images"]) == 0:
        raise InputDataError(
            f"pair_shards hold no synthetic pair (every sampled structure was empty?): {list(map(str, pair_shards))}"
        )
    real_rgb, real_inst = real_pairs(labelled_csv)
    _check_same_size(real_inst, shards["instances"], "synthetic pairs")
    real_tables = instance_statistics(real_inst)
    synthetic_tables = {set_name: instance_statistics(shards["instances"])}
    statistics = compare_statistic_tables(real_tables, synthetic_tables)
    # Chance level: each synthetic image against the next pair's map (needs two pairs).
    mismatched = list(zip(shards["images"], np.roll(shards["instances"], 1, axis=0)))
    synthetic_pairs = {set_name: list(zip(shards["images"], shards["instances"]))}
    if len(mismatched) > 1:
        synthetic_pairs[f"{set_name}, maps of other pairs"] = mismatched
    agreement = agreement_table(list(zip(real_rgb, real_inst)), synthetic_pairs)
    rng = np.random.default_rng(seed)
    show_real = np.sort(rng.choice(len(real_rgb), min(n_shown, len(real_rgb)), replace=False))
    show_synthetic = np.sort(rng.choice(len(shards["images"]), min(n_shown, len(shards["images"])), replace=False))
    _log_comparison(statistics)
    logger.info(
        "colour agreement (Dice) mean: %s",
        ", ".join(f"{row.set} {row.mean:.3f}" for row in agreement.itertuples()),
    )

    plot_statistic_tables(
        real_tables,
        synthetic_tables,
        out_stats_png,
        title=f"Nuclei statistics: labelled subset vs {len(shards['images'])} synthetic pairs",
    )
    plot_synthetic_samples(
        np.stack([real_rgb[i] for i in show_real]),
        np.stack([real_inst[i] for i in show_real]),
        shards["structures"][show_synthetic],
        shards["instances"][show_synthetic],
        shards["images"][show_synthetic],
        out_samples_png,
        n=n_shown,
    )
    for table, path in ((statistics, out_stats_csv), (agreement, out_agreement_csv)):
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    return statistics, agreement


def compare_samplers(
    labelled_csv: PathLike, structure_shards: Mapping[str, Sequence[PathLike]], *, out_csv: PathLike, out_png: PathLike
) -> pd.DataFrame:
    """Rule ``compare_samplers``: instance statistics of each sampler's structures vs the real ones.

    Every sampled structure counts, including those without any nucleus (they are part of
    what a sampler produces; :func:`~nudiff.diffusion.synthesis.sample_images` drops them
    later). A sampler whose shards hold no structure at all raises :class:`InputDataError`.

    Args:
        labelled_csv: sample table of the labelled subset (the real reference).
        structure_shards: sampler name (e.g. ``"ddpm-1000"``) -> its structures shard files.
        out_csv: :func:`compare_instance_statistics` table.
        out_png: :func:`plot_statistics` figure.

    Returns:
        The comparison table as written.
    """
    check_set_names(structure_shards, "structure_shards")
    instances = {}
    for name, paths in structure_shards.items():
        shards = read_shards(paths, ("instances",), f"structure_shards[{name!r}]")
        if len(shards["instances"]) == 0:
            raise InputDataError(f"structure_shards[{name!r}] hold no structure: {list(map(str, paths))}")
        instances[name] = shards["instances"]
    _, real_inst = real_pairs(labelled_csv)
    for name, maps in instances.items():
        _check_same_size(real_inst, maps, f"structures of {name!r}")
    real_tables = instance_statistics(real_inst)
    synthetic_tables = {name: instance_statistics(maps) for name, maps in instances.items()}
    comparison = compare_statistic_tables(real_tables, synthetic_tables)
    _log_comparison(comparison)
    plot_statistic_tables(real_tables, synthetic_tables, out_png, title="Nuclei statistics per sampler vs real")
    with atomic_path(out_csv) as tmp:
        comparison.to_csv(tmp, index=False)
    return comparison
