"""The arms of the comparison: recipes and controls (nudiff.arms), the validation hold-out
(nudiff.holdout), the shuffled pairs (nudiff.diffusion.shuffled_pairs) and the statistics of
arm against control (nudiff.arm_comparison)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from drawn import discs, painted, write_pairs

from nudiff.arm_comparison import compare_arms, plot_pooled, pool_blocks, t_interval
from nudiff.arms import arm_training, check_arms, comparisons, control_of
from nudiff.diffusion.shuffled_pairs import build_shuffled_set, derangement
from nudiff.errors import ConfigError, InputDataError
from nudiff.holdout import hold_out_validation
from nudiff.io.images import write_image, write_instance_map
from nudiff.samples import SAMPLE_COLUMNS, SampleReader, read_sample_table, write_sample_table

ALL = ["labelled", "augmented", "pretrained", "pretrained-real", "shuffled"]


def segmentation(**changes):
    base = {
        "models": ["hovernet"],
        "arms": list(ALL),
        "hovernet": {"training": {"epochs": 10, "synthetic_pretrain_epochs": 5, "mixing": "paired", "lr": 0.001}},
    }
    return {**base, **changes}


# ---------------------------------------------------------------- recipes and controls


def test_each_arm_lays_its_recipe_over_the_training_and_its_overrides_over_both():
    config = segmentation()
    config["hovernet"]["arm_training"] = {"labelled": {"epochs": 14}}
    labelled = arm_training("labelled", config, "hovernet")
    assert labelled["synthetic_pretrain_epochs"] == 0 and labelled["epochs"] == 14 and labelled["lr"] == 0.001
    union = arm_training("augmented", config, "hovernet")
    assert union["synthetic_pretrain_epochs"] == 0 and union["synthetic_per_batch"] == "auto" and union["epochs"] == 10
    pretrained, control = (arm_training(a, config, "hovernet") for a in ("pretrained", "pretrained-real"))
    assert pretrained["synthetic_pretrain_epochs"] == control["synthetic_pretrain_epochs"] == 5
    assert pretrained["synthetic_per_batch"] == control["synthetic_per_batch"] == 0
    assert (pretrained["pretrain_source"], control["pretrain_source"]) == ("synthetic", "real")
    assert {k: v for k, v in pretrained.items() if k != "pretrain_source"} == {
        k: v for k, v in control.items() if k != "pretrain_source"
    }
    # shuffled trains exactly as the arm of shuffled_recipe, and is compared with it
    assert arm_training("shuffled", config, "hovernet") == union
    config["shuffled_recipe"] = "pretrained"
    assert arm_training("shuffled", config, "hovernet") == pretrained and control_of("shuffled", config) == "pretrained"


def test_every_arm_is_set_against_its_control():
    assert comparisons(ALL, segmentation()) == [
        ("augmented", "labelled"),
        ("pretrained", "pretrained-real"),
        ("pretrained-real", "labelled"),
        ("shuffled", "augmented"),
        ("pretrained", "labelled"),
    ]
    assert comparisons(["labelled", "augmented"], segmentation()) == [("augmented", "labelled")]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": ["labelled", "pretrained"]}, "needs its control 'pretrained-real'"),
        ({"arms": ["augmented"]}, "'labelled' is required"),
        ({"arms": ["labelled", "augmentd"]}, "unknown arm"),
        ({"arms": ["labelled", "shuffled"]}, "needs its control 'augmented'"),
    ],
)
def test_arms_without_their_control_or_misspelt_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_arms(segmentation(**changes))


def test_pretraining_arms_need_pretraining_epochs_and_overrides_need_a_known_arm():
    config = segmentation()
    config["hovernet"]["training"]["synthetic_pretrain_epochs"] = 0
    with pytest.raises(ConfigError, match="synthetic_pretrain_epochs"):
        check_arms(config)
    # a preset tunes every arm; a block that trains some of them keeps the others' overrides
    config = segmentation(arms=["labelled", "augmented"])
    config["hovernet"]["arm_training"] = {"pretrained": {"epochs": 3}}
    check_arms(config)
    config["hovernet"]["arm_training"] = {"pretraned": {"epochs": 3}}
    with pytest.raises(ConfigError, match=r"arm_training: unknown arm\(s\) \['pretraned'\]"):
        check_arms(config)


# ---------------------------------------------------------------- the validation hold-out


def subset_table(tmp_path, n_images=5, patches_per_image=4):
    """A labelled subset: ``patches_per_image`` 32-px patches of each of ``n_images`` images."""
    rows = []
    for i in range(n_images):
        inst = discs([(16, 16), (40, 40)], 6, 64)
        write_image(tmp_path / f"img{i}.png", painted(inst))
        write_instance_map(tmp_path / f"img{i}.tif", inst)
        for k, (y, x) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)][:patches_per_image]):
            rows.append(
                (f"img{i}_{k}", "real", str(tmp_path / f"img{i}.png"), str(tmp_path / f"img{i}.tif"), -1, y, x, 32)
            )
    path = tmp_path / "labelled.csv"
    write_sample_table(pd.DataFrame(rows, columns=SAMPLE_COLUMNS), path)
    return path


def test_the_hold_out_keeps_whole_images_apart_and_is_seeded(tmp_path):
    labelled = subset_table(tmp_path)
    train, validation = hold_out_validation(labelled, tmp_path / "t.csv", tmp_path / "v.csv", fraction=0.4, seed=3)
    assert validation["image_file"].nunique() == 2 and len(train) + len(validation) == 20
    assert not set(train["image_file"]) & set(validation["image_file"])
    written = read_sample_table(tmp_path / "v.csv")
    assert written["sample_id"].tolist() == validation["sample_id"].tolist()
    _, again = hold_out_validation(labelled, tmp_path / "t2.csv", tmp_path / "v2.csv", fraction=0.4, seed=3)
    assert again["sample_id"].tolist() == validation["sample_id"].tolist()
    others = {
        tuple(
            hold_out_validation(labelled, tmp_path / "t3.csv", tmp_path / "v3.csv", fraction=0.4, seed=s)[1][
                "image_file"
            ].unique()
        )
        for s in range(6)
    }
    assert len(others) > 1


def test_bad_hold_outs_are_named_and_write_nothing(tmp_path):
    labelled = subset_table(tmp_path)
    with pytest.raises(ConfigError, match="validation.fraction"):
        hold_out_validation(labelled, tmp_path / "t.csv", tmp_path / "v.csv", fraction=0.0, seed=0)
    table = read_sample_table(labelled)
    table.loc[0, "origin"] = "synthetic"
    mixed = tmp_path / "mixed.csv"
    write_sample_table(table, mixed)
    with pytest.raises(InputDataError, match="real patches only"):
        hold_out_validation(mixed, tmp_path / "t.csv", tmp_path / "v.csv", fraction=0.2, seed=0)
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "v.csv").exists()


# ---------------------------------------------------------------- the shuffled pairs


def test_a_derangement_moves_every_element_and_is_seeded():
    for n in (2, 3, 10, 57):
        order = derangement(n, seed=n)
        assert sorted(order) == list(range(n)) and not (order == np.arange(n)).any()
        assert np.array_equal(order, derangement(n, seed=n))
    assert len({tuple(derangement(6, seed=s)) for s in range(20)}) > 5
    with pytest.raises(ValueError):
        derangement(1, seed=0)


def test_the_shuffled_set_gives_every_image_another_pairs_label(tmp_path):
    labelled = subset_table(tmp_path, n_images=1)
    maps = [discs([(8 + 4 * k, 16)], 4, 32) for k in range(5)]
    shards = [write_pairs(tmp_path / "p0.npz", maps[:3]), write_pairs(tmp_path / "p1.npz", maps[3:])]
    table = build_shuffled_set(labelled, shards, tmp_path / "shuffled.npz", tmp_path / "shuffled.csv", seed=0)
    assert (table["origin"] == "real").sum() == 4 and (table["origin"] == "synthetic").sum() == 5
    reader = SampleReader(read_sample_table(tmp_path / "shuffled.csv"))
    with np.load(tmp_path / "shuffled.npz") as shard:
        label_of = shard["label_of"]
    for k in range(5):
        rgb, inst = reader[4 + k]
        assert np.array_equal(rgb, painted(maps[k]))  # the images in their order
        assert label_of[k] != k and np.array_equal(inst, maps[label_of[k]])  # each with another's label
    with pytest.raises(InputDataError, match="at least 2"):
        one = [write_pairs(tmp_path / "one.npz", maps[:1])]
        build_shuffled_set(labelled, one, tmp_path / "x.npz", tmp_path / "x.csv", seed=0)
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------- arm against control


def metrics_table(differences: dict[int, float], base: float = 0.4) -> pd.DataFrame:
    rows = []
    for seed, delta in differences.items():
        rows.append({"model": "hovernet", "trainset": "labelled", "seed": seed, "dice": 0.7, "aji": base})
        rows.append(
            {"model": "hovernet", "trainset": "augmented", "seed": seed, "dice": 0.7 + delta, "aji": base + delta}
        )
    return pd.DataFrame(rows)


def test_t_interval_by_hand():
    mean, sd, low, high = t_interval([0.1, 0.2, 0.3])
    # t(0.975, 2) = 4.302653; sd 0.1; half-width 4.302653 * 0.1 / sqrt(3)
    assert (mean, sd) == pytest.approx((0.2, 0.1))
    assert (low, high) == pytest.approx((0.2 - 0.248414, 0.2 + 0.248414), abs=1e-6)
    assert np.isnan(t_interval([0.5])[2])


def test_arms_are_compared_seed_by_seed_with_their_validation_records(tmp_path):
    metrics = metrics_table({0: 0.05, 1: 0.01, 2: -0.03})
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    logs = {}
    for arm in ("labelled", "augmented"):
        for seed in range(3):
            path = tmp_path / f"val_{arm}_{seed}.csv"
            best = 3 if arm == "labelled" else 1  # the labelled runs peak at their last validation
            pd.DataFrame({"step": [1, 2, 3], "score": [0.1 * (k == best) + 0.5 for k in (1, 2, 3)]}).to_csv(path)
            logs[f"hovernet/{arm}/{seed}"] = path
    summary, differences = compare_arms(
        tmp_path / "metrics.csv",
        logs,
        [("augmented", "labelled")],
        tmp_path / "s.csv",
        tmp_path / "d.csv",
        tmp_path / "a.png",
    )
    aji = differences[differences["metric"] == "aji"].iloc[0]
    assert (aji["n"], aji["n_higher"]) == (3, 2)
    assert aji["mean"] == pytest.approx(0.01) and aji["sd"] == pytest.approx(0.04)
    assert aji["ci_low"] < 0 < aji["ci_high"]
    by_arm = summary.set_index("arm")
    assert by_arm.loc["labelled", "n_best_at_last"] == 3 and by_arm.loc["augmented", "n_best_at_last"] == 0
    assert by_arm.loc["augmented", "aji_mean"] == pytest.approx(0.41)
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_a_run_without_validation_is_compared_without_a_validation_record(tmp_path):
    """A run that trained on its validation images (validation_images: train) has an empty log:
    its test scores still count, its validation columns are empty."""
    metrics_table({0: 0.05, 1: 0.01}).to_csv(tmp_path / "metrics.csv", index=False)
    logs = {}
    for arm in ("labelled", "augmented"):
        for seed in range(2):
            logs[f"hovernet/{arm}/{seed}"] = path = tmp_path / f"val_{arm}_{seed}.csv"
            pd.DataFrame(columns=["step", "dice", "aji", "score"]).to_csv(path, index=False)
    summary, differences = compare_arms(
        tmp_path / "metrics.csv",
        logs,
        [("augmented", "labelled")],
        tmp_path / "s.csv",
        tmp_path / "d.csv",
        tmp_path / "a.png",
    )
    assert differences[differences["metric"] == "aji"].iloc[0]["mean"] == pytest.approx(0.03)
    assert summary["val_score_mean"].isna().all() and (summary["n_best_at_last"] == 0).all()


def test_blocks_are_pooled_with_the_block_as_the_unit(tmp_path):
    """Three blocks of two seeds: the pooled mean is the mean of the block means, and the
    interval has 2 degrees of freedom (3 blocks), not 5 (6 block x seed pairs)."""
    blocks = {}
    for name, deltas in (("b1", {0: 0.02, 1: 0.04}), ("b2", {0: 0.10, 1: 0.12}), ("b3", {0: -0.02, 1: 0.0})):
        path = tmp_path / f"{name}.csv"
        metrics_table(deltas).to_csv(path, index=False)
        blocks[name] = path
    pooled = pool_blocks(blocks, [("augmented", "labelled")]).set_index("metric")
    row = pooled.loc["aji"]
    assert (row["n_blocks"], row["n_pairs"], row["n_higher"]) == (3, 6, 4)  # 0.0 is not higher
    assert row["mean"] == pytest.approx((0.03 + 0.11 - 0.01) / 3)
    expected = t_interval([0.03, 0.11, -0.01])
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(expected[2:])


def test_pooled_plot_shows_every_block_and_seed(tmp_path):
    """The forest plot draws each block x seed difference it was given, under its block."""
    blocks = {}
    for name, deltas in (("b1", {0: 0.02, 1: 0.04}), ("b2", {0: -0.05})):
        path = tmp_path / f"{name}.csv"
        metrics_table(deltas).to_csv(path, index=False)
        blocks[name] = path
    plotted = plot_pooled(blocks, "augmented", "labelled", tmp_path / "pooled.png")
    assert (tmp_path / "pooled.png").stat().st_size > 0
    assert list(plotted["block"]) == ["b1", "b1", "b2"]
    assert plotted["aji"].to_numpy() == pytest.approx([0.02, 0.04, -0.05])
