"""Source layouts -> SourceItems -> prepared folder with manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import tifffile
from PIL import Image

from nudiff.datasets.prepare import MANIFEST_COLUMNS, prepare_dataset, read_manifest
from nudiff.datasets.sources import SourceItem, list_source_items
from nudiff.errors import ConfigError, InputDataError
from nudiff.io.images import read_image, read_instance_map
from nudiff.io.monuseg import read_monuseg_xml

DATA = Path(__file__).parent / "data"
CROP_IMAGE = DATA / "monuseg_crop.tif"
CROP_LABEL = DATA / "monuseg_crop_label.tif"
CROP_XML = DATA / "monuseg_crop.xml"


def _rgb(shape=(10, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _label(shape=(10, 12)) -> np.ndarray:
    # Two nuclei with non-sequential ids 5 and 70000: prepare must relabel them 1, 2.
    inst = np.zeros(shape, np.uint32)
    inst[1:4, 1:4] = 5
    inst[6:9, 6:10] = 70_000
    return inst


def _tif(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = array.ndim == 3
    tifffile.imwrite(path, array, photometric="rgb" if rgb else None, compression="lzw" if rgb else "zlib")
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _folder_dataset(root: Path, names=(("train", "b"), ("train", "a"), ("test", "c"))) -> Path:
    for split, name in names:
        _png(root / split / "images" / f"{name}.png", _rgb())
        _tif(root / split / "labels" / f"{name}.tif", _label())
    return root


# ---------------------------------------------------------------- layouts


def test_monuseg_three_layouts_detected(tmp_path):
    root = tmp_path / "monuseg"
    # official test set: <stem>.tif + <stem>.xml side by side
    _copy(CROP_IMAGE, root / "test" / "t1.tif")
    _copy(CROP_XML, root / "test" / "t1.xml")
    # official training download: Tissue Images/ + Annotations/
    _copy(CROP_IMAGE, root / "train" / "Tissue Images" / "r1.tif")
    _copy(CROP_XML, root / "train" / "Annotations" / "r1.xml")
    items = list_source_items("monuseg", root)
    assert [(i.split, i.name, i.label_kind) for i in items] == [
        ("train", "r1", "monuseg_xml"),
        ("test", "t1", "monuseg_xml"),
    ]
    assert items[0].label_path == root.absolute() / "train" / "Annotations" / "r1.xml"
    assert items[1].image_path == root.absolute() / "test" / "t1.tif"

    # images/ + labels/ instance maps, as a MoNuSeg train folder may be stored
    shutil.rmtree(root / "train")
    _copy(CROP_IMAGE, root / "train" / "images" / "r1.tif")
    _copy(CROP_LABEL, root / "train" / "labels" / "r1.tif")
    items = list_source_items("monuseg", root, splits=("train",))
    assert [(i.name, i.label_kind) for i in items] == [("r1", "instance_map")]
    assert items[0].label_path == root.absolute() / "train" / "labels" / "r1.tif"


def test_monuseg_no_layout_names_folder_and_layouts(tmp_path):
    (tmp_path / "train" / "stuff").mkdir(parents=True)
    (tmp_path / "train" / "notes.txt").write_text("x")
    with pytest.raises(InputDataError, match=r"train: no MoNuSeg layout.*Tissue Images.*labels"):
        list_source_items("monuseg", tmp_path, splits=("train",))


def test_kumar_layout(tmp_path):
    for split, name in (("train", "k1"), ("train", "k0"), ("test", "k2")):
        _png(tmp_path / split / "Images" / f"{name}.png", _rgb())
        labels = _mkdir(tmp_path / split / "Labels")
        scipy.io.savemat(labels / f"{name}.mat", {"inst_map": _label().astype(float)})
    items = list_source_items("kumar", tmp_path)
    assert [(i.split, i.name, i.label_kind) for i in items] == [
        ("train", "k0", "kumar_mat"),
        ("train", "k1", "kumar_mat"),
        ("test", "k2", "kumar_mat"),
    ]
    assert items[2].label_path.name == "k2.mat"


def test_folder_layout_sorted_and_deterministic(tmp_path):
    root = _folder_dataset(tmp_path)
    _png(root / "train" / "images" / ".hidden.png", _rgb())  # ignored
    items = list_source_items("folder", root)
    assert [(i.split, i.name) for i in items] == [("train", "a"), ("train", "b"), ("test", "c")]
    assert all(i.label_kind == "instance_map" and i.image_path.is_absolute() for i in items)
    assert items == list_source_items("folder", root)
    with pytest.raises(dataclasses.FrozenInstanceError):
        items[0].name = "z"  # type: ignore[misc]


def test_unknown_format_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.format.*'pannuke'.*monuseg"):
        list_source_items("pannuke", tmp_path, config_key="dataset.format")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="format"):
        list_source_items("pannuke", tmp_path)  # type: ignore[arg-type]


def test_missing_label_names_expected_path(tmp_path):
    root = _folder_dataset(tmp_path)
    _png(root / "train" / "images" / "orphan.png", _rgb())
    expected = root.absolute() / "train" / "labels" / "orphan.tif"
    with pytest.raises(InputDataError, match=f"orphan.png.*{expected}"):
        list_source_items("folder", root)


def test_a_label_without_its_image_is_named_and_nothing_is_prepared(tmp_path):
    """A folder dataset with train/labels/image03.tif and no train/images/image03.*: the label is
    named, not dropped (the dataset would be prepared with one training image fewer)."""
    root = _folder_dataset(tmp_path)
    _tif(root / "train" / "labels" / "image03.tif", _label())
    with pytest.raises(InputDataError, match=r"labels/image03\.tif: label file without an image"):
        list_source_items("folder", root)
    # the same for MoNuSeg's side-by-side layout: an XML without its TIFF
    _copy(CROP_IMAGE, tmp_path / "m" / "test" / "a.tif")
    _copy(CROP_XML, tmp_path / "m" / "test" / "a.xml")
    _copy(CROP_XML, tmp_path / "m" / "test" / "b.xml")
    with pytest.raises(InputDataError, match=r"b\.xml: label file without an image"):
        list_source_items("monuseg", tmp_path / "m", splits=["test"])


def test_empty_or_missing_split_folder(tmp_path):
    root = _folder_dataset(tmp_path, names=(("train", "a"),))
    (root / "test").mkdir()
    with pytest.raises(InputDataError, match=f"{root / 'test'}: empty split folder"):
        list_source_items("folder", root)
    (root / "test" / "images").mkdir()
    (root / "test" / "labels").mkdir()
    with pytest.raises(InputDataError, match="images: empty split folder"):
        list_source_items("folder", root)
    shutil.rmtree(root / "test")
    with pytest.raises(InputDataError, match="test: split folder not found"):
        list_source_items("folder", root)


# ---------------------------------------------------------------- prepare


def test_prepare_folder_dataset_manifest_and_checksum(tmp_path):
    items = list_source_items("folder", _folder_dataset(tmp_path / "src"))
    out = tmp_path / "prepared"
    table = prepare_dataset(items, out)

    assert list(table.columns) == list(MANIFEST_COLUMNS)
    assert list(table["name"]) == ["a", "b", "c"]
    assert list(table["split"]) == ["train", "train", "test"]
    assert list(table["n_nuclei"]) == [2, 2, 2]
    assert set(table["height"]) == {10} and set(table["width"]) == {12}

    written = pd.read_csv(out / "manifest.csv", dtype=str)
    assert list(written.columns) == list(MANIFEST_COLUMNS)
    assert list(written["image"]) == ["images/a.png", "images/b.png", "images/c.png"]
    assert list(written["label"]) == ["labels/a.tif", "labels/b.tif", "labels/c.tif"]

    for row, item in zip(table.itertuples(), items):
        assert row.image == str(out.absolute() / "images" / f"{item.name}.png")
        assert row.source_image == str(item.image_path)
        assert row.source_label == str(item.label_path)
        # Checksum definition: sha256(source image bytes + source label bytes).
        digest = hashlib.sha256(item.image_path.read_bytes() + item.label_path.read_bytes())
        assert row.source_sha256 == digest.hexdigest()
        np.testing.assert_array_equal(read_image(row.image), read_image(item.image_path))
        label = read_instance_map(row.label)
        expected = np.zeros_like(label)
        expected[_label() == 5] = 1
        expected[_label() == 70_000] = 2
        np.testing.assert_array_equal(label, expected)
        with tifffile.TiffFile(row.label) as tif:
            assert tif.pages[0].dtype == np.int32
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels", "manifest.csv"]


def test_prepare_monuseg_xml_and_instance_map_agree(tmp_path):
    # The same real crop, once as XML (test split) and once as a label map (train
    # split): both routes must give the same prepared label.
    root = tmp_path / "src"
    _copy(CROP_IMAGE, root / "train" / "images" / "crop_a.tif")
    _copy(CROP_LABEL, root / "train" / "labels" / "crop_a.tif")
    _copy(CROP_IMAGE, root / "test" / "crop_b.tif")
    _copy(CROP_XML, root / "test" / "crop_b.xml")
    table = prepare_dataset(list_source_items("monuseg", root), tmp_path / "out")
    assert list(table["n_nuclei"]) == [16, 16]
    a, b = (read_instance_map(p) for p in table["label"])
    np.testing.assert_array_equal(a, b)


def test_prepare_kumar_dataset(tmp_path):
    _tif(tmp_path / "train" / "Images" / "k.tif", _rgb())
    _mkdir(tmp_path / "train" / "Labels")
    scipy.io.savemat(tmp_path / "train" / "Labels" / "k.mat", {"inst_map": _label().astype(float)})
    items = list_source_items("kumar", tmp_path, splits=("train",))
    table = prepare_dataset(items, tmp_path / "out")
    assert table.loc[0, "n_nuclei"] == 2


def test_size_mismatch_names_both_files_and_leaves_nothing(tmp_path):
    root = _folder_dataset(tmp_path / "src")
    # The last item ("c", test) gets a label of another size: the failure comes
    # after two good items were already written to the temporary folder.
    bad_label = root / "test" / "labels" / "c.tif"
    _tif(bad_label, _label((10, 13)))
    items = list_source_items("folder", root)
    out = tmp_path / "prepared"
    with pytest.raises(InputDataError) as info:
        prepare_dataset(items, out)
    message = str(info.value)
    assert str(items[-1].image_path) in message and str(bad_label.absolute()) in message
    assert "(10, 12)" in message and "(10, 13)" in message
    assert not out.exists()
    assert os.listdir(tmp_path) == ["src"]  # no temporary left either


def test_failure_leaves_existing_out_dir_untouched(tmp_path):
    root = _folder_dataset(tmp_path / "src")
    out = tmp_path / "prepared"
    prepare_dataset(list_source_items("folder", root), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (root / "train" / "images" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputDataError, match="a.png"):
        prepare_dataset(list_source_items("folder", root), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_duplicate_names_across_splits(tmp_path):
    root = _folder_dataset(tmp_path / "src", names=(("train", "same"), ("test", "same")))
    with pytest.raises(InputDataError, match="same.*train.*same.*test"):
        prepare_dataset(list_source_items("folder", root), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_manifest_resolves_and_validates(tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(list_source_items("folder", _folder_dataset(tmp_path / "src")), out)
    moved = tmp_path / "moved"
    out.rename(moved)  # relative paths: the folder can move
    table = read_manifest(moved / "manifest.csv")
    assert table.loc[0, "label"] == str(moved.absolute() / "labels" / "a.tif")
    assert table["n_nuclei"].dtype == np.int64

    raw = pd.read_csv(moved / "manifest.csv", dtype=str)
    raw.drop(columns=["source_sha256"]).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(InputDataError, match=r"nocol.csv.*source_sha256"):
        read_manifest(tmp_path / "nocol.csv")
    (moved / "labels" / "b.tif").unlink()
    with pytest.raises(InputDataError, match="b.tif"):
        read_manifest(moved / "manifest.csv")
    assert len(read_manifest(moved / "manifest.csv", check_files=False)) == 3


def test_prepare_rejects_empty_items(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        prepare_dataset([], tmp_path / "out")


def test_source_item_fields():
    item = SourceItem("n", "train", Path("/a.tif"), Path("/a.xml"), "monuseg_xml")
    assert (item.name, item.split, item.label_kind) == ("n", "train", "monuseg_xml")


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_monuseg_layout_and_one_xml():
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg"
    root = Path(os.environ.get("NUDIFF_MONUSEG", default))
    if not root.is_dir():
        pytest.skip(f"real MoNuSeg data not found at {root} (set NUDIFF_MONUSEG)")
    items = list_source_items("monuseg", root)
    train = [i for i in items if i.split == "train"]
    test = [i for i in items if i.split == "test"]
    assert (len(train), len(test)) == (30, 14)  # data README: 30 train, 14 test images
    assert {i.label_kind for i in train} == {"instance_map"}
    assert {i.label_kind for i in test} == {"monuseg_xml"}

    item = test[0]
    n_regions = item.label_path.read_text().count("<Region ")
    inst = read_monuseg_xml(item.label_path, (1000, 1000))
    n = int(inst.max())
    # README: 250 to 1,900 nuclei per image; only a few regions are degenerate
    # or fully covered, so nearly every Region survives.
    assert 250 <= n <= 1_900
    assert 0.95 * n_regions <= n <= n_regions
    assert len(np.unique(inst)) == n + 1
