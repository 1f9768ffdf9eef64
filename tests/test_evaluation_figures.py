"""Tests of the evaluation figures: written whole on good input, nothing on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nudiff.datasets.demo import make_demo_dataset
from nudiff.datasets.prepare import prepare_dataset
from nudiff.datasets.sources import list_source_items
from nudiff.errors import InputDataError
from nudiff.evaluation_figures import (
    _crop_window,
    plot_per_image_metrics,
    plot_prediction_overlays,
    plot_table_bars,
)
from nudiff.io.images import read_instance_map, write_instance_map
from nudiff.table import build_table

MIN_BYTES = 10_000  # a rendered figure with axes and dots; an empty canvas is far smaller


def _check_png(path, min_width=400):
    assert path.is_file() and path.stat().st_size > MIN_BYTES
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= 200


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared demo dataset (3 test images) and two sets of perturbed predictions."""
    root = tmp_path_factory.mktemp("figures")
    make_demo_dataset(root / "source", n_train=1, n_test=3, image_size=96)
    manifest = prepare_dataset(list_source_items("folder", root / "source"), root / "prepared")
    eroded, dilated = root / "pred_eroded", root / "pred_dilated"
    eroded.mkdir()
    dilated.mkdir()
    for _, row in manifest[manifest["split"] == "test"].iterrows():
        truth = read_instance_map(row["label"])
        write_instance_map(eroded / f"{row['name']}.tif", np.where(ndi.grey_erosion(truth, size=3) == truth, truth, 0))
        write_instance_map(dilated / f"{row['name']}.tif", ndi.grey_dilation(truth, size=3))
    return root, {"labelled": eroded, "augmented": dilated}


def _per_image_rows(subset="10pct"):
    rng = np.random.default_rng(0)
    names = [f"TCGA-{i:02d}-0000-01Z-00-DX1" for i in range(14)]
    return [
        {
            "dataset": "monuseg",
            "subset": subset,
            "model": model,
            "trainset": trainset,
            "seed": seed,
            "name": name,
            "n_images": 14,
            "dice": rng.uniform(0.7, 0.85),
            "aji": rng.uniform(0.5, 0.7),
        }
        for model in ("hovernet", "pffnet")
        for trainset in ("labelled", "augmented")
        for seed in (0, 1)
        for name in names
    ]


def test_per_image_figure_written(tmp_path):
    csv = tmp_path / "metrics_per_image.csv"
    pd.DataFrame(_per_image_rows()).to_csv(csv, index=False)
    plot_per_image_metrics(csv, tmp_path / "per_image.png")
    _check_png(tmp_path / "per_image.png")


@pytest.mark.parametrize("case", ["missing_column", "two_subsets", "empty"])
def test_per_image_bad_input_names_file(tmp_path, case):
    frame = pd.DataFrame(_per_image_rows())
    if case == "missing_column":
        frame = frame.drop(columns="aji")
    elif case == "two_subsets":
        frame = pd.concat([frame, pd.DataFrame(_per_image_rows("20pct"))])
    else:
        frame = frame.iloc[:0]
    csv = tmp_path / "bad_per_image.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(InputDataError, match="bad_per_image.csv"):
        plot_per_image_metrics(csv, tmp_path / "out" / "per_image.png")
    assert not (tmp_path / "out" / "per_image.png").exists()


def test_overlays_written(prepared, tmp_path):
    root, predictions = prepared
    plot_prediction_overlays(root / "prepared", predictions, tmp_path / "overlay.png", crop=64)
    _check_png(tmp_path / "overlay.png")


def test_overlays_missing_prediction_names_file(prepared, tmp_path):
    root, predictions = prepared
    partial = tmp_path / "partial"
    partial.mkdir()
    out = tmp_path / "out" / "overlay.png"
    with pytest.raises(InputDataError, match="partial"):
        plot_prediction_overlays(root / "prepared", {**predictions, "partial": partial}, out)
    with pytest.raises(ValueError, match="no_such_image"):
        plot_prediction_overlays(root / "prepared", predictions, out, names=["no_such_image"])
    assert not out.exists()


def test_crop_window_finds_the_nuclei():
    # Four 3x3 nuclei with centres at 83 and 93 (rows and columns) and one at (6, 6) in a
    # 100x100 map. 20-pixel windows start every 20 // 4 = 5 pixels; the first holding all
    # four centres (start <= 83, start + 20 > 93) starts at 75.
    label = np.zeros((100, 100), np.int32)
    for k, (y, x) in enumerate([(82, 82), (82, 92), (92, 82), (92, 92), (5, 5)], start=1):
        label[y : y + 3, x : x + 3] = k
    rows, cols = _crop_window(label, 20)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (75, 95, 75, 95)
    # No crop, or a crop larger than the image: the whole image.
    assert _crop_window(label, None) == (slice(0, 100), slice(0, 100))
    assert _crop_window(label, 500) == (slice(0, 100), slice(0, 100))


def test_table_bars_written_and_bad_table_rejected(tmp_path):
    rows = [
        {
            "dataset": d,
            "subset": s,
            "model": m,
            "trainset": t,
            "seed": seed,
            "n_images": 14,
            "dice": 0.75 + 0.01 * seed + (0.02 if t == "augmented" else 0),
            "aji": 0.6,
        }
        for d in ("monuseg", "demo")
        for m in ("hovernet", "pffnet")
        for s in ("10pct", "20pct", "50pct", "100pct")
        for t in ("labelled", "augmented")
        for seed in (0, 1)
    ]
    csv = tmp_path / "metrics.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = build_table([csv], paper_datasets={"demo": None, "monuseg": "monuseg"})
    plot_table_bars(table, tmp_path / "bars.png")
    _check_png(tmp_path / "bars.png")
    with pytest.raises(ValueError, match="dice_mean"):
        plot_table_bars(table.drop(columns="dice_mean"), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
