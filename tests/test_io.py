"""Readers and writers of images, instance maps, MoNuSeg XML and Kumar .mat files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image
from skimage.segmentation import relabel_sequential

from nudiff.errors import InputDataError
from nudiff.io.images import (
    read_image,
    read_instance_map,
    write_image,
    write_instance_map,
)
from nudiff.io.kumar import read_kumar_mat
from nudiff.io.monuseg import read_monuseg_xml

DATA = Path(__file__).parent / "data"


def _rgb(shape=(12, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _xml(*regions: list[tuple[float, float]]) -> str:
    """Aperio XML with one Region per list of (X, Y) vertices."""
    body = "".join(
        f'<Region Id="{i}"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
        + "</Vertices></Region>"
        for i, vertices in enumerate(regions, start=1)
    )
    return (
        '<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Attributes/><Regions>'
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/>'
        f"</RegionAttributeHeaders>{body}</Regions></Annotation></Annotations>"
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("compression", ["lzw", "packbits", "zlib", None])
def test_read_image_compressed_tiff(tmp_path, compression):
    rgb = _rgb()
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, rgb, compression=compression, photometric="rgb")
    np.testing.assert_array_equal(read_image(path), rgb)


def test_read_image_drops_alpha_and_reads_png(tmp_path):
    rgba = np.dstack([_rgb(), np.full((12, 10), 7, np.uint8)])
    tifffile.imwrite(tmp_path / "a.tiff", rgba, photometric="rgb", extrasamples=["unassalpha"])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    for name in ("a.tiff", "a.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (12, 10, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, rgba[..., :3])


def test_read_image_planar_separate_tiff(tmp_path):
    rgb = _rgb()
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), rgb)


def test_read_image_rejects_grey_and_two_channels(tmp_path):
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(
        tmp_path / "two.tif", np.zeros((8, 8, 2), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    for name in ("grey.tif", "two.tif"):
        with pytest.raises(InputDataError, match=name):
            read_image(tmp_path / name)


def test_read_image_rejects_16_bit(tmp_path):
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((8, 8, 3), np.uint16), photometric="rgb")
    with pytest.raises(InputDataError, match="deep.tif.*uint16"):
        read_image(tmp_path / "deep.tif")


@pytest.mark.parametrize("compression", ["lzw", "packbits", None])
def test_truncated_tiff_names_the_file(tmp_path, compression):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, _rgb((64, 64)), compression=compression, photometric="rgb")
    data = whole.read_bytes()
    for keep in (len(data) // 2, 100):
        cut = tmp_path / f"cut{keep}.tif"
        cut.write_bytes(data[:keep])
        with pytest.raises(InputDataError, match=f"cut{keep}.tif"):
            read_image(cut)
        with pytest.raises(InputDataError, match=f"cut{keep}.tif"):
            read_instance_map(cut)


def test_truncated_png_and_missing_file(tmp_path):
    write_image(tmp_path / "whole.png", _rgb((64, 64)))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputDataError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(InputDataError, match="absent.tif"):
        read_image(tmp_path / "absent.tif")
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(InputDataError, match="a.jpg"):
        read_image(tmp_path / "a.jpg")


def test_write_image_round_trip_and_atomic(tmp_path):
    rgb = _rgb()
    write_image(tmp_path / "out.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "out.png"), rgb)
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.png", rgb.astype(np.float32))
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.tif", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_instance_map_round_trip_int32_zlib(tmp_path):
    inst = np.zeros((9, 7), np.int64)
    inst[1:3, 1:3] = 70_000  # above uint16: must survive
    inst[5, 5] = 2**31 - 1
    write_instance_map(tmp_path / "l.tif", inst)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        page = tif.pages[0]
        assert page.dtype == np.int32
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    out = read_instance_map(tmp_path / "l.tif")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, inst)


def test_read_instance_map_types(tmp_path):
    inst = np.array([[0, 1], [70_000, 2]], np.uint32)
    tifffile.imwrite(tmp_path / "u32.tif", inst)
    np.testing.assert_array_equal(read_instance_map(tmp_path / "u32.tif"), inst)
    Image.fromarray(np.array([[0, 300], [2, 0]], np.uint16)).save(tmp_path / "u16.png")
    np.testing.assert_array_equal(read_instance_map(tmp_path / "u16.png"), [[0, 300], [2, 0]])

    tifffile.imwrite(tmp_path / "big.tif", np.array([[0, 2**31]], np.int64))
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((2, 2), np.float32))
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[0, -1]], np.int16))
    tifffile.imwrite(tmp_path / "rgb.tif", _rgb(), photometric="rgb")
    for name, why in [("big", "int32"), ("float", "integers"), ("neg", "negative"), ("rgb", "single-channel")]:
        with pytest.raises(InputDataError, match=f"{name}.tif.*{why}"):
            read_instance_map(tmp_path / f"{name}.tif")
    with pytest.raises(ValueError):
        write_instance_map(tmp_path / "x.tif", np.array([[-1]]))
    with pytest.raises(ValueError):
        write_instance_map(tmp_path / "x.tif", np.zeros((2, 2), np.float32))


# ---------------------------------------------------------------- MoNuSeg XML


def test_xml_square_matches_matlab_convention(tmp_path):
    # MATLAB pixel (row r, col c), 0-based, has its centre at X = c + 1, Y = r + 1.
    # X in [2.5, 5.5] holds centres X = 3, 4, 5 -> cols 2, 3, 4;
    # Y in [3.5, 6.5] holds centres Y = 4, 5, 6 -> rows 3, 4, 5.
    path = _write(tmp_path / "sq.xml", _xml(_square(2.5, 3.5, 5.5, 6.5)))
    inst = read_monuseg_xml(path, (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[3:6, 2:5] = 1
    assert inst.dtype == np.int32
    np.testing.assert_array_equal(inst, expected)


def test_xml_integer_square_lies_within_its_closed_outline(tmp_path):
    # Vertices on pixel centres X, Y in {3, 6}: centres strictly inside (X, Y in {4, 5})
    # must be in; centres outside [3, 6] must be out. Centres on the edge are the
    # rasteriser's boundary rule, not asserted.
    inst = read_monuseg_xml(_write(tmp_path / "i.xml", _xml(_square(3, 3, 6, 6))), (10, 10))
    assert np.all(inst[3:5, 3:5] == 1)
    outside = np.ones((10, 10), bool)
    outside[2:6, 2:6] = False
    assert not inst[outside].any()


def test_xml_overlap_later_region_wins(tmp_path):
    first = _square(0.5, 0.5, 4.5, 4.5)  # rows/cols 0..3
    second = _square(2.5, 2.5, 6.5, 6.5)  # rows/cols 2..5
    inst = read_monuseg_xml(_write(tmp_path / "o.xml", _xml(first, second)), (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[0:4, 0:4] = 1
    expected[2:6, 2:6] = 2
    np.testing.assert_array_equal(inst, expected)


def test_xml_fully_covered_region_is_relabelled_away(tmp_path):
    small = _square(2.5, 2.5, 3.5, 3.5)  # pixel (2, 2) only
    big = _square(0.5, 0.5, 4.5, 4.5)  # covers it
    other = _square(6.5, 6.5, 7.5, 7.5)  # pixel (6, 6)
    inst = read_monuseg_xml(_write(tmp_path / "c.xml", _xml(small, big, other)), (8, 8))
    # Drawn ids 1, 2, 3; id 1 vanished, so 2 -> 1 and 3 -> 2 (file order kept).
    assert set(np.unique(inst)) == {0, 1, 2}
    assert inst[2, 2] == 1 and inst[0, 0] == 1 and inst[6, 6] == 2


def test_xml_degenerate_regions_skipped_and_counted(tmp_path, caplog):
    good = _square(0.5, 0.5, 2.5, 2.5)
    two_points = [(5, 5), (7, 7), (5, 5), (7, 7)]  # 2 distinct vertices
    outside = _square(50.5, 50.5, 52.5, 52.5)  # no pixel inside an 8x8 image
    sliver = [(3.2, 5), (3.4, 5), (3.3, 5.1)]  # 3 vertices, no pixel centre inside
    path = _write(tmp_path / "degenerate.xml", _xml(two_points, good, outside, sliver))
    with caplog.at_level(logging.INFO, logger="nudiff.io.monuseg"):
        inst = read_monuseg_xml(path, (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[0:2, 0:2] = 1
    np.testing.assert_array_equal(inst, expected)
    assert "degenerate.xml: skipped 3 degenerate region(s) (1 with < 3" in caplog.text


def test_xml_float_vertices(tmp_path):
    # Real MoNuSeg test XMLs hold fractional coordinates such as X="260.666667".
    path = _write(tmp_path / "f.xml", _xml(_square(1.666667, 1.25, 3.333333, 3.75)))
    inst = read_monuseg_xml(path, (6, 6))
    expected = np.zeros((6, 6), np.int32)
    expected[1:3, 1:3] = 1  # centres Y = 2, 3 and X = 2, 3
    np.testing.assert_array_equal(inst, expected)


def test_xml_errors_name_the_file(tmp_path):
    empty = _write(tmp_path / "noregion.xml", _xml())
    with pytest.raises(InputDataError, match="noregion.xml"):
        read_monuseg_xml(empty, (8, 8))
    broken = _write(tmp_path / "broken.xml", _xml(_square(1, 1, 3, 3))[:-20])
    with pytest.raises(InputDataError, match="broken.xml.*malformed"):
        read_monuseg_xml(broken, (8, 8))
    bad_vertex = _write(tmp_path / "badvertex.xml", _xml([(1, 1), (3, "x"), (3, 3)]))
    with pytest.raises(InputDataError, match="badvertex.xml"):
        read_monuseg_xml(bad_vertex, (8, 8))
    with pytest.raises(InputDataError, match="absent.xml"):
        read_monuseg_xml(tmp_path / "absent.xml", (8, 8))
    with pytest.raises(ValueError, match="shape"):
        read_monuseg_xml(empty, (8, 0))


def test_xml_of_real_crop_reproduces_its_label():
    # The fixture XML traces each nucleus of the label crop along pixel edges in
    # 1-based coordinates (tests/data/make_monuseg_crop.py), so the MATLAB
    # convention must give the label back pixel for pixel; polygon(Y, X) would not.
    label = read_instance_map(DATA / "monuseg_crop_label.tif")
    inst = read_monuseg_xml(DATA / "monuseg_crop.xml", label.shape)
    np.testing.assert_array_equal(inst, relabel_sequential(label)[0])
    assert inst.max() == 16


# ---------------------------------------------------------------- Kumar .mat


def test_kumar_mat_double_and_integer(tmp_path):
    inst = np.zeros((6, 5), np.int32)
    inst[1:3, 1:3] = 1
    inst[4, 0:4] = 70_000
    scipy.io.savemat(tmp_path / "d.mat", {"inst_map": inst.astype(np.float64), "type_map": inst})
    scipy.io.savemat(tmp_path / "i.mat", {"inst_map": inst.astype(np.uint32)})
    for name in ("d.mat", "i.mat"):
        out = read_kumar_mat(tmp_path / name)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, inst)


def test_kumar_mat_errors(tmp_path):
    scipy.io.savemat(tmp_path / "nokey.mat", {"type_map": np.zeros((2, 2)), "other": 1.0})
    with pytest.raises(InputDataError, match=r"nokey.mat.*'inst_map'.*\['other', 'type_map'\]"):
        read_kumar_mat(tmp_path / "nokey.mat")

    scipy.io.savemat(tmp_path / "frac.mat", {"inst_map": np.full((2, 2), 0.5)})
    with pytest.raises(InputDataError, match="frac.mat.*non-integer"):
        read_kumar_mat(tmp_path / "frac.mat")

    # A v7.3 file is HDF5 behind a 128-byte MATLAB header whose version field is 0x0200.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    header += b"\x00" * 8 + b"\x00\x02" + b"IM"
    (tmp_path / "v73.mat").write_bytes(header + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(InputDataError, match="v73.mat.*v7.3"):
        read_kumar_mat(tmp_path / "v73.mat")

    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(InputDataError, match="junk.mat"):
        read_kumar_mat(tmp_path / "junk.mat")
    with pytest.raises(InputDataError, match="absent.mat"):
        read_kumar_mat(tmp_path / "absent.mat")
