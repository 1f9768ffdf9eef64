"""Figures of the evaluation stage: per-image scores, prediction overlays, the table as bars.

Rendered off-screen (Agg) and written atomically through :func:`nudiff.figures.save_figure`,
so a bad input leaves no figure behind: every input is read and checked before drawing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from nudiff.datasets.prepare import MANIFEST_NAME, read_manifest  # noqa: E402
from nudiff.errors import InputDataError  # noqa: E402
from nudiff.figures import overlay_instances, save_figure  # noqa: E402
from nudiff.io.images import read_image, read_instance_map  # noqa: E402
from nudiff.io.tables import read_table  # noqa: E402
from nudiff.metrics import aji, dice  # noqa: E402
from nudiff.table import (  # noqa: E402
    METRICS,
    MODEL_NAMES,
    PAPER_ARMS,
    TABLE_COLUMNS,
    TRAINSETS,
    subset_percent,
)

COLORS = {"labelled": "tab:blue", "augmented": "tab:orange"}
GT_COLOR = (0, 255, 0)  # green
PRED_COLOR = (255, 255, 0)  # yellow
_METRIC_NAMES = {"dice": "Dice", "aji": "AJI"}
_PER_IMAGE_COLUMNS = ("dataset", "subset", "model", "trainset", "seed", "name", *METRICS)
_OFFSET = 0.18  # half the gap between an image's labelled and augmented dots


def _read_per_image(path: Path) -> pd.DataFrame:
    frame = read_table(
        path,
        required=_PER_IMAGE_COLUMNS,
        what="per-image metrics file",
        allow_empty=False,
        dtype={"name": str, "subset": str, "dataset": str},
    )
    if frame[["dataset", "subset"]].drop_duplicates().shape[0] != 1:
        raise InputDataError(f"{path}: expected one dataset and subset per file")
    bad = sorted(set(frame["trainset"]) - set(TRAINSETS))
    values = frame[list(METRICS)].apply(pd.to_numeric, errors="coerce")
    if bad or values.isna().any().any():
        raise InputDataError(f"{path}: unknown trainset(s) {bad} or non-numeric dice/aji")
    frame[list(METRICS)] = values
    return frame


def plot_per_image_metrics(per_image_csv: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Per test image Dice and AJI, labelled vs augmented, for each model and seed.

    One row of panels per (model, metric). Each image has its labelled dot (blue) on the
    left and its augmented dot (orange) on the right, one pair per seed, joined by a line
    that is green where augmented scores higher and red where lower; dashed lines are the
    means over images and seeds.

    Args:
        per_image_csv: a ``metrics_per_image.csv`` of one dataset and subset (columns
            ``dataset, subset, model, trainset, seed, name, dice, aji``).
        out_png: the figure.

    Raises:
        InputDataError: naming the file, when it is missing, lacks a column, holds several
            datasets/subsets or bad values.
    """
    path = Path(per_image_csv)
    frame = _read_per_image(path)
    frame = frame[frame["trainset"].isin(PAPER_ARMS)]  # the other arms: compare_arms' figure
    names = sorted(frame["name"].unique())
    x_of = {name: i for i, name in enumerate(names)}
    models = sorted(frame["model"].unique(), key=lambda m: (m not in MODEL_NAMES, m))
    panels = [(m, metric) for m in models for metric in METRICS]
    fig, axes = plt.subplots(
        len(panels), 1, squeeze=False, sharex=True, figsize=(max(7.0, 0.45 * len(names) + 4.0), 2.3 * len(panels) + 1.4)
    )
    for ax, (model, metric) in zip(axes[:, 0], panels):
        part = frame[frame["model"] == model]
        wide = part.pivot_table(index=["name", "seed"], columns="trainset", values=metric)
        if set(PAPER_ARMS) <= set(wide.columns):
            for (name, _), row in wide.dropna().iterrows():
                up = row["augmented"] >= row["labelled"]
                ax.plot(
                    [x_of[name] - _OFFSET, x_of[name] + _OFFSET],
                    [row["labelled"], row["augmented"]],
                    lw=0.8,
                    alpha=0.7,
                    color="tab:green" if up else "tab:red",
                    zorder=1,
                )
        for sign, trainset in zip((-1, 1), PAPER_ARMS):
            rows = part[part["trainset"] == trainset]
            if rows.empty:
                continue
            ax.scatter(
                rows["name"].map(x_of) + sign * _OFFSET,
                rows[metric],
                s=16,
                color=COLORS[trainset],
                edgecolor="white",
                linewidth=0.4,
                zorder=2,
                label=f"{trainset} (mean {rows[metric].mean():.3f})",
            )
            ax.axhline(rows[metric].mean(), color=COLORS[trainset], ls="--", lw=0.9, zorder=0)
        ax.set_ylabel(f"{MODEL_NAMES.get(model, model)}\n{_METRIC_NAMES[metric]}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes[-1, 0].set_xticks(range(len(names)))
    axes[-1, 0].set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    axes[-1, 0].set_xlim(-0.6, len(names) - 0.4)
    seeds = frame.groupby(["model", "trainset"])["seed"].nunique()
    dataset, subset = frame[["dataset", "subset"]].iloc[0]
    fig.suptitle(
        f"{dataset}, {subset} labelled: per-image scores on {len(names)} test images "
        f"({'/'.join(map(str, sorted(set(seeds))))} seed(s))\nlines join one seed's "
        f"labelled and augmented score: green = augmented higher, red = lower",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, out_png)


def _crop_window(label: np.ndarray, crop: int | None, *, stride_fraction: int = 4) -> tuple[slice, slice]:
    """The ``crop`` x ``crop`` window of ``label`` ``(H, W)`` holding the most nucleus centres.

    Windows start every ``crop // stride_fraction`` pixels (plus flush with the far
    borders); the first in raster order wins ties, so the choice is deterministic.
    """
    height, width = label.shape
    if crop is None or (crop >= height and crop >= width):
        return slice(0, height), slice(0, width)
    ch, cw = min(crop, height), min(crop, width)
    centres = np.zeros(label.shape, np.int64)
    ids = np.unique(label[label > 0])
    if ids.size:
        for cy, cx in ndi.center_of_mass(label > 0, label, ids):
            centres[int(cy), int(cx)] += 1
    table = np.pad(centres.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    step = max(1, min(ch, cw) // stride_fraction)
    ys = sorted({*range(0, height - ch + 1, step), height - ch})
    xs = sorted({*range(0, width - cw + 1, step), width - cw})
    best, where = -1, (0, 0)
    for y in ys:
        for x in xs:
            count = table[y + ch, x + cw] - table[y, x + cw] - table[y + ch, x] + table[y, x]
            if count > best:
                best, where = count, (y, x)
    return slice(where[0], where[0] + ch), slice(where[1], where[1] + cw)


def _choose_names(test: pd.DataFrame, names: Sequence[str] | None, n_images: int, manifest: Path) -> list[str]:
    if names is not None:
        unknown = [n for n in names if n not in set(test["name"])]
        if unknown or not names:
            raise ValueError(f"names {list(names)!r}: {unknown} not test images of {manifest}")
        return list(names)
    if n_images < 1:
        raise ValueError(f"n_images={n_images} must be >= 1")
    ordered = sorted(test["name"])
    picks = np.linspace(0, len(ordered) - 1, min(n_images, len(ordered))).round().astype(int)
    return [ordered[i] for i in dict.fromkeys(picks)]


def plot_prediction_overlays(
    prepared_dir: str | os.PathLike,
    predictions_dirs: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    n_images: int = 3,
    crop: int | None = 256,
    tile_inches: float = 2.6,
) -> None:
    """Test images with ground-truth outlines (green) and each prediction's (yellow).

    One row per image: the image crop, then the ground truth, then one column per
    prediction set (its outlines over the ground truth's), titled with that prediction's
    Dice and AJI on the whole image.

    Args:
        prepared_dir: a prepared dataset (``manifest.csv`` with ``name, split, image,
            label``).
        predictions_dirs: column title -> folder of ``<name>.tif`` int32 instance maps.
        out_png: the figure.
        names: test images to show; default ``n_images`` of them evenly spaced over the
            test images sorted by name.
        n_images: how many images when ``names`` is None; default 3.
        crop: side of the window shown, in pixels, placed where it holds the most nucleus
            centres (default 256; None = the whole image).
        tile_inches: size of one panel.

    Raises:
        InputDataError: naming the file, for a missing manifest or prediction, or a
            prediction whose shape differs from its image.
        ValueError: no prediction sets, or a name that is not a test image.
    """
    if not predictions_dirs:
        raise ValueError("predictions_dirs is empty: nothing to overlay")
    if crop is not None and crop < 8:
        raise ValueError(f"crop={crop} must be None or >= 8 pixels")
    manifest = Path(prepared_dir) / MANIFEST_NAME
    table = read_manifest(manifest)
    test = table[table["split"] == "test"]
    if test.empty:
        raise InputDataError(f"{manifest}: no test images")
    chosen = _choose_names(test, names, n_images, manifest)
    rows = []
    for name in chosen:
        entry = test[test["name"] == name].iloc[0]
        rgb, truth = read_image(entry["image"]), read_instance_map(entry["label"])
        preds = {}
        for title, folder in predictions_dirs.items():
            path = Path(folder) / f"{name}.tif"
            if not path.is_file():
                raise InputDataError(f"{path}: prediction for {name} ({title}) not found")
            preds[title] = read_instance_map(path)
            if preds[title].shape != truth.shape:
                raise InputDataError(f"{path}: shape {preds[title].shape} differs from the label's {truth.shape}")
        rows.append((name, rgb, truth, preds, _crop_window(truth, crop)))

    n_cols = 2 + len(predictions_dirs)
    fig, axes = plt.subplots(
        len(rows), n_cols, squeeze=False, figsize=(tile_inches * n_cols, tile_inches * len(rows) + 0.5)
    )
    for r, (name, rgb, truth, preds, window) in enumerate(rows):
        outlined = overlay_instances(rgb, truth, color=GT_COLOR)
        tiles = [("image", rgb), (f"ground truth ({int(truth.max())} nuclei)", outlined)]
        for title, pred in preds.items():
            scores = f"Dice {dice(truth, pred):.3f}, AJI {aji(truth, pred):.3f}"
            tiles.append((f"{title}\n{scores}", overlay_instances(outlined, pred, color=PRED_COLOR)))
        for c, (title, tile) in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(tile[window], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle("test images: ground truth (green), prediction (yellow)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)


def plot_table_bars(table: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Dice and AJI per subset: ours labelled vs augmented (bars, ± std), paper's (black marks).

    One column of panels per (model, dataset), one row per metric. The y axis is zoomed
    on the values (it does not start at 0) so that gains of a few hundredths show.

    Args:
        table: from :func:`nudiff.table.build_table`.
        out_png: the figure.
    """
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"table is empty or lacks column(s) {missing}; build it with build_table")
    combos = table[["model", "dataset"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(
        len(METRICS), len(combos), squeeze=False, figsize=(max(4.5, 3.6 * len(combos)), 3.0 * len(METRICS) + 0.6)
    )
    width = 0.38
    for c, (model, dataset) in enumerate(combos):
        part = table[(table["model"] == model) & (table["dataset"] == dataset)]
        subsets = sorted(part["subset"].unique(), key=subset_percent)
        for r, metric in enumerate(METRICS):
            ax = axes[r][c]
            values = []
            for sign, trainset in zip((-1, 1), PAPER_ARMS):
                rows = part[part["trainset"] == trainset].set_index("subset").reindex(subsets)
                x = np.arange(len(subsets)) + sign * width / 2
                mean, std = rows[f"{metric}_mean"], rows[f"{metric}_std"]
                ax.bar(x, mean, width, color=COLORS[trainset], label=f"ours, {trainset}")
                if std.notna().any():  # one seed: no spread to show
                    ax.errorbar(x, mean, yerr=std, ls="none", color="black", elinewidth=0.8, capsize=2)
                std = std.fillna(0)
                paper = rows[f"paper_{metric}"]
                if paper.notna().any():
                    ax.plot(
                        x,
                        paper,
                        ls="none",
                        marker="_",
                        markersize=16,
                        mew=2.5,
                        color="black",
                        label="paper" if trainset == PAPER_ARMS[0] else None,
                    )
                values += [*(mean - std).dropna(), *(mean + std).dropna(), *paper.dropna()]
            low, high = min(values), max(values)
            pad = max(0.02, 0.15 * (high - low))
            ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
            ax.set_xlim(-0.75, len(subsets) - 0.25)
            ax.set_xticks(range(len(subsets)))
            ax.set_xticklabels([f"{subset_percent(s)}%" for s in subsets])
            ax.grid(axis="y", alpha=0.3)
            ax.set_ylabel(_METRIC_NAMES[metric])
            if r == 0:
                ax.set_title(f"{MODEL_NAMES.get(model, model)}, {dataset}", fontsize=10)
            if r == len(METRICS) - 1:
                ax.set_xlabel("labelled subset")
    legend = {}  # label -> handle, over all panels: the first may have no paper numbers
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    labels = sorted(legend, key=lambda label: label == "paper")
    handles = [legend[label] for label in labels]
    fig.suptitle(
        "labelled vs augmented: mean over seeds, bars ± std where several (y axis zoomed, not from 0)", fontsize=10
    )
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, out_png)
