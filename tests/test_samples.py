"""Sample tables: references to real patches and synthetic pairs, read back as pixels."""

from __future__ import annotations

import numpy as np
import pytest

from nudiff.datasets.prepare import read_manifest
from nudiff.errors import InputDataError
from nudiff.io.images import read_image, read_instance_map
from nudiff.patches import build_patch_index
from nudiff.samples import (
    SampleReader,
    read_sample_table,
    real_samples,
    synthetic_samples,
    write_sample_table,
)


def test_real_rows_crop_the_prepared_images(tiny_prepared, tmp_path):
    manifest = read_manifest(tiny_prepared / "manifest.csv")
    index = build_patch_index(manifest, size=32, stride=32)
    path = tmp_path / "sub" / "table.csv"
    write_sample_table(real_samples(index, manifest), path)
    table = read_sample_table(path)
    row = table.iloc[3]
    rgb, inst = SampleReader(table)[3]
    full_rgb, full_inst = read_image(row["image_file"]), read_instance_map(row["label_file"])
    y, x = row["y"], row["x"]
    assert np.array_equal(rgb, full_rgb[y : y + 32, x : x + 32])
    assert np.array_equal(inst, full_inst[y : y + 32, x : x + 32])


def test_synthetic_rows_index_a_shard(tmp_path):
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    instances = np.stack([np.full((8, 8), 1, np.int32), np.full((8, 8), 2, np.int32)])
    np.savez(tmp_path / "pairs.npz", images=images, instances=instances)
    write_sample_table(synthetic_samples(tmp_path / "pairs.npz", 2, 8, prefix="s"), tmp_path / "t.csv")
    reader = SampleReader(read_sample_table(tmp_path / "t.csv"))
    rgb, inst = reader[1]
    assert np.array_equal(rgb, images[1]) and (inst == 2).all()
    stacked_rgb, stacked_inst = reader.load_all()
    assert stacked_rgb.shape == (2, 8, 8, 3) and stacked_inst.shape == (2, 8, 8)


def test_unreadable_shard_and_missing_table_are_named(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    write_sample_table(synthetic_samples(tmp_path / "bad.npz", 1, 8, prefix="s"), tmp_path / "t.csv")
    with pytest.raises(InputDataError, match="bad.npz"):
        SampleReader(read_sample_table(tmp_path / "t.csv"))[0]
    with pytest.raises(InputDataError, match="missing.csv"):
        read_sample_table(tmp_path / "missing.csv")
