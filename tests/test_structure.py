"""Tests for nudiff.structure: HoVer-Net targets and the watershed post-processing.

Expected distance maps are derived by hand from HoVer-Net's convention (gen_instance_hv_map in
vqdang/hover_net models/hovernet/targets.py): centre of mass rounded half up to pixel c, offset
of column x = x + 1 - c (its 1-based range minus a 0-based centre), negative offsets divided by
their largest magnitude and positive ones by their maximum, per nucleus.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nudiff.structure import (
    HORIZONTAL,
    N_CHANNELS,
    SEMANTIC,
    VERTICAL,
    clean_instances,
    instances_from_structure,
    nuclei_structure,
    structure_from_model_range,
    structure_to_model_range,
)
from nudiff.structure.watershed import opencv_ellipse, sobel_kernels


def simple_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI (Kumar et al. 2017) by brute force over instance pairs, for tiny test maps."""
    true_ids = [t for t in np.unique(true) if t]
    pred_ids = [p for p in np.unique(pred) if p]
    used, inter_sum, union_sum = set(), 0, 0
    for t in true_ids:
        t_mask = true == t
        best, best_iou = None, 0.0
        for p in pred_ids:
            p_mask = pred == p
            iou = (t_mask & p_mask).sum() / (t_mask | p_mask).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            union_sum += t_mask.sum()
        else:
            used.add(best)
            inter_sum += (t_mask & (pred == best)).sum()
            union_sum += (t_mask | (pred == best)).sum()
    union_sum += sum((pred == p).sum() for p in pred_ids if p not in used)
    return inter_sum / union_sum


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def touching_discs(shape=(40, 56), ids=(1, 2)) -> np.ndarray:
    """Two discs of radius 8 whose centres are 14 px apart; the overlap goes to the nearer centre."""
    inst = np.zeros(shape, dtype=np.int64)
    left, right = disc(shape, (20, 20), 8), disc(shape, (20, 34), 8)
    cols = np.indices(shape)[1]
    inst[left & ~(right & (cols >= 27))] = ids[0]
    inst[right & (cols >= 27)] = ids[1]
    return inst


# ---------------------------------------------------------------- targets


def test_5x5_square_matches_hand_derived_maps():
    inst = np.zeros((10, 12), dtype=np.uint16)
    inst[2:7, 3:8] = 7
    s = nuclei_structure(inst)
    assert s.shape == (10, 12, N_CHANNELS) and s.dtype == np.float32
    # centre index 2 of 0..4; offsets j + 1 - 2 = -1, 0, 1, 2, 3 -> -1, 0, 1/3, 2/3, 1
    row = np.array([-1, 0, 1 / 3, 2 / 3, 1], dtype=np.float32)
    np.testing.assert_allclose(s[2:7, 3:8, HORIZONTAL], np.tile(row, (5, 1)), atol=1e-7)
    np.testing.assert_allclose(s[2:7, 3:8, VERTICAL], np.tile(row[:, None], (1, 5)), atol=1e-7)
    np.testing.assert_array_equal(s[..., SEMANTIC], inst > 0)
    outside = inst == 0
    assert not s[outside][:, [HORIZONTAL, VERTICAL]].any()


def test_rectangles_show_the_one_pixel_origin_and_separate_scaling():
    inst = np.zeros((8, 9), dtype=np.int32)
    inst[4:6, 1:4] = 1  # 2 x 3: centre row 0.5 -> 1, col 1 -> offsets rows 0, 1 and cols 0, 1, 2
    inst[0, 2:8] = 2  # 1 x 6: centre col 2.5 -> 3 -> offsets -2, -1, 0, 1, 2, 3; row 0 -> offset 1
    s = nuclei_structure(inst)
    np.testing.assert_allclose(s[4:6, 1:4, HORIZONTAL], [[0, 0.5, 1], [0, 0.5, 1]], atol=1e-7)
    np.testing.assert_allclose(s[4:6, 1:4, VERTICAL], [[0, 0, 0], [1, 1, 1]], atol=1e-7)
    np.testing.assert_allclose(s[0, 2:8, HORIZONTAL], [-1, -0.5, 0, 1 / 3, 2 / 3, 1], atol=1e-7)
    np.testing.assert_allclose(s[0, 2:8, VERTICAL], np.ones(6), atol=1e-7)


def test_l_shape_with_non_integer_centre():
    inst = np.zeros((5, 6), dtype=np.uint8)
    inst[1, 1:5] = 3
    inst[2, 1] = 3
    # rows mean 0.2 -> 0 (offsets 1, 2); cols mean 1.2 -> 1 (offsets 0..3)
    s = nuclei_structure(inst)
    np.testing.assert_allclose(s[1, 1:5, HORIZONTAL], [0, 1 / 3, 2 / 3, 1], atol=1e-7)
    np.testing.assert_allclose(s[1, 1:5, VERTICAL], [0.5] * 4, atol=1e-7)
    assert s[2, 1, HORIZONTAL] == 0 and s[2, 1, VERTICAL] == 1


