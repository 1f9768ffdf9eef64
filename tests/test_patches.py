"""Patch grid positions and the patch index."""

from __future__ import annotations

import pytest

from nudiff.datasets.prepare import read_manifest
from nudiff.patches import (
    build_patch_index,
    grid_starts,
    patch_grid,
    read_patch_index,
    write_patch_index,
)


def test_a_1000_pixel_axis_gives_seven_starts_the_last_on_the_border():
    # 0, 128, ..., 640 fit; 768 + 256 > 1000, so the last patch is moved to 1000 - 256 = 744
    assert grid_starts(1000, 256, 128) == [0, 128, 256, 384, 512, 640, 744]
    assert len(patch_grid(1000, 1000, 256, 128)) == 49


def test_an_exact_fit_adds_no_extra_patch():
    assert grid_starts(512, 256, 128) == [0, 128, 256]
    assert grid_starts(256, 256, 128) == [0]


def test_grid_covers_every_pixel_of_odd_sizes():
    for length in (257, 300, 777):
        covered = set()
        for start in grid_starts(length, 64, 48):
            covered.update(range(start, start + 64))
        assert covered == set(range(length))


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="shorter"):
        grid_starts(100, 256, 128)
    with pytest.raises(ValueError, match="positive"):
        grid_starts(1000, 256, 0)


def test_patch_index_counts_nuclei_and_round_trips(tiny_prepared, tmp_path):
    manifest = read_manifest(tiny_prepared / "manifest.csv")
    index = build_patch_index(manifest, size=32, stride=16)
    train = manifest[manifest["split"] == "train"]
    assert len(index) == 9 * len(train)  # 64 px, size 32, stride 16: 3 x 3 per image
    assert set(index["image"]) == set(train["name"])
    assert (index["n_nuclei"] >= 0).all() and index["n_nuclei"].max() > 0
    path = tmp_path / "index.csv"
    write_patch_index(index, path)
    assert read_patch_index(path).equals(index)
