"""Exports of synthetic data (nudiff.export): the folder layout read back as a dataset, HoVer-Net's
arrays, the manifest, and images drawn for a user's own instance maps with every bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from tiny_models import tiny_unet

from nudiff.datasets.prepare import prepare_dataset
from nudiff.datasets.sources import list_source_items
from nudiff.diffusion.synthesis import STREAMS, SamplingSettings
from nudiff.diffusion.training import DiffusionTraining, ScheduleConfig, save_diffusion_model
from nudiff.errors import InputDataError
from nudiff.export.label_to_image import label_to_image, tiles_of, untile
from nudiff.export.layouts import HOVERNET_DTYPE, MANIFEST_COLUMNS, sequential_ids
from nudiff.export.training_set import EXPORT_COLUMNS, export_training_set
from nudiff.io.digest import file_sha256
from nudiff.io.images import read_image, read_instance_map, write_image, write_instance_map
from nudiff.samples import SampleReader, read_sample_table

SIZE = 32
SAMPLING = {"sampler": "ddpm", "steps": 100, "guidance_scale": 1.0, "seed": 3}
IMAGE_SAMPLING = {**SAMPLING, "steps": 25}


def disc_map(shape, centres, radius=4):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=7):  # ids not 1..n on purpose
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return inst


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A pairs shard as sample_images writes it: three pairs of sample indices 4, 5, 9."""
    root = tmp_path_factory.mktemp("shard")
    rng = np.random.default_rng(0)
    instances = np.stack([disc_map((SIZE, SIZE), [(8, 8), (20, 22)]), disc_map((SIZE, SIZE), [(16, 16)])] * 2)[:3]
    path = root / "pairs_0.npz"
    np.savez_compressed(
        path,
        sample_index=np.array([4, 5, 9]),
        images=rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8),
        instances=instances,
    )
    for name in ("structure_model.pt", "image_model.pt"):
        (root / name).write_bytes(name.encode())
    (root / "selection.json").write_text(json.dumps({"chosen": {"weights": "model", "step": 300}}))
    return root


def export(shard, out, labelled_csv=None):
    return export_training_set(
        out,
        pair_shards=[shard / "pairs_0.npz"],
        labelled_csv=labelled_csv,
        structure_model=shard / "structure_model.pt",
        structure_selection=None,
        image_model=shard / "image_model.pt",
        image_selection=shard / "selection.json",
        sampling=SAMPLING,
        image_sampling=IMAGE_SAMPLING,
    )


def test_the_augmented_export_reads_back_as_a_folder_dataset_with_the_same_pixels(shard, tiny_labelled_csv, tmp_path):
    out = tmp_path / "export" / "augmented"
    n = export(shard, out, tiny_labelled_csv)
    labelled = read_sample_table(tiny_labelled_csv)
    assert n == len(labelled) + 3
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS + EXPORT_COLUMNS
    assert (manifest["origin"] == "real").sum() == len(labelled)

    back = prepare_dataset(list_source_items("folder", out, splits=["train"]), tmp_path / "prepared")
    assert len(back) == n
    reader = SampleReader(labelled)
    expected = {str(labelled.at[i, "sample_id"]): reader[i] for i in range(len(labelled))}
    with np.load(shard / "pairs_0.npz") as pairs:
        for index, rgb, inst in zip(pairs["sample_index"], pairs["images"], pairs["instances"], strict=True):
            expected[f"synthetic_{index:06d}"] = (rgb, inst)
    assert set(back["name"]) == set(expected)
    for row in back.itertuples():
        rgb, inst = expected[row.name]
        np.testing.assert_array_equal(read_image(row.image), rgb)
        label = read_instance_map(row.label)
        np.testing.assert_array_equal(label, sequential_ids(inst))  # same nuclei, ids 1..n
        assert len(np.unique(label)) == len(np.unique(inst))