def test_nucleus_at_the_image_corner_equals_one_inside():
    corner = np.zeros((9, 9), dtype=np.int32)
    corner[:5, :5] = 1
    inside = np.zeros((9, 9), dtype=np.int32)
    inside[3:8, 2:7] = 1
    np.testing.assert_array_equal(nuclei_structure(corner)[:5, :5], nuclei_structure(inside)[3:8, 2:7])


def test_range_and_touching_nuclei_scaled_separately():
    inst = touching_discs(ids=(5, 9))
    s = nuclei_structure(inst)
    assert s.min() >= -1 and s.max() <= 1
    for nucleus in (5, 9):
        alone = nuclei_structure(np.where(inst == nucleus, inst, 0))
        np.testing.assert_array_equal(s[inst == nucleus], alone[inst == nucleus])
        for channel in (HORIZONTAL, VERTICAL):
            values = s[inst == nucleus, channel]
            assert values.min() == -1 and values.max() == 1


def test_relabelling_and_large_ids_give_the_same_structure():
    inst = touching_discs()
    inst[2:6, 2:9] = 3
    new_ids = np.array([0, 2**31 + 5, 70000, 65536], dtype=np.int64)  # order of ids changes too
    relabelled = new_ids[inst]
    assert relabelled.max() > 65535
    np.testing.assert_array_equal(nuclei_structure(inst), nuclei_structure(relabelled))
    np.testing.assert_array_equal(nuclei_structure(inst), nuclei_structure(relabelled.astype(np.uint64)))


def test_map_without_background_and_empty_map():
    full = np.full((3, 4), 42, dtype=np.int16)
    s = nuclei_structure(full)
    assert (s[..., SEMANTIC] == 1).all()
    assert not nuclei_structure(np.zeros((6, 7), dtype=np.uint8)).any()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 1), dtype=np.int32),  # not 2-D
        np.zeros((4, 4), dtype=np.float32),  # not integer
        -np.ones((4, 4), dtype=np.int32),  # negative ids
    ],
)
def test_nuclei_structure_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        nuclei_structure(bad)


# ---------------------------------------------------------------- model range


def test_model_range_conversions_invert_each_other():
    s = nuclei_structure(touching_discs())
    x = structure_to_model_range(s)
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(np.unique(x[..., SEMANTIC]), [-1, 1])
    np.testing.assert_array_equal(x[..., HORIZONTAL:], s[..., HORIZONTAL:])
    np.testing.assert_allclose(structure_from_model_range(x), s, atol=1e-7)
    batch = np.stack([s, s])
    np.testing.assert_allclose(structure_from_model_range(structure_to_model_range(batch)), batch, atol=1e-7)


def test_from_model_range_clips_overshoot():
    x = np.array([[[1.5, -3.0, 2.0], [-2.0, 0.25, -0.5]]], dtype=np.float32)
    s = structure_from_model_range(x)
    np.testing.assert_allclose(s, [[[1.0, -1.0, 1.0], [0.0, 0.25, -0.5]]])


def test_model_range_rejects_bad_input():
    with pytest.raises(ValueError):
        structure_to_model_range(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError):
        structure_from_model_range(np.full((2, 2, 3), np.nan))


# ---------------------------------------------------------------- watershed


def test_opencv_kernels():
    # OpenCV's documented 3x3 and 5x5 Sobel x kernels are these rows' outer products
    np.testing.assert_array_equal(sobel_kernels(3)[0], [-1, 0, 1])
    np.testing.assert_array_equal(sobel_kernels(3)[1], [1, 2, 1])
    np.testing.assert_array_equal(sobel_kernels(5)[0], [-1, -2, 0, 2, 1])
    np.testing.assert_array_equal(sobel_kernels(5)[1], [1, 4, 6, 4, 1])
    # cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    expected = [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]]
    np.testing.assert_array_equal(opencv_ellipse(5), np.array(expected, dtype=bool))
    np.testing.assert_array_equal(opencv_ellipse(3), ndimage.generate_binary_structure(2, 1))


def test_watershed_splits_two_touching_discs():
    inst = touching_discs()
    assert ndimage.label(inst > 0)[1] == 1  # one connected foreground blob
    out = instances_from_structure(nuclei_structure(inst))
    assert out.dtype == np.int32 and out.shape == inst.shape
    np.testing.assert_array_equal(np.unique(out), [0, 1, 2])
    assert simple_aji(inst, out) > 0.95


