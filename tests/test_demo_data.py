"""Tests for the synthetic H&E demo dataset (nudiff.datasets.demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from skimage.measure import label as label_components
from skimage.measure import regionprops

from nudiff.datasets import demo
from nudiff.datasets.demo import STYLES, generate_demo_tile, make_demo_dataset


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The default dataset (8 train + 4 test tiles of 256x256), generated once."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, make_demo_dataset(out)


def _tiles(table: pd.DataFrame):
    for row in table.itertuples():
        yield row, np.asarray(Image.open(row.image)), tifffile.imread(row.label)


def _file_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(n_train=2, n_test=1, image_size=96)
    make_demo_dataset(tmp_path / "a", seed=3, **kwargs)
    make_demo_dataset(tmp_path / "b", seed=3, **kwargs)
    make_demo_dataset(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_file_bytes(tmp_path / k) for k in "abc")
    assert len(a) == 2 * 3 + 1  # image + label per tile, plus styles.csv
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if k.endswith((".png", ".tif")) and a[k] != c[k]]
    assert len(differing) == 6


def test_tile_does_not_depend_on_size_of_other_split(tmp_path):
    make_demo_dataset(tmp_path / "a", n_train=1, n_test=1, image_size=64)
    make_demo_dataset(tmp_path / "b", n_train=1, n_test=3, image_size=64)
    name = "train/labels/train_000_lymphocytic.tif"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_layout_dtypes_and_style_sidecar(default_dataset):
    out, table = default_dataset
    assert list(table["split"]).count("train") == 8 and list(table["split"]).count("test") == 4
    for split in ("train", "test"):
        images = sorted(p.stem for p in (out / split / "images").glob("*.png"))
        labels = sorted(p.stem for p in (out / split / "labels").glob("*.tif"))
        assert images == labels == sorted(table.loc[table["split"] == split, "name"])
    for row, rgb, inst in _tiles(table):
        assert Image.open(row.image).mode == "RGB"
        assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
        assert inst.shape == (256, 256) and inst.dtype == np.int32
        assert row.name.endswith(row.style)
    sidecar = pd.read_csv(out / "styles.csv")
    pd.testing.assert_frame_equal(sidecar, table[["split", "name", "style", "n_nuclei"]])
    # three styles dealt in turn: every style is in both splits
    assert set(table.loc[table["split"] == "test", "style"]) == set(STYLES)


def test_labels_are_sequential_connected_and_in_range(default_dataset):
    _, table = default_dataset
    for row, _, inst in _tiles(table):
        n = int(inst.max())
        assert n == row.n_nuclei
        np.testing.assert_array_equal(np.unique(inst), np.arange(n + 1))
        assert 40 <= n <= 150, (row.name, n)  # the brief's range per 256x256 tile
        # each nucleus is one 4-connected piece: the label is the drawn pixel set
        assert label_components(inst, background=0, connectivity=1).max() == n


def _touching_ids(inst: np.ndarray) -> set[int]:
    """Ids of nuclei that share a 4-neighbour edge with another nucleus."""
    ids: set[int] = set()
    for a, b in ((inst[:, 1:], inst[:, :-1]), (inst[1:, :], inst[:-1, :])):
        meet = (a > 0) & (b > 0) & (a != b)
        ids.update(a[meet].tolist(), b[meet].tolist())
    return ids


def test_touching_and_isolated_nuclei_both_occur(default_dataset):
    _, table = default_dataset
    touching = isolated = 0
    for _, _, inst in _tiles(table):
        n_touching = len(_touching_ids(inst))
        touching += n_touching
        isolated += int(inst.max()) - n_touching
    assert touching > 0 and isolated > 0


def test_nuclei_are_darker_and_bluer_than_background(default_dataset):
    # Haematoxylin absorbs red and green more than eosin does, so nuclei are darker and
    # their blue-minus-red is higher than the pink stroma's.
    _, table = default_dataset
    for row, rgb, inst in _tiles(table):
        rgb = rgb.astype(float)
        nuc, bg = rgb[inst > 0], rgb[inst == 0]
        assert nuc.mean() < bg.mean() - 20, row.name
        blue_minus_red = lambda px: float(np.mean(px[:, 2] - px[:, 0]))  # noqa: E731
        assert blue_minus_red(nuc) > blue_minus_red(bg) + 20, row.name
        assert bg[:, 0].mean() > bg[:, 1].mean() + 30, row.name  # pink: red well above green


def test_styles_differ_in_nucleus_size_shape_and_stain(default_dataset):
    _, table = default_dataset
    area, aspect, bg_green = {}, {}, {}
    for row, rgb, inst in _tiles(table):
        props = regionprops(inst)
        area.setdefault(row.style, []).extend(p.area for p in props)
        aspect.setdefault(row.style, []).extend(p.axis_major_length / max(p.axis_minor_length, 1e-6) for p in props)
        bg_green.setdefault(row.style, []).append(rgb[inst == 0, 1].mean())
    mean = {
        k: {s: float(np.mean(v[s])) for s in v} for k, v in (("area", area), ("aspect", aspect), ("green", bg_green))
    }
    # design: epithelial radius 6-8.5 px vs lymphocytic 3.4-4.6 px; stromal aspect 2.5-4
    assert mean["area"]["epithelial"] > 2 * mean["area"]["lymphocytic"]
    assert mean["aspect"]["stromal"] > 1.8 > 1.4 > mean["aspect"]["lymphocytic"]
    # stroma holds more eosin (absorbs green) than the lymphocytic background
    assert mean["green"]["stromal"] < mean["green"]["lymphocytic"] - 15


def test_rasterise_splits_overlaps_into_one_piece_per_nucleus():
    # Hand-built: disc A (radius 10, centre between pixels) and a thin ellipse B (semi-axes
    # 15 x 2 along x) through A's middle row. On that row B's normalised radius is smaller,
    # so B wins it and cuts A into a top and a larger bottom half; A keeps only the bottom,
    # the top becomes background. C lies outside the tile with a 5 px corner inside, under
    # the minimum area: dropped.
    nuclei = np.array(
        [
            [20.5, 20.5, 10.0, 10.0, 0.0],  # A
            [20.0, 20.5, 15.0, 2.0, 0.0],  # B
            [-4.0, 60.0, 5.0, 5.0, 0.0],
        ]
    )  # C
    inst, rho = demo._rasterise(np.random.default_rng(0), 64, nuclei, irregularity=0.0)
    assert set(np.unique(inst)) == {0, 1, 2}
    for k in (1, 2):
        assert label_components(inst == k, connectivity=1).max() == 1
    assert np.all(inst[20, 6:35] == 2)  # B spans its full length, through A
    assert np.all(inst[21:30, 20] == 1) and np.all(inst[11:20, 20] == 0)
    assert np.all(rho[inst > 0] < 1) and np.all(rho[inst == 0] == 1)


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    calls = []
    real = demo.generate_demo_tile

    def flaky(rng, size, style):
        calls.append(style)
        if len(calls) == 3:
            raise RuntimeError("tile generator failed")
        return real(rng, size, style)

    monkeypatch.setattr(demo, "generate_demo_tile", flaky)
    with pytest.raises(RuntimeError, match="tile generator failed"):
        make_demo_dataset(tmp_path / "demo", n_train=4, n_test=1, image_size=64)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []  # no out_dir, no temporary sibling


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"image_size": 32}, "image_size=32"),
        ({"n_train": -1}, "n_train=-1"),
        ({"styles": ("lymphocytic", "glial")}, "glial"),
        ({"n_train": 0, "n_test": 0}, "n_test"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        make_demo_dataset(tmp_path / "demo", **kwargs)
    assert not (tmp_path / "demo").exists()


def test_tile_rejects_unknown_style():
    with pytest.raises(ValueError, match="'glial'"):
        generate_demo_tile(np.random.default_rng(0), 64, "glial")  # type: ignore[arg-type]