def test_the_manifest_names_the_weights_settings_and_checksums(shard, tmp_path):
    out = tmp_path / "pairs"
    export(shard, out)
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["name"].tolist() == ["synthetic_000004", "synthetic_000005", "synthetic_000009"]
    assert manifest["sample_index"].tolist() == [4, 5, 9]
    assert set(manifest["origin"]) == {"synthetic"}
    first = manifest.iloc[0]
    assert first["structure_model_sha256"] == file_sha256(shard / "structure_model.pt")
    assert first["image_model_sha256"] == file_sha256(shard / "image_model.pt")
    assert (first["structure_weights"], first["image_weights"]) == ("ema", "model@300")
    assert (first["structure_steps"], first["image_steps"], first["guidance_scale"], first["seed"]) == (100, 25, 1, 3)
    assert (first["structure_stream"], first["image_stream"]) == (STREAMS["structure"], STREAMS["image"])
    for row in manifest.itertuples():
        for column in ("image", "label", "hovernet"):
            assert getattr(row, f"{column}_sha256") == file_sha256(out / getattr(row, column))


def test_hovernet_arrays_have_the_shape_and_dtype_its_loader_expects(shard, tmp_path):
    out = tmp_path / "pairs"
    export(shard, out)
    for row in pd.read_csv(out / "manifest.csv").itertuples():
        data = np.load(out / row.hovernet)
        assert data.shape == (SIZE, SIZE, 4) and data.dtype == HOVERNET_DTYPE == np.int32
        # what HoVer-Net's FileLoader does with it (dataloader/train_loader.py)
        img, ann = data[..., :3].astype("uint8"), data[..., 3:].astype("int32")
        np.testing.assert_array_equal(img, read_image(out / row.image))
        np.testing.assert_array_equal(ann[..., 0], read_instance_map(out / row.label))


def test_a_bad_shard_leaves_no_export(shard, tmp_path):
    bad = tmp_path / "pairs_1.npz"
    np.savez(bad, sample_index=np.array([0]))  # no images
    out = tmp_path / "pairs"
    with pytest.raises(InputDataError, match="pairs_1.npz"):
        export_training_set(
            out,
            pair_shards=[shard / "pairs_0.npz", bad],
            structure_model=shard / "structure_model.pt",
            structure_selection=None,
            image_model=shard / "image_model.pt",
            image_selection=None,
            sampling=SAMPLING,
            image_sampling=IMAGE_SAMPLING,
        )
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


# ---- label_to_image --------------------------------------------------------------


def save_image_model(path, patch_size=SIZE):
    model = tiny_unet(0, condition_channels=3)
    save_diffusion_model(
        path,
        kind="image",
        network=model.config,
        schedule=ScheduleConfig(timesteps=20),
        model=model,
        ema=None,
        training=DiffusionTraining(),
        patch_size=patch_size,
    )
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    return save_image_model(tmp_path_factory.mktemp("model") / "image_model.pt")


FAST = SamplingSettings(sampler="ddim", steps=2, batch_size=4, seed=1)


def test_tiles_go_back_where_they_came_from():
    image = np.arange(64 * 96 * 3).reshape(64, 96, 3)
    tiles = tiles_of(image[..., 0], 32)
    assert tiles.shape == (6, 32, 32)
    np.testing.assert_array_equal(tiles[1], image[:32, 32:64, 0])
    np.testing.assert_array_equal(untile(tiles_of(image[..., 1], 32)[..., None], 2, 3)[..., 0], image[..., 1])


