"""Tests of the final table: paper numbers, seed averaging, differences, gains, rendering."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from nudiff.errors import ConfigError, InputDataError
from nudiff.table import PAPER_RESULTS, TABLE_COLUMNS, build_table, make_table, render_markdown, seed_summary

COLUMNS = ["dataset", "subset", "model", "trainset", "seed", "n_images", "dice", "aji", "aji_plus", "dq", "sq", "pq"]


def _row(dataset, subset, model, trainset, seed, dice, aji, n_images=14):
    return [dataset, subset, model, trainset, seed, n_images, dice, aji, 0.5, 0.6, 0.7, 0.42]


def _write(path, rows):
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture
def metrics_csvs(tmp_path):
    """MoNuSeg 10% (two seeds), MoNuSeg 100% (one seed), demo 10% (one seed)."""
    monuseg_10 = _write(
        tmp_path / "monuseg_10.csv",
        [
            _row("monuseg", "10pct", "hovernet", "labelled", 0, 0.80, 0.60),
            _row("monuseg", "10pct", "hovernet", "labelled", 1, 0.82, 0.64),
            _row("monuseg", "10pct", "hovernet", "augmented", 0, 0.83, 0.65),
            _row("monuseg", "10pct", "hovernet", "augmented", 1, 0.85, 0.67),
        ],
    )
    monuseg_100 = _write(
        tmp_path / "monuseg_100.csv",
        [
            _row("monuseg", "100pct", "hovernet", "augmented", 0, 0.84, 0.70),
            _row("monuseg", "100pct", "hovernet", "labelled", 0, 0.82, 0.66),
        ],
    )
    demo = _write(
        tmp_path / "demo_10.csv",
        [
            _row("demo", "10pct", "hovernet", "labelled", 0, 0.50, 0.30, n_images=4),
            _row("demo", "10pct", "hovernet", "augmented", 0, 0.45, 0.35, n_images=4),
        ],
    )
    return [monuseg_100, demo, monuseg_10]


MAPPING = {"monuseg": "monuseg", "demo": None}


def test_paper_results_complete_and_in_range():
    # Tables 1-2: 2 models x 2 datasets x 4 subsets x 2 training sets, (Dice, AJI) each.
    expected = set(
        itertools.product(
            ("monuseg", "kumar"),
            ("hovernet", "pffnet"),
            ("10pct", "20pct", "50pct", "100pct"),
            ("labelled", "augmented"),
        )
    )
    assert set(PAPER_RESULTS) == expected
    numbers = [v for pair in PAPER_RESULTS.values() for v in pair]
    assert len(numbers) == 64
    assert all(0 < v < 1 for v in numbers)
    # Values hand-copied from SPEC.md section 7 (the paper's Tables 1 and 2).
    assert PAPER_RESULTS[("monuseg", "hovernet", "10pct", "labelled")] == (0.7969, 0.6344)
    assert PAPER_RESULTS[("kumar", "hovernet", "50pct", "augmented")] == (0.8158, 0.6307)
    assert PAPER_RESULTS[("monuseg", "pffnet", "20pct", "labelled")] == (0.7691, 0.5629)
    assert PAPER_RESULTS[("kumar", "pffnet", "100pct", "augmented")] == (0.8125, 0.6550)
    assert PAPER_RESULTS[("kumar", "hovernet", "10pct", "augmented")] == (0.8049, 0.6161)


def test_build_table_means_stds_paper_and_gains(metrics_csvs):
    table = build_table(metrics_csvs, paper_datasets=MAPPING)
    assert list(table.columns) == list(TABLE_COLUMNS)
    # Paper order: dataset in mapping order, subset ascending (100 after 10), labelled first.
    assert table[["dataset", "subset", "trainset"]].values.tolist() == [
        ["monuseg", "10pct", "labelled"],
        ["monuseg", "10pct", "augmented"],
        ["monuseg", "100pct", "labelled"],
        ["monuseg", "100pct", "augmented"],
        ["demo", "10pct", "labelled"],
        ["demo", "10pct", "augmented"],
    ]
    lab, aug = table.iloc[0], table.iloc[1]
    # Two seeds: mean of (0.80, 0.82) = 0.81; sample std = sqrt(2 * 0.01^2 / 1) = 0.014142.
    assert lab["n_seeds"] == 2 and lab["n_images"] == 14
    assert lab["dice_mean"] == pytest.approx(0.81)
    assert lab["dice_std"] == pytest.approx(math.sqrt(2e-4))
    assert lab["aji_mean"] == pytest.approx(0.62)
    assert lab["aji_std"] == pytest.approx(math.sqrt(8e-4))
    # Paper Table 1, MoNuSeg, 10% labelled: 0.7969 / 0.6344.
    assert (lab["paper_dice"], lab["paper_aji"]) == (0.7969, 0.6344)
    assert lab["dice_diff"] == pytest.approx(0.81 - 0.7969)
    assert lab["aji_diff"] == pytest.approx(0.62 - 0.6344)
    # Gains on the augmented row only: ours 0.84 - 0.81, paper 0.8291 - 0.7969.
    assert np.isnan(lab["dice_gain"]) and np.isnan(lab["paper_dice_gain"])
    assert aug["dice_gain"] == pytest.approx(0.03)
    assert aug["aji_gain"] == pytest.approx(0.66 - 0.62)
    assert aug["paper_dice_gain"] == pytest.approx(0.8291 - 0.7969)
    assert aug["paper_aji_gain"] == pytest.approx(0.6785 - 0.6344)
    # One seed: std is NaN.
    assert table.iloc[2]["n_seeds"] == 1 and np.isnan(table.iloc[2]["dice_std"])


def test_dataset_without_paper_has_nan_paper_columns(metrics_csvs):
    table = build_table(metrics_csvs, paper_datasets=MAPPING)
    demo = table[table["dataset"] == "demo"]
    for column in ("paper_dice", "paper_aji", "dice_diff", "aji_diff", "paper_dice_gain"):
        assert demo[column].isna().all(), column
    assert demo["paper_dataset"].isna().all()
    # Our gain is still there: 0.45 - 0.50.
    assert demo.iloc[1]["dice_gain"] == pytest.approx(-0.05)


def test_write_table_contains_numbers_and_highlights(metrics_csvs, tmp_path):
    out = tmp_path / "out"
    make_table(metrics_csvs, MAPPING, out / "t.csv", out / "t.md", out / "t.html")
    markdown = (out / "t.md").read_text()
    page = (out / "t.html").read_text()
    assert "## Hover-Net" in markdown
    for text in ("0.8100 ± 0.0141", "0.7969", "+0.0131", "0.8400", "0.4500"):
        assert text in markdown, text
        assert text in page, text
    assert "| 100% augmented |" in markdown
    # 10% augmented beats labelled on both scores (MoNuSeg): a highlighted row.
    assert "<tr class='beats'>" in page and "class='gain'" in page
    # Demo 10%: augmented Dice 0.45 < 0.50 labelled.
    assert "<td class='loss'>0.4500</td>" in page
    assert "<script" not in page and "<link" not in page and "http" not in page
    csv = pd.read_csv(out / "t.csv")
    assert csv["dice_mean"].iloc[0] == pytest.approx(0.81)


@pytest.mark.parametrize("case", ["missing_file", "missing_column", "duplicate", "bad_value"])
def test_bad_metrics_raise_naming_file_and_write_nothing(metrics_csvs, tmp_path, case):
    bad = tmp_path / "bad.csv"
    if case == "missing_column":
        pd.read_csv(metrics_csvs[0]).drop(columns="aji").to_csv(bad, index=False)
    elif case == "duplicate":
        frame = pd.read_csv(metrics_csvs[0])
        pd.concat([frame, frame.iloc[:1]]).to_csv(bad, index=False)
    elif case == "bad_value":
        frame = pd.read_csv(metrics_csvs[0])
        frame.loc[0, "dice"] = 1.5
        frame.to_csv(bad, index=False)
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match="bad.csv"):
        make_table([*metrics_csvs[1:], bad], MAPPING, out / "t.csv", out / "t.md", out / "t.html")
    assert not out.exists() or not any(out.iterdir())


def test_mapping_errors(metrics_csvs):
    with pytest.raises(ConfigError, match="demo"):
        build_table(metrics_csvs, paper_datasets={"monuseg": "monuseg"})
    with pytest.raises(ConfigError, match="consep"):
        build_table(metrics_csvs, paper_datasets={"monuseg": "consep", "demo": None})


def test_paired_gain_is_augmented_minus_labelled_of_the_same_seed(tmp_path):
    """Seed by seed: AJI gains 0.02, 0.05, 0.01 (mean 0.02667, sample std 0.02082); seed 3 has
    no labelled twin, so it counts in the augmented mean but not in the paired gain."""
    csv = _write(
        tmp_path / "m.csv",
        [
            _row("demo", "10pct", "hovernet", "labelled", 0, 0.70, 0.50),
            _row("demo", "10pct", "hovernet", "labelled", 1, 0.72, 0.60),
            _row("demo", "10pct", "hovernet", "labelled", 2, 0.71, 0.55),
            _row("demo", "10pct", "hovernet", "augmented", 0, 0.70, 0.52),
            _row("demo", "10pct", "hovernet", "augmented", 1, 0.73, 0.65),
            _row("demo", "10pct", "hovernet", "augmented", 2, 0.71, 0.56),
            _row("demo", "10pct", "hovernet", "augmented", 3, 0.90, 0.90),
        ],
    )
    table = build_table([csv], paper_datasets={"demo": None})
    labelled, augmented = table.iloc[0], table.iloc[1]
    assert np.isnan(labelled["n_paired_seeds"]) and np.isnan(labelled["aji_paired_gain_mean"])
    assert augmented["n_paired_seeds"] == 3
    assert augmented["aji_paired_gain_mean"] == pytest.approx(0.08 / 3)
    assert augmented["aji_paired_gain_std"] == pytest.approx(np.std([0.02, 0.05, 0.01], ddof=1))
    assert augmented["dice_paired_gain_mean"] == pytest.approx(0.01 / 3)
    # the unpaired mean difference includes seed 3 and so differs from the paired one
    assert augmented["aji_gain"] == pytest.approx((0.52 + 0.65 + 0.56 + 0.90) / 4 - 0.55)
    assert "AJI +0.0267 ± 0.0208 (3 seeds)" in render_markdown(table)
    summary = seed_summary(csv, tmp_path / "over_seeds.csv")
    written = pd.read_csv(tmp_path / "over_seeds.csv")
    assert list(written.columns) == list(summary.columns) and len(written) == 2
    assert written.loc[1, "aji_paired_gain_mean"] == pytest.approx(0.08 / 3, abs=1e-6)  # 6 digits
    assert written.loc[0, "aji_std"] == pytest.approx(np.std([0.50, 0.60, 0.55], ddof=1), abs=1e-6)
