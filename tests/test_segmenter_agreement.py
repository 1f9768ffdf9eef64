"""The segmenter's judgement of synthetic pairs (nudiff.assessment.segmenter_agreement)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from drawn import discs, write_pairs, write_real_samples
from skimage.measure import label
from tiny_models import train_tiny_segmenter

from nudiff.assessment import segmenter_agreement as agreement
from nudiff.datasets.demo import make_demo_dataset
from nudiff.datasets.prepare import prepare_dataset
from nudiff.datasets.sources import list_source_items
from nudiff.errors import InputDataError

# three pairs whose nuclei never overlap another pair's: image i against map i-1 shares no pixel
MAPS = [discs([(8, 8), (8, 24)], 5, 32), discs([(24, 8)], 5, 32), discs([(24, 24), (16, 16)], 3, 32)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    make_demo_dataset(root / "raw", n_train=1, n_test=1, image_size=64)
    prepare_dataset(list_source_items("folder", root / "raw"), root / "prepared")
    return train_tiny_segmenter(root / "prepared", root)


@pytest.fixture
def reference_csv(tmp_path):
    """Two real validation patches, painted as the pairs are."""
    return write_real_samples(tmp_path / "validation", [MAPS[0], MAPS[2]])


def outputs(tmp_path):
    return {"out_csv": tmp_path / "summary.csv", "out_per_pair_csv": tmp_path / "per_pair.csv"}


def test_scores_against_maps_by_hand():
    table = agreement.score_against_maps([MAPS[0], np.zeros_like(MAPS[1])], [MAPS[0], MAPS[1]])
    assert table[["dice", "aji", "pq"]].iloc[0].tolist() == [1.0, 1.0, 1.0]  # the map itself
    assert table[["dice", "aji", "pq"]].iloc[1].tolist() == [0.0, 0.0, 0.0]  # nothing found
    assert table[["n_true", "n_pred"]].values.tolist() == [[2, 2], [1, 0]]
    with pytest.raises(ValueError, match="2 predictions but 1 maps"):
        agreement.score_against_maps(MAPS[:2], MAPS[:1])


def test_a_segmenter_that_sees_the_painted_nuclei_agrees_fully_and_chance_is_zero(
    tmp_path, model_file, reference_csv, monkeypatch
):
    # stand-in for Hover-Net: the purple pixels, split into connected nuclei
    seen = lambda model, rgb, **kwargs: label(rgb[..., 0] < 150).astype(np.int32)  # noqa: E731
    monkeypatch.setattr(agreement, "predict_instances", seen)
    shards = [write_pairs(tmp_path / "p0.npz", MAPS[:2]), write_pairs(tmp_path / "p1.npz", MAPS[2:])]
    summary = agreement.segment_synthetic_pairs(model_file, shards, reference_csv, **outputs(tmp_path)).set_index("set")

    # the real level: the same judge on the real validation patches, against their maps
    real = summary.loc[agreement.REAL, ["n", "dice_mean", "aji_mean", "pq_mean"]].tolist()
    assert real == pytest.approx([2, 1.0, 1.0, 1.0])
    assert summary.loc[agreement.SYNTHETIC, ["n", "dice_mean", "aji_mean", "pq_mean"]].tolist() == [3, 1.0, 1.0, 1.0]
    assert summary.loc[agreement.CHANCE, ["n", "dice_mean", "aji_mean"]].tolist() == [3, 0.0, 0.0]
    per_pair = pd.read_csv(tmp_path / "per_pair.csv")
    assert per_pair["pair"].tolist() == [0, 1, 2] and per_pair["n_true"].tolist() == [2, 1, 2]
    assert pd.read_csv(tmp_path / "summary.csv")["set"].tolist() == list(summary.index)


def test_the_real_segmenter_runs_and_is_deterministic(tmp_path, model_file, reference_csv):
    shards = [write_pairs(tmp_path / "p.npz", MAPS)]
    first = agreement.segment_synthetic_pairs(model_file, shards, reference_csv, **outputs(tmp_path / "a"))
    again = agreement.segment_synthetic_pairs(model_file, shards, reference_csv, **outputs(tmp_path / "b"))
    pd.testing.assert_frame_equal(first, again)
    assert first["n"].tolist() == [2, 3, 3]
    assert first[["dice_mean", "aji_mean"]].apply(lambda s: s.between(0, 1)).all().all()


def test_bad_input_is_named_and_nothing_is_written(tmp_path, model_file, reference_csv):
    empty = tmp_path / "empty.npz"
    np.savez(
        empty,
        sample_index=np.zeros(0, int),
        structures=np.zeros((0, 32, 32, 3)),
        instances=np.zeros((0, 32, 32), np.int32),
        images=np.zeros((0, 32, 32, 3), np.uint8),
    )
    with pytest.raises(InputDataError, match="no synthetic pair"):
        agreement.segment_synthetic_pairs(model_file, [empty], reference_csv, **outputs(tmp_path))
    shards = [write_pairs(tmp_path / "p.npz", MAPS)]
    with pytest.raises(InputDataError, match="missing.csv"):
        agreement.segment_synthetic_pairs(model_file, shards, tmp_path / "missing.csv", **outputs(tmp_path))
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "per_pair.csv").exists()