def test_single_disc_stays_one_instance():
    inst = disc((32, 32), (15, 16), 9).astype(np.int32) * 4
    out = instances_from_structure(nuclei_structure(inst))
    np.testing.assert_array_equal(np.unique(out), [0, 1])
    assert simple_aji(inst, out) > 0.95


def test_empty_structure_gives_empty_map():
    for shape in [(16, 16, 3), (1, 1, 3), (5, 3, 3)]:
        out = instances_from_structure(np.zeros(shape, dtype=np.float32))
        assert out.shape == shape[:2] and out.dtype == np.int32 and not out.any()


def test_round_trip_recovers_a_synthetic_map():
    shape = (64, 72)
    inst = touching_discs(shape, ids=(11, 70000)).astype(np.int64)
    inst[disc(shape, (50, 12), 6)] = 5
    inst[disc(shape, (48, 52), 7)] = 300
    rows, cols = np.indices(shape)
    inst[(rows >= 44) & (np.abs(cols - 63) <= 3) & (inst == 0)] = 8  # a bar touching nucleus 300
    out = instances_from_structure(nuclei_structure(inst))
    assert out.max() == 5
    assert simple_aji(inst, out) > 0.95


def test_model_range_output_is_read_as_probability():
    s = nuclei_structure(touching_discs())
    via_model = structure_from_model_range(structure_to_model_range(s))
    np.testing.assert_array_equal(instances_from_structure(via_model), instances_from_structure(s))


def test_odd_shapes_run():
    inst = np.zeros((7, 31), dtype=np.int32)
    inst[1:6, 2:14] = 1
    inst[1:6, 16:29] = 2
    out = instances_from_structure(nuclei_structure(inst), sobel_ksize=5)
    assert out.shape == inst.shape and set(np.unique(out)) <= {0, 1, 2}


@pytest.mark.parametrize(
    "structure, options",
    [
        (np.zeros((8, 8)), {}),
        (np.zeros((8, 8, 2)), {}),
        (np.full((8, 8, 3), np.nan), {}),
        (np.zeros((8, 8, 3)), {"sobel_ksize": 4}),
        (np.zeros((8, 8, 3)), {"opening_size": 4}),
        (np.zeros((8, 8, 3)), {"marker_threshold": 1.5}),
        (np.zeros((8, 8, 3)), {"min_object_size": -1}),
    ],
)
def test_instances_from_structure_rejects_bad_input(structure, options):
    with pytest.raises(ValueError):
        instances_from_structure(structure, **options)


# ---------------------------------------------------------------- cleanup of sampled labels


def test_cleanup_fills_a_hole_but_never_over_another_nucleus():
    """A background hole becomes part of its nucleus; a hole holding another nucleus keeps it."""
    inst = np.zeros((12, 22), np.int32)
    inst[1:7, 1:7] = 1
    inst[3:5, 3:5] = 0  # a 2x2 background hole in nucleus 1
    inst[1:8, 10:17] = 2
    inst[3:6, 12:15] = 3  # nucleus 3 fills the 3x3 hole of ring 2 exactly
    expected = inst.copy()
    expected[3:5, 3:5] = 1
    assert np.array_equal(clean_instances(inst, min_area=0), expected)
    # and without filling, the hole stays
    assert np.array_equal(clean_instances(inst, min_area=0, fill_holes=False), inst)


def test_cleanup_keeps_the_largest_8_connected_piece_of_a_nucleus():
    """A nucleus in two pieces keeps only the larger; pieces touching at a corner are one piece."""
    inst = np.zeros((10, 12), np.int32)
    inst[1:4, 1:4] = 1  # 9 px
    inst[7:9, 1:2] = 1  # 2 px, apart: dropped
    inst[1:3, 7:9] = 2  # 4 px
    inst[3:6, 9:11] = 2  # 6 px, touching the first piece at a corner only: kept with it
    expected = inst.copy()
    expected[7:9, 1:2] = 0
    assert np.array_equal(clean_instances(inst, min_area=0), expected)
    assert np.array_equal(clean_instances(inst, min_area=0, largest_fragment=False), inst)


def test_cleanup_drops_nuclei_below_min_area_after_filling_them():
    """Sizes 4, 5 and 6 px with min_area 5: the 4-px one goes. A ring of 8 px around a 1-px hole
    is 9 px once filled, so min_area 9 keeps it only when holes are filled."""
    inst = np.zeros((6, 30), np.int32)
    inst[0:2, 0:2] = 1  # 4 px
    inst[0, 5:10] = 2  # 5 px
    inst[0:2, 13:16] = 3  # 6 px
    out = clean_instances(inst, min_area=5)
    assert np.array_equal(out[inst == 1], np.zeros(4))
    assert np.array_equal(out, np.where(inst == 2, 1, np.where(inst == 3, 2, 0)))

    ring = np.zeros((5, 5), np.int32)
    ring[1:4, 1:4] = 7
    ring[2, 2] = 0
    filled = np.zeros((5, 5), np.int32)
    filled[1:4, 1:4] = 1
    assert np.array_equal(clean_instances(ring, min_area=9), filled)
    assert not clean_instances(ring, min_area=9, fill_holes=False).any()
    # min_area 0 keeps even a single pixel
    speck = np.zeros((3, 3), np.int32)
    speck[1, 1] = 4
    assert np.array_equal(clean_instances(speck, min_area=0), (speck > 0).astype(np.int32))


