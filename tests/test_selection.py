"""Choosing the weights of a trained diffusion model by a measured score (nudiff.diffusion.selection, and
nudiff.assessment.image_selection for the image model)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tiny_models import TRAINING_NET, train_tiny_segmenter

import nudiff.assessment.image_selection as image_selection
from nudiff.assessment.image_selection import select_image_weights
from nudiff.diffusion.quality import colour_distance, colour_statistics, real_pairs
from nudiff.diffusion.selection import (
    Candidate,
    choose_candidate,
    conditioning_maps,
    select_structure_weights,
    structure_score,
    weight_candidates,
)
from nudiff.diffusion.synthesis import (
    CleanupSettings,
    SamplingSettings,
    chosen_weights,
    sample_structures,
    structure_batch,
)
from nudiff.diffusion.training import load_diffusion_model, train_diffusion_model
from nudiff.errors import InputDataError
from nudiff.samples import read_sample_table, write_sample_table

TRAINING = {"iterations": 4, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "ema_decay": 0.9, "seed": 0}
SAMPLING = SamplingSettings(sampler="ddim", steps=5, batch_size=2, seed=7)
# A watershed that keeps tiny objects, so an untrained model still yields some nuclei.
WATERSHED = {"min_object_size": 0, "min_marker_size": 0, "opening_size": 1}
SNAPSHOT_CANDIDATES = ["ema@2", "model@2", "ema@4", "model@4"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_labelled_csv):
    """Structure and image models of 4 steps with snapshots at steps 2 and 4, and a structure
    model of 2 steps without snapshots (``final_structure.pt``)."""
    root = tmp_path_factory.mktemp("selection_models")
    runs = [("structure", "structure", 2), ("image", "image", 2), ("structure", "final_structure", None)]
    for kind, name, every in runs:
        extra = {"snapshot_every": every} if every else {"iterations": 2}
        train_diffusion_model(
            kind,
            tiny_labelled_csv,
            root / f"{name}.pt",
            network=TRAINING_NET,
            training={**TRAINING, **extra},
            schedule={"timesteps": 20},
            checkpoint_dir=root / f"ckpt_{name}",
        )
    return root


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, tiny_prepared):
    # long enough that its judgement separates the candidates (2 steps can leave it finding no nucleus)
    return train_tiny_segmenter(tiny_prepared, tmp_path_factory.mktemp("selection_segmenter"), iterations=8, lr=1e-3)


def outputs(tmp_path, stem="selection"):
    return {"out_csv": tmp_path / f"{stem}.csv", "out_json": tmp_path / f"{stem}.json"}


def write_choice(path, weights, step):
    path.write_text(json.dumps({"chosen": {"weights": weights, "step": step}}))
    return path


# ---------------------------------------------------------------- candidates


def test_candidate_names():
    """A candidate is named weights@step, the final weights weights@final."""
    assert Candidate("ema", 2).name == "ema@2"
    assert Candidate("model", 250).name == "model@250"
    assert Candidate("model", None).name == "model@final"
    assert Candidate("ema", 0).name == "ema@0"  # step 0 is a step, not the final weights


def test_candidates_are_every_snapshots_ema_and_raw_weights_in_step_order(models):
    """snapshot_every 2 over 4 steps keeps steps 2 and 4: EMA then raw of each, in step order.
    Without snapshots the final EMA and raw weights (step None) are the candidates."""
    assert weight_candidates(models / "structure.pt") == [
        Candidate("ema", 2),
        Candidate("model", 2),
        Candidate("ema", 4),
        Candidate("model", 4),
    ]
    assert weight_candidates(models / "final_structure.pt") == [Candidate("ema", None), Candidate("model", None)]


def test_the_best_finite_score_is_chosen():
    """Lowest wins when lower is better, highest otherwise; a NaN score is never chosen (here it
    would be neither), and a missing step is the final weights."""
    table = pd.DataFrame(
        {
            "candidate": ["ema@2", "model@2", "ema@4", "model@final"],
            "weights": ["ema", "model", "ema", "model"],
            "step": [2, 2, 4, None],
            "score": [3.0, np.nan, 1.0, 2.0],
        }
    )
    assert choose_candidate(table, "score", higher_is_better=False) == Candidate("ema", 4)
    assert choose_candidate(table, "score", higher_is_better=True) == Candidate("ema", 2)
    table.loc[0, "score"] = np.nan
    assert choose_candidate(table, "score", higher_is_better=True) == Candidate("model", None)
    chosen = choose_candidate(table, "score", higher_is_better=True)
    assert chosen.step is None and chosen.name == "model@final"


def test_no_candidate_with_a_score_is_an_error():
    table = pd.DataFrame({"candidate": ["ema@2", "model@2"], "weights": ["ema", "model"], "step": [2, 2]})
    table["aji"] = np.nan
    with pytest.raises(InputDataError, match="aji is undefined for all"):
        choose_candidate(table, "aji", higher_is_better=True)


# ---------------------------------------------------------------- structure score


def ellipses(shapes, size: int = 48) -> np.ndarray:
    """Ellipses ``[(y, x, ry, rx), ...]`` (axis-aligned), ids 1..n in that order."""
    inst = np.zeros((size, size), np.int32)
    rows, cols = np.ogrid[:size, :size]
    for k, (y, x, ry, rx) in enumerate(shapes, start=1):
        inst[((rows - y) / ry) ** 2 + ((cols - x) / rx) ** 2 <= 1] = k
    return inst


# 2, 1 and 3 nuclei of differing sizes and elongations (every statistic has a real spread),
# none touching the border even when grown by 4 px
LAYOUT = [[(12, 12, 3, 5), (34, 32, 4, 4)], [(24, 24, 5, 3)], [(12, 34, 3, 3), (34, 12, 4, 6), (24, 24, 2, 4)]]


def grown(px: int) -> list[np.ndarray]:
    return [ellipses([(y, x, ry + px, rx + px) for y, x, ry, rx in shapes]) for shapes in LAYOUT]


def test_structures_like_the_real_ones_score_zero_and_bigger_nuclei_score_worse():
    """The real maps themselves: every W1 and KS distance is 0. Nuclei grown by 4 px are further from the real
    sizes than nuclei grown by 1 px: larger area and area-fraction distances, larger score.
    The counts per patch are unchanged, so that distance stays 0."""
    real = grown(0)
    same = structure_score(real, grown(0))
    statistics = ["nuclei_per_patch", "foreground_fraction", "area", "eccentricity", "solidity"]
    assert same == {
        **{f"w1_{k}": 0.0 for k in statistics},
        **{f"ks_{k}": 0.0 for k in statistics},
        "score": 0.0,
    }
    close, far = structure_score(real, grown(1)), structure_score(real, grown(4))
    assert close["w1_nuclei_per_patch"] == far["w1_nuclei_per_patch"] == 0.0
    assert close["ks_nuclei_per_patch"] == far["ks_nuclei_per_patch"] == 0.0
    assert 0 < close["w1_area"] < far["w1_area"]
    assert 0 < close["w1_foreground_fraction"] < far["w1_foreground_fraction"]
    # KS is bounded: it may saturate, but never ranks the farther sizes as closer
    assert 0 < close["ks_area"] <= far["ks_area"] <= 1
    assert 0 < close["score"] <= far["score"]


def test_structure_score_is_the_mean_of_the_scaled_distances_by_hand():
    """Real nuclei per patch 2, 1, 3 (sd 1); three copies of the 3-nuclei map have 3, 3, 3:
    W1 = (1 + 2 + 0) / 3 = 1, so 1 sd. The score is the mean of the five statistics."""
    real = grown(0)
    scores = structure_score(real, [real[2]] * 3)
    assert scores["w1_nuclei_per_patch"] == pytest.approx(1.0)
    distances = [v for k, v in scores.items() if k.startswith("ks_")]
    assert len(distances) == 5 and scores["score"] == pytest.approx(np.mean(distances))
    # nuclei per patch: real 2, 1, 3 against 3, 3, 3: the empirical CDFs differ by 2/3 at 2
    assert scores["ks_nuclei_per_patch"] == pytest.approx(2 / 3)


def test_structures_without_a_whole_nucleus_score_nan():
    """No nucleus at all: per-patch counts differ by (2 + 1 + 3) / 3 = 2 sd, but nucleus size
    and shape are undefined, so the score is NaN (such a candidate cannot be chosen). The same
    when the only nucleus touches the border (it counts, but is not measured)."""
    real = grown(0)
    empty = structure_score(real, [np.zeros((48, 48), np.int32)] * 2)
    assert empty["w1_nuclei_per_patch"] == pytest.approx(2.0)
    assert np.isnan(empty["w1_area"]) and np.isnan(empty["score"])
    border = structure_score(real, [ellipses([(3, 3, 3, 3)])])
    assert border["w1_nuclei_per_patch"] == pytest.approx(1.0)  # (0 + 1 + 2) / 3 against 1, 1, 1
    assert np.isnan(border["score"])


# ---------------------------------------------------------------- structure weights


def select_structures(models, labelled, out, model="structure.pt", **kwargs):
    settings = dict(n=4, sampling=SAMPLING, watershed=WATERSHED, cleanup=CleanupSettings())
    return select_structure_weights(models / model, labelled, **outputs(out), **{**settings, **kwargs})


def test_structure_selection_scores_every_candidate_and_keeps_the_lowest(models, tiny_labelled_csv, tmp_path):
    """One row per candidate in order, with each statistic's distance; the JSON names the row of
    the lowest score, reads back through chosen_weights, and a second run writes the same
    bytes. The score of model@4 is that of its own 4 samples of stream select_structure."""
    chosen = select_structures(models, tiny_labelled_csv, tmp_path / "a")
    table = pd.read_csv(tmp_path / "a" / "selection.csv")
    assert table["candidate"].tolist() == SNAPSHOT_CANDIDATES
    assert table["weights"].tolist() == ["ema", "model", "ema", "model"]
    assert table["step"].tolist() == [2, 2, 4, 4]
    for column in ["w1_nuclei_per_patch", "w1_area", "w1_solidity", "score", "n_nuclei"]:
        assert column in table.columns
    assert np.isfinite(table["score"]).all() and table["score"].nunique() > 1

    record = json.loads((tmp_path / "a" / "selection.json").read_text())
    best = table.loc[table["candidate"] == chosen.name].iloc[0]
    assert best["score"] == table["score"].min()
    assert record["chosen"] == {"weights": best["weights"], "step": int(best["step"])}
    assert record["name"] == chosen.name and record["score"] == "score"
    assert record["value"] == pytest.approx(best["score"])
    assert chosen_weights(tmp_path / "a" / "selection.json") == {"weights": chosen.weights, "step": chosen.step}

    select_structures(models, tiny_labelled_csv, tmp_path / "b")
    for name in ("selection.csv", "selection.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    model, schedule, _ = load_diffusion_model(models / "structure.pt", weights="model", step=4)
    maps = []
    for batch in (np.array([0, 1]), np.array([2, 3])):
        out = structure_batch(
            model,
            schedule,
            32,
            batch,
            SAMPLING,
            watershed=WATERSHED,
            cleanup=CleanupSettings(),
            device="cpu",
            stream="select_structure",
        )
        maps.extend(out["instances"])
    expected = structure_score(real_pairs(tiny_labelled_csv)[1], maps)
    assert table.iloc[3]["score"] == pytest.approx(expected["score"])
    assert table.iloc[3]["n_nuclei"] == pytest.approx(np.mean([len(np.unique(m[m > 0])) for m in maps]))


def test_without_snapshots_the_final_weights_compete(models, tiny_labelled_csv, tmp_path):
    """A model trained without snapshots: rows ema@final and model@final with no step; the JSON's
    step is null, which chosen_weights reads as the final weights."""
    chosen = select_structures(models, tiny_labelled_csv, tmp_path, model="final_structure.pt")
    table = pd.read_csv(tmp_path / "selection.csv")
    assert table["candidate"].tolist() == ["ema@final", "model@final"]
    assert table["step"].isna().all()
    assert chosen.step is None
    assert json.loads((tmp_path / "selection.json").read_text())["chosen"]["step"] is None
    assert chosen_weights(tmp_path / "selection.json") == {"weights": chosen.weights, "step": None}


def test_no_candidate_with_a_nucleus_is_an_error_and_writes_nothing(models, tiny_labelled_csv, tmp_path):
    """A cleanup that removes every nucleus leaves every score NaN: no choice, no output."""
    with pytest.raises(InputDataError, match="no candidate weights"):
        select_structures(models, tiny_labelled_csv, tmp_path, cleanup=CleanupSettings(min_area=10**6))
    assert not (tmp_path / "selection.csv").exists() and not (tmp_path / "selection.json").exists()


def test_sampling_uses_the_weights_the_selection_names(models, tmp_path):
    """A JSON naming the raw weights of step 2: sample_structures draws exactly what those weights
    give (stream structure), not what the final EMA weights (no selection) give."""
    kwargs = dict(n_total=2, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED)
    choice = write_choice(tmp_path / "choice.json", "model", 2)
    sample_structures(models / "structure.pt", tmp_path / "chosen.npz", selection=choice, **kwargs)
    sample_structures(models / "structure.pt", tmp_path / "final.npz", **kwargs)

    model, schedule, _ = load_diffusion_model(models / "structure.pt", weights="model", step=2)
    expected = structure_batch(
        model, schedule, 32, np.arange(2), SAMPLING, watershed=WATERSHED, cleanup=CleanupSettings(), device="cpu"
    )
    with np.load(tmp_path / "chosen.npz") as chosen, np.load(tmp_path / "final.npz") as final:
        np.testing.assert_allclose(chosen["sampled_structures"], expected["sampled_structures"], atol=1e-6)
        assert not np.allclose(chosen["sampled_structures"], final["sampled_structures"], atol=1e-4)


def test_chosen_weights_default_and_unreadable_selections(tmp_path):
    """No selection: the final EMA weights. A file that is not JSON, lacks ``chosen`` or is
    missing is an InputDataError naming it."""
    assert chosen_weights(None) == {"weights": "ema", "step": None}
    assert chosen_weights(write_choice(tmp_path / "ok.json", "model", 6)) == {"weights": "model", "step": 6}
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"chosen": {"weights": "ema", ')
    with pytest.raises(InputDataError, match="corrupt.json"):
        chosen_weights(corrupt)
    other = tmp_path / "other.json"
    other.write_text('{"name": "ema@2"}')
    with pytest.raises(InputDataError, match="other.json"):
        chosen_weights(other)
    with pytest.raises(InputDataError, match="missing.json"):
        chosen_weights(tmp_path / "missing.json")


# ---------------------------------------------------------------- image weights


def test_conditioning_maps_are_evenly_spaced_maps_with_nuclei(tiny_labelled_csv):
    """Of the 6 tiny labelled patches holding a nucleus, 4 evenly spaced ones are positions
    0, 5/3, 10/3, 5 rounded: 0, 2, 3, 5. 2 are the first and the last; more than 6 asked gives
    each of the 6 once."""
    with_nuclei = [m for m in real_pairs(tiny_labelled_csv)[1] if m.max() > 0]
    assert len(with_nuclei) == 6

    def same(maps, positions):
        return len(maps) == len(positions) and all(np.array_equal(m, with_nuclei[p]) for m, p in zip(maps, positions))

    assert same(conditioning_maps(tiny_labelled_csv, 4), [0, 2, 3, 5])
    assert same(conditioning_maps(tiny_labelled_csv, 2), [0, 5])
    assert same(conditioning_maps(tiny_labelled_csv, 10), [0, 1, 2, 3, 4, 5])


def test_conditioning_needs_a_labelled_nucleus(tiny_labelled_csv, tmp_path):
    """A sample table of only the empty patches of the tiny set has nothing to condition on."""
    table = read_sample_table(tiny_labelled_csv)
    empty = [m.max() == 0 for m in real_pairs(tiny_labelled_csv)[1]]
    assert 0 < sum(empty) < len(table)
    write_sample_table(table[empty], tmp_path / "empty.csv")
    with pytest.raises(InputDataError, match="empty.csv"):
        conditioning_maps(tmp_path / "empty.csv", 3)


def test_image_selection_judges_every_candidate_and_keeps_the_highest_score(
    models, segmenter, tiny_labelled_csv, tmp_path, monkeypatch
):
    """Every candidate draws images for the same 3 conditioning maps (stream select_image), each
    its own images; the CSV holds the mean Dice, AJI and PQ of the segmenter's judgement per
    candidate, the colour KS of its images against the real labelled patches and the score
    aji - colour_ks; the JSON holds the highest score, and a second run writes the same bytes."""
    sampled, judged = [], []
    original_sample, original_judge = image_selection.sample_conditioned_images, image_selection.judge_images

    def recording_sample(model, schedule, maps, sampling, *, device, stream):
        images = original_sample(model, schedule, maps, sampling, device=device, stream=stream)
        sampled.append((maps, stream, images))
        return images

    def recording_judge(*args, **kwargs):
        scores = original_judge(*args, **kwargs)
        judged.append(scores)
        return scores

    monkeypatch.setattr(image_selection, "sample_conditioned_images", recording_sample)
    monkeypatch.setattr(image_selection, "judge_images", recording_judge)
    kwargs = dict(n=3, sampling=SAMPLING)
    chosen = select_image_weights(
        models / "image.pt", tiny_labelled_csv, segmenter, **outputs(tmp_path / "a"), **kwargs
    )

    expected_maps = conditioning_maps(tiny_labelled_csv, 3)
    assert len(sampled) == len(judged) == 4
    for maps, stream, images in sampled:
        assert stream == "select_image"
        assert len(maps) == 3 and all(np.array_equal(a, b) for a, b in zip(maps, expected_maps))
        assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert not np.array_equal(sampled[0][2], sampled[2][2])  # steps 2 and 4 draw different images

    table = pd.read_csv(tmp_path / "a" / "selection.csv")
    assert table.columns.tolist() == ["candidate", "weights", "step", "dice", "aji", "pq", "colour_ks", "score"]
    assert table["candidate"].tolist() == SNAPSHOT_CANDIDATES
    real_colour = colour_statistics(real_pairs(tiny_labelled_csv)[0])
    for (_, row), scores, (_, _, images) in zip(table.iterrows(), judged, sampled):
        for score in ("dice", "aji", "pq"):
            assert row[score] == pytest.approx(scores[score].mean())
        assert row["colour_ks"] == pytest.approx(colour_distance(real_colour, colour_statistics(images))["colour_ks"])
        assert row["score"] == pytest.approx(row["aji"] - row["colour_ks"])
    assert table["score"].nunique() > 1  # the highest and the lowest differ: the direction matters
    record = json.loads((tmp_path / "a" / "selection.json").read_text())
    assert chosen.name == table.loc[table["score"].idxmax(), "candidate"]
    assert record["chosen"] == {"weights": chosen.weights, "step": chosen.step}
    assert record["score"] == "score" and record["value"] == pytest.approx(table["score"].max())

    select_image_weights(models / "image.pt", tiny_labelled_csv, segmenter, **outputs(tmp_path / "b"), **kwargs)
    for name in ("selection.csv", "selection.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_image_selection_needs_the_image_model(models, segmenter, tiny_labelled_csv, tmp_path):
    with pytest.raises(InputDataError, match="expected 'image'"):
        select_image_weights(
            models / "structure.pt", tiny_labelled_csv, segmenter, **outputs(tmp_path), n=2, sampling=SAMPLING
        )
    assert not (tmp_path / "selection.csv").exists() and not (tmp_path / "selection.json").exists()