def test_label_to_image_writes_images_for_each_map_in_the_export_layout(image_model, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    write_instance_map(maps / "a.tif", disc_map((SIZE, SIZE), [(10, 10), (20, 20)]))
    # a 2x1-tile map as PNG
    Image.fromarray(disc_map((2 * SIZE, SIZE), [(10, 10), (50, 16)]).astype(np.uint16)).save(maps / "b.png")
    out = tmp_path / "out"
    assert label_to_image(maps, image_model, out, sampling=FAST, n_per_map=2) == 4
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["name"].tolist() == ["a_0", "a_1", "b_0", "b_1"]
    assert manifest["tiles"].tolist() == [1, 1, 2, 2]
    assert manifest["first_sample_index"].tolist() == [0, 1, 2, 4]
    assert set(manifest["stream"]) == {"label_to_image"}
    b0, b1 = (read_image(out / "train" / "images" / f"b_{k}.png") for k in range(2))
    assert b0.shape == (2 * SIZE, SIZE, 3) and not np.array_equal(b0, b1)  # copies differ
    np.testing.assert_array_equal(
        read_instance_map(out / "train" / "labels" / "b_1.tif"), sequential_ids(read_instance_map(maps / "b.png"))
    )
    assert np.load(out / "hovernet" / "b_0.npy").shape == (2 * SIZE, SIZE, 4)
    # the same maps and seed draw the same images
    again = tmp_path / "again"
    label_to_image(maps, image_model, again, sampling=FAST, n_per_map=2)
    np.testing.assert_array_equal(read_image(again / "train" / "images" / "b_0.png"), b0)


def test_a_split_folder_reads_its_labels_and_needs_their_images(image_model, tmp_path):
    split = tmp_path / "test"
    (split / "labels").mkdir(parents=True)
    (split / "images").mkdir()
    write_instance_map(split / "labels" / "img1.tif", disc_map((SIZE, SIZE), [(10, 10)]))
    write_image(split / "images" / "img1.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    assert label_to_image(split, image_model, tmp_path / "ok", sampling=FAST) == 1
    write_instance_map(split / "labels" / "img3.tif", disc_map((SIZE, SIZE), [(10, 10)]))
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match="img3.tif: label file without an image"):
        label_to_image(split, image_model, out, sampling=FAST)
    assert not out.exists()


def _float_map(path):
    tifffile.imwrite(path, disc_map((SIZE, SIZE), [(10, 10)]).astype(np.float32))


def _rgb_map(path):
    write_image(path, np.zeros((SIZE, SIZE, 3), np.uint8))


def _negative_map(path):
    tifffile.imwrite(path, -disc_map((SIZE, SIZE), [(10, 10)]))


def _untileable_map(path):
    write_instance_map(path, disc_map((SIZE + 8, SIZE), [(10, 10)]))


def _small_map(path):  # a model of another (larger) patch size than the map
    write_instance_map(path, disc_map((SIZE // 2, SIZE // 2), [(8, 8)]))


@pytest.mark.parametrize(
    ("make", "name", "message"),
    [
        (_float_map, "m.tif", "must hold integers"),
        (_rgb_map, "m.png", "single-channel"),
        (_negative_map, "m.tif", "negative id"),
        (_untileable_map, "m.tif", "not a multiple of the image model's 32x32"),
        (_small_map, "m.tif", "smaller than the image model's 32x32"),
        (None, None, "no .tif or .png instance maps"),
    ],
)
def test_bad_input_gives_a_named_error_and_no_output(image_model, tmp_path, make, name, message):
    maps = tmp_path / "maps"
    maps.mkdir()
    write_instance_map(maps / "good.tif", disc_map((SIZE, SIZE), [(10, 10)])) if make else None
    if make:
        make(maps / name)
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match=message):
        label_to_image(maps, image_model, out, sampling=FAST)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]


def test_the_config_names_an_image_model_of_the_run():
    from nudiff.config import check_config, label_to_image_model, label_to_image_sampling
    from nudiff.errors import ConfigError

    base = {"datasets": {"demo": {"format": "demo", "synthetic_pairs": {"10pct": 1, "50pct": 1}}}, "subsets": [10, 50]}
    assert label_to_image_model(base) == ("demo", 50)  # defaults: the first dataset, the largest subset
    for chosen, key in (({"dataset": "other"}, "label_to_image.dataset"), ({"subset": 20}, "label_to_image.subset")):
        with pytest.raises(ConfigError, match=key):
            check_config({**base, "label_to_image": chosen})
    config = {**base, "diffusion": {"sampling": {"steps": 100, "guidance_scale": 1.0, "seed": 0}}}
    config["diffusion"]["image_sampling"] = {"steps": 25}
    config["label_to_image"] = {"seed": 4, "guidance_scale": 2.0}
    assert label_to_image_sampling(config) == {"steps": 25, "guidance_scale": 2.0, "seed": 4}


def test_the_new_noise_streams_are_their_own():
    import torch

    from nudiff.diffusion.synthesis import sample_generator

    # the pairs' streams keep their ids (every earlier pair depends on them); new ones are new
    assert {k: STREAMS[k] for k in ("structure", "image", "select_structure", "select_image", "sweep_image")} == {
        "structure": 0,
        "image": 1,
        "select_structure": 2,
        "select_image": 3,
        "sweep_image": 4,
    }
    assert len(set(STREAMS.values())) == len(STREAMS)
    for old, new in (("structure", "extra_structure"), ("image", "extra_image"), ("image", "label_to_image")):
        a = torch.randn(8, generator=sample_generator(0, old, 3))
        b = torch.randn(8, generator=sample_generator(0, new, 3))
        assert not torch.equal(a, b)
