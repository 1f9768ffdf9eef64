"""The guidance-scale sweep judged by the labelled segmenter (nudiff.assessment.guidance_sweep)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from drawn import discs, painted, write_pairs, write_real_samples
from skimage.measure import label
from tiny_models import TRAINING_NET, train_tiny_segmenter

import nudiff.assessment.guidance_sweep as sweep
import nudiff.assessment.segmenter_agreement as agreement
from nudiff.assessment.segmenter_agreement import CHANCE, REAL, SYNTHETIC
from nudiff.diffusion.synthesis import SamplingSettings
from nudiff.diffusion.training import train_diffusion_model
from nudiff.errors import InputDataError

TRAINING = {"iterations": 4, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "ema_decay": 0.9, "seed": 0}
SAMPLING = SamplingSettings(sampler="ddim", steps=5, batch_size=2, seed=7)
# three pairs whose nuclei never overlap another pair's: image i against map i-1 shares no pixel
MAPS = [discs([(8, 8), (8, 24)], 5, 32), discs([(24, 8)], 5, 32), discs([(24, 24), (16, 16)], 3, 32)]


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, tiny_labelled_csv):
    """A tiny image model of 4 steps with snapshots at steps 2 and 4."""
    root = tmp_path_factory.mktemp("sweep_model")
    train_diffusion_model(
        "image",
        tiny_labelled_csv,
        root / "image.pt",
        network=TRAINING_NET,
        training={**TRAINING, "snapshot_every": 2},
        schedule={"timesteps": 20},
        checkpoint_dir=root / "ckpt",
    )
    return root / "image.pt"


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, tiny_prepared):
    return train_tiny_segmenter(tiny_prepared, tmp_path_factory.mktemp("sweep_segmenter"))


@pytest.fixture
def reference_csv(tmp_path):
    """Two real validation patches (the judge's real level)."""
    return write_real_samples(tmp_path / "validation", [MAPS[0], MAPS[1]])


@pytest.fixture
def shards(tmp_path):
    """MAPS in two shards: 2 pairs, then 1."""
    return [write_pairs(tmp_path / "p0.npz", MAPS[:2]), write_pairs(tmp_path / "p1.npz", MAPS[2:])]


def run(image_model, shards, segmenter, reference_csv, tmp_path, **kwargs):
    settings = dict(scales=[0, 2], n=3, sampling=SAMPLING)
    return sweep.guidance_sweep(
        image_model,
        shards,
        segmenter,
        reference_csv,
        out_csv=tmp_path / "sweep.csv",
        out_png=tmp_path / "sweep.png",
        **{**settings, **kwargs},
    )


def test_each_scale_samples_with_its_guidance_and_is_judged_against_its_labels(
    image_model, shards, segmenter, reference_csv, tmp_path, monkeypatch
):
    """Scales 0 and 2: one row of the real validation patches (the judge's means on them), then synthetic
    pairs and chance for each scale. Each scale's images are sampled for the 3 labels of both
    shards with that guidance (stream sweep_image, all else as given), so scales 0 and 2 give
    different images; those are judged against their labels, then against the labels rolled by
    one (chance), and the rows hold the means of those judgements."""
    sampled, judged = [], []
    original_sample, original_judge = sweep.sample_conditioned_images, sweep.judge_images

    def recording_sample(model, schedule, maps, sampling, *, device, stream):
        images = original_sample(model, schedule, maps, sampling, device=device, stream=stream)
        sampled.append((sampling, stream, maps, images))
        return images

    def recording_judge(segmenter, meta, images, maps, **kwargs):
        scores = original_judge(segmenter, meta, images, maps, **kwargs)
        judged.append((images, maps, scores))
        return scores

    real_scores = pd.DataFrame({"dice": [0.8, 0.6], "aji": [0.5, 0.3], "pq": [0.4, 0.2]})
    real_judged = []

    def judge_real(segmenter, meta, validation_samples, **kwargs):
        real_judged.append(validation_samples)
        return real_scores

    monkeypatch.setattr(sweep, "sample_conditioned_images", recording_sample)
    monkeypatch.setattr(sweep, "judge_images", recording_judge)
    monkeypatch.setattr(sweep, "judge_real_patches", judge_real)
    table = run(image_model, shards, segmenter, reference_csv, tmp_path)

    written = pd.read_csv(tmp_path / "sweep.csv")
    assert written.columns.tolist() == sweep.COLUMNS
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
    assert written["set"].tolist() == [REAL, SYNTHETIC, CHANCE, SYNTHETIC, CHANCE]
    assert real_judged == [reference_csv]
    assert written["guidance_scale"].tolist()[1:] == [0, 0, 2, 2] and np.isnan(written["guidance_scale"][0])
    assert written["n"].tolist() == [2, 3, 3, 3, 3]
    real = written.iloc[0][["dice_mean", "aji_mean", "pq_mean"]].tolist()
    assert real == pytest.approx([0.7, 0.4, 0.3])
    assert (tmp_path / "sweep.png").stat().st_size > 1000

    assert [s.guidance_scale for s, *_ in sampled] == [0.0, 2.0]
    for sampling, stream, maps, images in sampled:
        assert asdict(sampling) == {**asdict(SAMPLING), "guidance_scale": sampling.guidance_scale}
        assert stream == "sweep_image"
        assert len(maps) == 3 and all(np.array_equal(a, b) for a, b in zip(maps, MAPS))
        assert images.shape == (3, 32, 32, 3)
    assert not np.array_equal(sampled[0][3], sampled[1][3])

    rolled = [MAPS[2], MAPS[0], MAPS[1]]
    assert len(judged) == 4
    for k, (images, maps, scores) in enumerate(judged):
        assert images is sampled[k // 2][3]
        expected_maps = MAPS if k % 2 == 0 else rolled
        assert all(np.array_equal(a, b) for a, b in zip(maps, expected_maps))
        row = written.iloc[k + 1]
        for score in ("dice", "aji", "pq"):
            assert row[f"{score}_mean"] == pytest.approx(scores[score].mean())


def test_images_that_show_their_labels_agree_fully_and_chance_is_zero(
    image_model, shards, segmenter, reference_csv, tmp_path, monkeypatch
):
    """Stand-ins: at w = 2 each image is its label painted, at w = 0 a blank one; the segmenter
    sees the purple pixels. w = 2 agrees fully (1, 1, 1) and its chance row is 0 (rolled maps
    share no pixel); w = 0 finds nothing (0 everywhere)."""

    def painted_at_two(model, schedule, maps, sampling, *, device, stream):
        return np.stack([painted(m if sampling.guidance_scale == 2 else np.zeros_like(m)) for m in maps])

    monkeypatch.setattr(sweep, "sample_conditioned_images", painted_at_two)
    seen = lambda model, rgb, **kwargs: label(rgb[..., 0] < 150).astype(np.int32)  # noqa: E731
    monkeypatch.setattr(agreement, "predict_instances", seen)
    table = run(image_model, shards, segmenter, reference_csv, tmp_path)
    scores = table[["dice_mean", "aji_mean", "pq_mean"]].values.tolist()
    assert scores[1:] == [[0.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3]


def test_the_selection_names_the_weights_to_sample(
    image_model, shards, segmenter, reference_csv, tmp_path, monkeypatch
):
    """A selection JSON of raw step-2 weights loads those; without one, the final EMA weights."""
    loaded = []
    original = sweep.load_diffusion_model

    def recording(path, **kwargs):
        loaded.append(kwargs)
        return original(path, **kwargs)

    monkeypatch.setattr(sweep, "load_diffusion_model", recording)
    choice = tmp_path / "choice.json"
    choice.write_text(json.dumps({"chosen": {"weights": "model", "step": 2}}))
    run(image_model, shards, segmenter, reference_csv, tmp_path / "a", scales=[1], n=2, selection=choice)
    run(image_model, shards, segmenter, reference_csv, tmp_path / "b", scales=[1], n=2)
    assert [(k["weights"], k["step"], k["expect"]) for k in loaded] == [("model", 2, "image"), ("ema", None, "image")]
    first, default = pd.read_csv(tmp_path / "a" / "sweep.csv"), pd.read_csv(tmp_path / "b" / "sweep.csv")
    assert first["n"].tolist() == default["n"].tolist() == [2, 2, 2]  # n = 2 of the 3 pairs


@pytest.mark.parametrize("scales", [[], [1, -0.5]], ids=["none", "negative"])
def test_scales_must_be_given_and_non_negative(image_model, shards, segmenter, reference_csv, tmp_path, scales):
    with pytest.raises(ValueError, match="scales"):
        run(image_model, shards, segmenter, reference_csv, tmp_path, scales=scales)
    assert not (tmp_path / "sweep.csv").exists() and not (tmp_path / "sweep.png").exists()


def test_fewer_than_two_pairs_is_an_error_and_writes_nothing(image_model, segmenter, reference_csv, tmp_path):
    """Chance needs another pair's labels: one pair (a shard of one, or n = 1 of three) is refused."""
    one = [write_pairs(tmp_path / "one.npz", MAPS[:1])]
    with pytest.raises(InputDataError, match="at least 2 synthetic pairs.* 1"):
        run(image_model, one, segmenter, reference_csv, tmp_path)
    three = [write_pairs(tmp_path / "three.npz", MAPS)]
    with pytest.raises(InputDataError, match="at least 2"):
        run(image_model, three, segmenter, reference_csv, tmp_path, n=1)
    assert not (tmp_path / "sweep.csv").exists() and not (tmp_path / "sweep.png").exists()
