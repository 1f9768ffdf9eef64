"""Segmenting test images, per-image scores and their per-run means."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import train_tiny_segmenter

from nudiff.datasets.demo import make_demo_dataset
from nudiff.datasets.prepare import prepare_dataset, read_manifest
from nudiff.datasets.sources import list_source_items
from nudiff.errors import InputDataError
from nudiff.evaluation import METRICS, score_predictions, summarize_metrics
from nudiff.io.images import read_instance_map, write_instance_map
from nudiff.segmentation.hovernet import inference as hovernet_inference
from nudiff.segmentation.segment_images import segment_test_images

torch.set_num_threads(1)

LABELS = {"dataset": "demo", "subset": "10pct", "model": "hovernet", "trainset": "real", "seed": 0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_demo_dataset(root / "raw", n_train=1, n_test=2, image_size=64)
    prepare_dataset(list_source_items("folder", root / "raw"), root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="module")
def model_file(prepared, tmp_path_factory):
    return train_tiny_segmenter(prepared, tmp_path_factory.mktemp("model"))


def test_segment_test_images_writes_one_map_per_test_image(prepared, model_file, tmp_path):
    timings = segment_test_images(model_file, prepared, tmp_path / "pred", tile=64, margin=16, batch_size=2)
    test = read_manifest(prepared / "manifest.csv").query("split == 'test'")
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(f"{n}.tif" for n in test["name"])
    for name in test["name"]:
        inst = read_instance_map(tmp_path / "pred" / f"{name}.tif")
        assert inst.shape == (64, 64)
    assert list(timings["name"]) == list(test["name"])
    assert (timings[["inference_s", "postprocess_s"]] > 0).all().all()


def test_a_failure_midway_leaves_no_prediction_folder(prepared, model_file, tmp_path, monkeypatch):
    calls = {"n": 0}

    def failing(structure, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return np.zeros(structure.shape[:2], np.int32)

    monkeypatch.setattr(hovernet_inference, "instances_from_structure", failing)
    with pytest.raises(RuntimeError, match="boom"):
        segment_test_images(model_file, prepared, tmp_path / "pred")
    assert list(tmp_path.iterdir()) == []


def _perfect_predictions(prepared, folder):
    folder.mkdir()
    test = read_manifest(prepared / "manifest.csv").query("split == 'test'")
    for item in test.itertuples():
        shutil.copy(item.label, folder / f"{item.name}.tif")
    return test


def test_scores_of_perfect_and_empty_predictions(prepared, tmp_path):
    test = _perfect_predictions(prepared, tmp_path / "pred")
    first = test["name"].iloc[0]
    write_instance_map(tmp_path / "pred" / f"{first}.tif", np.zeros((64, 64), np.int32))
    table = score_predictions(prepared, tmp_path / "pred", tmp_path / "scores.csv", labels=LABELS)
    assert list(table.columns) == ["name", *LABELS, *METRICS, "n_true", "n_pred"]
    assert table.equals(pd.read_csv(tmp_path / "scores.csv", dtype={"name": str}))
    # metrics.py: an empty prediction of a non-empty map scores 0, an identical one 1
    empty, perfect = table.iloc[0], table.iloc[1]
    assert (empty[METRICS] == 0).all() and empty["n_pred"] == 0
    assert (perfect[METRICS] == 1).all() and perfect["n_pred"] == perfect["n_true"] == test["n_nuclei"].iloc[1]
    assert (table["seed"] == 0).all() and (table["trainset"] == "real").all()


def test_a_missing_prediction_is_named_and_nothing_is_written(prepared, tmp_path):
    test = _perfect_predictions(prepared, tmp_path / "pred")
    gone = tmp_path / "pred" / f"{test['name'].iloc[1]}.tif"
    gone.unlink()
    with pytest.raises(InputDataError, match=str(gone)):
        score_predictions(prepared, tmp_path / "pred", tmp_path / "scores.csv", labels=LABELS)
    assert not (tmp_path / "scores.csv").exists()
    with pytest.raises(ValueError, match="dice"):
        score_predictions(prepared, tmp_path / "pred", tmp_path / "scores.csv", labels={"dice": 1})


def _per_image(path, seed, values):
    rows = [
        {"name": f"img{i}", **LABELS, "seed": seed, **{m: v for m in METRICS}, "n_true": 3, "n_pred": 2}
        for i, v in enumerate(values)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_summary_is_the_mean_over_test_images_per_run(tmp_path):
    a = _per_image(tmp_path / "a.csv", 0, [0.5, 0.7, 0.9])
    b = _per_image(tmp_path / "b.csv", 1, [0.2, 0.4, 0.6])
    summary = summarize_metrics([a, b], tmp_path / "metrics.csv", tmp_path / "per_image.csv")
    assert list(summary.columns) == [*LABELS, *METRICS, "n_images"]
    assert summary["seed"].tolist() == [0, 1] and summary["n_images"].tolist() == [3, 3]
    for metric in METRICS:  # hand-computed: (0.5 + 0.7 + 0.9) / 3 and (0.2 + 0.4 + 0.6) / 3
        assert summary[metric].tolist() == pytest.approx([0.7, 0.4])
    assert pd.read_csv(tmp_path / "metrics.csv").shape == (2, len(LABELS) + len(METRICS) + 1)
    assert len(pd.read_csv(tmp_path / "per_image.csv")) == 6


def test_summary_refuses_an_image_scored_twice_and_writes_nothing(tmp_path):
    a = _per_image(tmp_path / "a.csv", 0, [0.5, 0.7])
    with pytest.raises(InputDataError, match="twice"):
        summarize_metrics([a, a], tmp_path / "metrics.csv", tmp_path / "per_image.csv")
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "per_image.csv").exists()
    with pytest.raises(InputDataError, match="missing.csv"):
        summarize_metrics([a, tmp_path / "missing.csv"], tmp_path / "metrics.csv", tmp_path / "per_image.csv")
