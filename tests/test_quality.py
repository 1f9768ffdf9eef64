"""Tests for nudiff.diffusion.quality: statistics and colour agreement (quality_measures), figures, rules.

Every expected value is derived by hand in the comment beside it; maps and images are drawn here
(or by the demo generator, whose instance maps are the exact pixel sets it painted).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from drawn import PURPLE, discs, painted
from skimage.draw import ellipse

from nudiff.datasets.demo import generate_demo_tile
from nudiff.diffusion.quality import (
    STATISTICS,
    agreement_table,
    assess_synthetic_pairs,
    colour_agreement,
    colour_distance,
    colour_nuclei_mask,
    colour_statistics,
    compare_instance_statistics,
    compare_samplers,
    instance_statistics,
    plot_statistics,
    plot_synthetic_samples,
)
from nudiff.diffusion.quality_measures import COLOUR_STATISTICS
from nudiff.errors import InputDataError
from nudiff.io.images import write_image, write_instance_map
from nudiff.samples import SAMPLE_COLUMNS, write_sample_table
from nudiff.structure import nuclei_structure


def rectangles(widths, height: int = 5, size: int = 64) -> np.ndarray:
    """Interior nuclei ``height x w`` (area ``height * w``), one per row band, ids 1..n."""
    inst = np.zeros((size, size), np.int32)
    for k, w in enumerate(widths, start=1):
        top = 2 + 8 * (k - 1)
        inst[top : top + height, 2 : 2 + w] = k
    return inst


# --- instance statistics -------------------------------------------------------------------


def test_square_has_area_25_eccentricity_0_solidity_1():
    inst = np.zeros((20, 20), np.int32)
    inst[5:10, 5:10] = 7  # any id
    per_patch, per_nucleus = instance_statistics([inst])
    row = per_nucleus.iloc[0]
    assert (row["patch"], row["label"], row["area"]) == (0, 7, 25)
    # equal second moments along both axes -> circle-like ellipse; a square is its own convex hull
    assert row["eccentricity"] == pytest.approx(0.0, abs=1e-12)
    assert row["solidity"] == pytest.approx(1.0)
    assert row["axis_major_length"] == pytest.approx(row["axis_minor_length"])
    assert per_patch.iloc[0].to_dict() == {"patch": 0, "n_nuclei": 1, "n_border": 0, "foreground_fraction": 25 / 400}


def test_ellipse_with_known_axes():
    inst = np.zeros((100, 100), np.int32)
    inst[ellipse(50, 50, 30, 15)] = 1  # semi-axes 30 (rows) and 15 (cols)
    row = instance_statistics([inst])[1].iloc[0]
    # eccentricity sqrt(1 - (b/a)^2) = sqrt(0.75); area pi a b; axes 2a, 2b (up to pixelisation)
    assert row["eccentricity"] == pytest.approx(math.sqrt(0.75), abs=0.01)
    assert row["area"] == pytest.approx(math.pi * 30 * 15, rel=0.02)
    assert row["axis_major_length"] == pytest.approx(60, rel=0.03)
    assert row["axis_minor_length"] == pytest.approx(30, rel=0.03)


def test_border_nuclei_are_counted_but_not_measured():
    inst = np.zeros((30, 30), np.int32)
    inst[5:10, 5:10] = 3  # interior
    inst[20:24, 12:15] = 9  # interior
    inst[0:4, 20:26] = 4  # touches the top row
    inst[26:30, 0:3] = 5  # touches the bottom row and left column
    inst[12:15, 27:30] = 6  # touches the right column
    empty = np.zeros((10, 10), np.int32)
    per_patch, per_nucleus = instance_statistics([inst, empty])
    assert per_patch["n_nuclei"].tolist() == [5, 0]
    assert per_patch["n_border"].tolist() == [3, 0]
    assert per_patch.loc[0, "foreground_fraction"] == pytest.approx((25 + 12 + 24 + 12 + 9) / 900)
    assert sorted(per_nucleus["label"]) == [3, 9]
    assert set(per_nucleus["patch"]) == {0}


def test_no_maps_give_empty_tables():
    per_patch, per_nucleus = instance_statistics([])
    assert per_patch.empty and per_nucleus.empty
    assert list(per_nucleus.columns)[:3] == ["patch", "label", "area"]


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), -np.ones((4, 4), np.int32), np.zeros((2, 4, 4), np.int32)])
def test_bad_instance_maps_are_rejected(bad):
    with pytest.raises(ValueError, match=r"instance_maps\[1\]"):
        instance_statistics([np.zeros((4, 4), np.int32), bad])


# --- comparison ----------------------------------------------------------------------------


def test_identical_sets_have_zero_distance():
    maps = [rectangles([3, 5]), rectangles([8]), discs([(20, 20), (45, 40)])]
    table = compare_instance_statistics(maps, {"same": [m.copy() for m in maps]})
    assert table["statistic"].tolist() == list(STATISTICS)
    assert np.allclose(table["wasserstein"], 0) and np.allclose(table["ks_statistic"], 0)
    assert np.allclose(table["real_mean"], table["synthetic_mean"])


def test_areas_shifted_by_10_give_wasserstein_10():
    # real areas 5 * (3, 5, 8) = 15, 25, 40; synthetic 5 * (5, 7, 10) = 25, 35, 50: every area + 10
    real, shifted = [rectangles([3, 5, 8])], [rectangles([5, 7, 10])]
    table = compare_instance_statistics(real, {"ddpm-1000": shifted, "ddim-50": real}).set_index(["set", "statistic"])
    area = table.loc[("ddpm-1000", "area")]
    assert area["wasserstein"] == pytest.approx(10.0)
    assert area["wasserstein_per_real_std"] == pytest.approx(10.0 / np.std([15, 25, 40], ddof=1))
    # ECDFs differ most on [15, 25) and [25, 35): 1/3
    assert area["ks_statistic"] == pytest.approx(1 / 3)
    assert (area["real_median"], area["synthetic_median"]) == (25, 35)
    assert table.loc[("ddpm-1000", "nuclei_per_patch"), "wasserstein"] == 0  # 3 nuclei each
    assert table.loc[("ddim-50", "area"), "wasserstein"] == 0


def test_set_without_whole_nuclei_has_undefined_shape_distances():
    border_only = np.zeros((16, 16), np.int32)
    border_only[0:4, 0:4] = 1
    table = compare_instance_statistics([rectangles([3, 5])], {"cut": [border_only]}).set_index("statistic")
    assert table.loc["area", "n_synthetic"] == 0 and np.isnan(table.loc["area", "wasserstein"])
    assert table.loc["nuclei_per_patch", "wasserstein"] == pytest.approx(1.0)  # 2 vs 1 nucleus


@pytest.mark.parametrize("synthetic", [{}, {"real": [rectangles([3])]}])
def test_synthetic_sets_are_checked(synthetic):
    with pytest.raises(ValueError, match="synthetic"):
        compare_instance_statistics([rectangles([3])], synthetic)


# --- colour agreement ----------------------------------------------------------------------


def test_purple_nuclei_on_pink_agree_with_their_map():
    inst = discs([(15, 15), (40, 20), (30, 48), (52, 50)])
    rgb = painted(inst)
    assert colour_agreement(rgb, inst) == pytest.approx(1.0)
    # each disc has 113 px; shifted 20 rows down, only discs 1 and 3 overlap discs 2 and 4 a little
    assert colour_agreement(rgb, np.roll(inst, 20, axis=0)) < 0.4
    assert colour_agreement(rgb, discs([(10, 50), (50, 8)])) == pytest.approx(0.0)


def test_a_few_saturated_pixels_do_not_hide_the_nuclei():
    # Sampled images can hold pixels with a channel at 0: haematoxylin outliers far above
    # any nucleus, which once pulled Otsu's threshold above every nucleus (Dice 0).
    inst = discs([(20, 20), (40, 44)])
    rgb = painted(inst)
    rgb[0, 5:9] = (0, 0, 255)
    assert colour_agreement(rgb, inst) > 0.95


def test_demo_tiles_agree_with_their_own_map_only():
    rgb_a, inst_a = generate_demo_tile(np.random.default_rng(0), 96, "lymphocytic")
    rgb_b, inst_b = generate_demo_tile(np.random.default_rng(1), 96, "epithelial")
    assert colour_agreement(rgb_a, inst_a) > 0.9
    assert colour_agreement(rgb_b, inst_b) > 0.9
    assert colour_agreement(rgb_a, inst_b) < 0.5


def test_degenerate_pairs_give_nan():
    inst = discs([(30, 30)])
    assert math.isnan(colour_agreement(painted(inst), np.zeros_like(inst)))  # no nucleus in the map
    assert math.isnan(colour_agreement(np.full((64, 64, 3), 200, np.uint8), inst))  # no contrast


def test_specks_are_dropped_except_at_the_border_and_small_holes_filled():
    inst = discs([(30, 30)], radius=8)
    inst[30, 30] = 0  # a one-pixel pale centre
    rgb = painted(inst)
    rgb[10:12, 50:52] = PURPLE  # 4-px speck inside the patch: noise
    rgb[0:2, 0:2] = PURPLE  # 4-px piece at the corner: a cut nucleus
    mask = colour_nuclei_mask(rgb)
    assert not mask[10:12, 50:52].any()
    assert mask[0:2, 0:2].all()
    assert mask[30, 30]  # hole filled
    kept = colour_nuclei_mask(rgb, min_object_size=0, max_hole_size=0)
    assert kept[10:12, 50:52].all() and not kept[30, 30]


def test_colour_agreement_checks_inputs():
    inst = discs([(30, 30)])
    with pytest.raises(ValueError, match="differs"):
        colour_agreement(painted(inst), inst[:32])
    with pytest.raises(ValueError, match="uint8"):
        colour_agreement(painted(inst).astype(float), inst)


def test_agreement_table_puts_real_first():
    good = [(painted(m), m) for m in (discs([(20, 20)]), discs([(40, 40), (15, 45)]))]
    wrong = [(rgb, np.roll(m, 32, axis=1)) for rgb, m in good] + [(good[0][0], np.zeros((64, 64), np.int32))]
    table = agreement_table(good, {"wrong": wrong})
    assert table["set"].tolist() == ["real", "wrong"]
    assert table["n_pairs"].tolist() == [2, 3]
    assert table["n_scored"].tolist() == [2, 2]  # the empty map is undefined
    assert table.loc[0, "mean"] == pytest.approx(1.0) and table.loc[0, "std"] == pytest.approx(0.0)
    assert table.loc[1, "mean_relative_to_real"] == pytest.approx(table.loc[1, "mean"])


# --- figures and rule entry points ---------------------------------------------------------


def demo_pairs(n: int, seed: int, size: int = 64):
    rng = np.random.default_rng(seed)
    rgb, inst = zip(*[generate_demo_tile(rng, size, ("lymphocytic", "epithelial")[i % 2]) for i in range(n)])
    return np.stack(rgb), np.stack(inst)


def write_pair_shard(path: Path, rgb: np.ndarray, inst: np.ndarray) -> Path:
    structures = np.stack([nuclei_structure(m) for m in inst]) if len(inst) else np.zeros(inst.shape + (3,), np.float32)
    np.savez_compressed(path, sample_index=np.arange(len(inst)), structures=structures, instances=inst, images=rgb)
    return path


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    """A labelled subset: four 64-px patches of one 128-px demo image."""
    rgb, inst = generate_demo_tile(np.random.default_rng(5), 128, "epithelial")
    write_image(tmp_path / "prepared" / "img.png", rgb)
    write_instance_map(tmp_path / "prepared" / "img.tif", inst)
    rows = [
        {
            "sample_id": f"img_y{y}_x{x}",
            "origin": "real",
            "image_file": str(tmp_path / "prepared" / "img.png"),
            "label_file": str(tmp_path / "prepared" / "img.tif"),
            "index": -1,
            "y": y,
            "x": x,
            "size": 64,
        }
        for y in (0, 64)
        for x in (0, 64)
    ]
    path = tmp_path / "subset" / "labelled.csv"
    write_sample_table(pd.DataFrame(rows, columns=SAMPLE_COLUMNS), path)
    return path


def test_figures_are_written(tmp_path: Path):
    rgb, inst = demo_pairs(4, seed=0)
    plot_statistics(list(inst), {"a": list(inst[:2]), "b": list(inst[2:])}, tmp_path / "stats.png")
    structures = np.stack([nuclei_structure(m) for m in inst])
    plot_synthetic_samples(rgb, inst, structures, inst, rgb, tmp_path / "samples.png", n=3)
    assert (tmp_path / "stats.png").stat().st_size > 20_000
    assert (tmp_path / "samples.png").stat().st_size > 20_000


def test_bad_figure_input_writes_nothing(tmp_path: Path):
    rgb, inst = demo_pairs(2, seed=0)
    structures = np.stack([nuclei_structure(m) for m in inst])
    with pytest.raises(ValueError, match="synthetic"):
        plot_synthetic_samples(rgb, inst, structures, inst[:0], rgb[:0], tmp_path / "samples.png")
    with pytest.raises(ValueError, match="n=0"):
        plot_synthetic_samples(rgb, inst, structures, inst, rgb, tmp_path / "samples.png", n=0)
    with pytest.raises(ValueError, match="synthetic"):
        plot_statistics(list(inst), {}, tmp_path / "stats.png")
    assert list(tmp_path.iterdir()) == []


def outputs(tmp_path: Path, tag: str = "") -> dict[str, Path]:
    folder = tmp_path / f"out{tag}"
    return {
        "out_stats_csv": folder / "stats.csv",
        "out_agreement_csv": folder / "agree.csv",
        "out_stats_png": folder / "stats.png",
        "out_samples_png": folder / "samples.png",
    }


def test_assess_synthetic_pairs(tmp_path: Path, labelled_csv: Path):
    rgb, inst = demo_pairs(6, seed=1)
    shards = [
        write_pair_shard(tmp_path / "s0.npz", rgb[:3], inst[:3]),
        write_pair_shard(tmp_path / "empty.npz", rgb[:0], inst[:0]),  # every structure was empty
        write_pair_shard(tmp_path / "s1.npz", rgb[3:], inst[3:]),
    ]
    stats, agreement = assess_synthetic_pairs(labelled_csv, shards, seed=0, n_shown=3, **outputs(tmp_path))
    assert all(p.stat().st_size > 0 for p in outputs(tmp_path).values())
    # columns: set, statistic, 4 real and 4 synthetic summaries, 3 distances
    assert pd.read_csv(outputs(tmp_path)["out_stats_csv"]).shape == stats.shape == (len(STATISTICS), 13)
    per_patch = stats.set_index("statistic").loc["nuclei_per_patch"]
    assert (per_patch["n_real"], per_patch["n_synthetic"]) == (4, 6)  # the empty shard adds nothing
    assert per_patch["synthetic_mean"] == pytest.approx(inst.reshape(6, -1).max(axis=1).mean())
    assert agreement["set"].tolist() == ["real", "synthetic", "synthetic, maps of other pairs"]
    assert agreement["n_pairs"].tolist() == [4, 6, 6]
    # the demo pairs agree with their own maps, far above chance
    assert agreement.at[1, "mean"] > 0.9 > 0.5 > agreement.at[2, "mean"]
    # same seed, same figure; another seed shows other samples
    assess_synthetic_pairs(labelled_csv, shards, seed=0, n_shown=3, **outputs(tmp_path, "again"))
    assess_synthetic_pairs(labelled_csv, shards, seed=1, n_shown=3, **outputs(tmp_path, "other"))
    first = outputs(tmp_path)["out_samples_png"].read_bytes()
    assert outputs(tmp_path, "again")["out_samples_png"].read_bytes() == first
    assert outputs(tmp_path, "other")["out_samples_png"].read_bytes() != first


def test_assess_synthetic_pairs_bad_input_writes_nothing(tmp_path: Path, labelled_csv: Path):
    rgb, inst = demo_pairs(2, seed=1)
    empty = write_pair_shard(tmp_path / "empty.npz", rgb[:0], inst[:0])
    big_rgb, big_inst = demo_pairs(1, seed=1, size=96)
    with pytest.raises(ValueError, match="pair_shards"):
        assess_synthetic_pairs(labelled_csv, [], seed=0, **outputs(tmp_path))
    with pytest.raises(InputDataError, match="no synthetic pair"):
        assess_synthetic_pairs(labelled_csv, [empty], seed=0, **outputs(tmp_path))
    with pytest.raises(InputDataError, match="differ"):
        assess_synthetic_pairs(
            labelled_csv, [write_pair_shard(tmp_path / "big.npz", big_rgb, big_inst)], seed=0, **outputs(tmp_path)
        )
    np.savez(tmp_path / "no_images.npz", instances=inst)
    with pytest.raises(InputDataError, match="no_images.npz"):
        assess_synthetic_pairs(labelled_csv, [tmp_path / "no_images.npz"], seed=0, **outputs(tmp_path))
    assert not (tmp_path / "out").exists()


def test_compare_samplers(tmp_path: Path, labelled_csv: Path):
    _, inst = demo_pairs(4, seed=2)
    blank = np.zeros((2, 64, 64), np.int32)  # structures without nuclei still count as patches
    for name, maps in (("ddpm", inst), ("fast", np.concatenate([inst[:2], blank]))):
        np.savez_compressed(
            tmp_path / f"{name}.npz",
            sample_index=np.arange(4),
            instances=maps,
            structures=np.zeros(maps.shape + (3,), np.float32),
            n_nuclei=maps.reshape(4, -1).max(1),
        )
    table = compare_samplers(
        labelled_csv,
        {"ddpm-1000": [tmp_path / "ddpm.npz"], "ddim-50": [tmp_path / "fast.npz"]},
        out_csv=tmp_path / "out" / "samplers.csv",
        out_png=tmp_path / "out" / "samplers.png",
    )
    assert (tmp_path / "out" / "samplers.png").stat().st_size > 20_000
    assert table["set"].unique().tolist() == ["ddpm-1000", "ddim-50"]
    counts = table[table["statistic"] == "nuclei_per_patch"].set_index("set")
    assert counts["n_synthetic"].tolist() == [4, 4]
    assert counts.loc["ddim-50", "synthetic_mean"] == pytest.approx(inst[:2].reshape(2, -1).max(1).sum() / 4)
    with pytest.raises(ValueError, match="structure_shards"):
        compare_samplers(labelled_csv, {"ddim-50": []}, out_csv=tmp_path / "x.csv", out_png=tmp_path / "x.png")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.png").exists()


def test_colour_statistics_of_flat_patches():
    """A flat white patch is L* 100, a* = b* = 0 with no spread; a flat pure red one has CIELAB
    (53.24, 80.09, 67.20) (the sRGB/D65 value), also with no spread."""
    white = np.full((4, 4, 3), 255, np.uint8)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    table = colour_statistics([white, red])
    assert table.columns.tolist() == ["L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std"]
    np.testing.assert_allclose(table.iloc[0], [100, 0, 0, 0, 0, 0], atol=0.01)
    np.testing.assert_allclose(table.iloc[1, :3], [53.24, 80.09, 67.20], atol=0.02)
    np.testing.assert_allclose(table.iloc[1, 3:], 0, atol=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        colour_statistics([np.zeros((4, 4), np.uint8)])


def test_colour_distance_separates_stains():
    """Same-stain sets have a small KS; sets whose colours never overlap have KS 1 on the
    statistics that differ (mean a* and b* of pink against cyan patches)."""
    rng = np.random.default_rng(0)

    def patches(rgb, n):
        base = np.array(rgb, float)
        return [np.clip(base + rng.normal(0, 12, (8, 8, 3)), 0, 255).astype(np.uint8) for _ in range(n)]

    pink = colour_statistics(patches((200, 130, 180), 40))
    other_pink = colour_statistics(patches((200, 130, 180), 40))
    cyan = colour_statistics(patches((200, 235, 235), 40))
    same = colour_distance(pink, other_pink)
    apart = colour_distance(pink, cyan)
    assert same["ks_a_mean"] < 0.4 and apart["ks_a_mean"] == 1.0 and apart["ks_b_mean"] == 1.0
    assert same["colour_ks"] < 0.4 < apart["colour_ks"] <= 1.0
    assert apart["colour_ks"] == pytest.approx(np.mean([apart[f"ks_{s}"] for s in COLOUR_STATISTICS]))
    with pytest.raises(ValueError, match="at least one"):
        colour_distance(pink, cyan.iloc[:0])