def test_cleanup_renumbers_ids_consecutively_and_leaves_its_input_alone():
    """Ids 3, 7 and 40 with 7 dropped come out as 1 and 2 on the same (filled) regions, int32;
    the input array (any integer type) is not modified."""
    inst = np.zeros((8, 20), np.uint16)
    inst[1:5, 12:16] = 3
    inst[6, 0] = 7  # 1 px: dropped
    inst[1:5, 1:5] = 40
    inst[2, 2] = 0  # a hole to fill: the copy changes, the input must not
    before = inst.copy()
    out = clean_instances(inst, min_area=4)
    assert out.dtype == np.int32
    assert np.array_equal(inst, before)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    a, b = np.unique(out[1:5, 12:16]), np.unique(out[1:5, 1:5])
    assert len(a) == len(b) == 1 and {a[0], b[0]} == {1, 2}
    assert (out > 0).sum() == 32  # nothing but the two 4x4 squares
    assert not clean_instances(np.zeros((4, 4), np.int32)).any()


def test_cleanup_leaves_no_hole_where_a_dropped_speck_was():
    """A 2x2 speck (id 2) inside a hole of nucleus 1 is dropped by min_area 5; nucleus 1 should
    then be filled (the module promises filled nuclei), not left with a background hole."""
    inst = np.zeros((12, 12), np.int32)
    inst[1:11, 1:11] = 1
    inst[4:8, 4:8] = 0
    inst[5:7, 5:7] = 2
    expected = np.zeros_like(inst)
    expected[1:11, 1:11] = 1
    assert np.array_equal(clean_instances(inst, min_area=5), expected)


def test_cleanup_keeps_a_nested_nucleus_hole_for_that_nucleus():
    """Ring 2 lies in the hole of ring 1, and ring 2 has a hole of its own. Filling should give ring
    2's hole to nucleus 2; nucleus 1 (processed first) takes it, which makes nucleus 1 two
    disconnected regions."""
    inst = np.zeros((15, 15), np.int32)
    inst[1:14, 1:14] = 1
    inst[3:12, 3:12] = 0
    inst[4:11, 4:11] = 2
    inst[6:9, 6:9] = 0
    out = clean_instances(inst, min_area=0)
    assert (out[6:9, 6:9] == 2).all()
    assert ndimage.label(out == 1, structure=np.ones((3, 3)))[1] == 1


def test_cleanup_opening_smooths_outlines_and_drops_nuclei_thinner_than_the_disk():
    """opening_radius 1 (a 3x3 cross): a 3-px spur on a square shrinks to the one pixel the
    cross still covers from inside the square, and the square's corners go; a line one pixel
    wide vanishes; a neighbour touching the square is opened on its
    own pixels, not merged. radius 0 changes nothing."""
    inst = np.zeros((12, 20), np.int32)
    inst[2:8, 2:8] = 1
    inst[4, 8:11] = 1  # a 3-px spur
    inst[2:8, 8 + 3 : 8 + 8] = 2  # a second square, right of the spur's tip
    inst[10, 2:18] = 3  # a line one pixel thick
    out = clean_instances(inst, min_area=0, opening_radius=1)
    expected = np.zeros_like(inst)
    expected[2:8, 2:8] = 1
    expected[4, 8] = 1
    expected[2:8, 11:16] = 2
    # a disk of radius 1 cannot fit a square's corners: the opening rounds them
    for r, c in [(2, 2), (2, 7), (7, 2), (7, 7), (2, 11), (2, 15), (7, 11), (7, 15)]:
        expected[r, c] = 0
    assert np.array_equal(out, expected)
    assert np.array_equal(clean_instances(inst, min_area=0, opening_radius=0), clean_instances(inst, min_area=0))


@pytest.mark.parametrize(
    "inst, options",
    [
        (np.zeros((4, 4, 1), np.int32), {}),  # not 2-D
        (np.zeros((4, 4), np.float32), {}),  # not integer
        (np.zeros((4, 4), np.int32), {"min_area": -1}),
        (np.zeros((4, 4), np.int32), {"opening_radius": -1}),
    ],
)
def test_cleanup_rejects_bad_input(inst, options):
    with pytest.raises(ValueError):
        clean_instances(inst, **options)
