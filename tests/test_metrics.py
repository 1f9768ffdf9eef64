"""Tests of nudiff.metrics: hand-computed cases, invariances, and a slow loop-based reference."""

from __future__ import annotations

import numpy as np
import pytest

from nudiff.metrics import (
    OverlapTable,
    PanopticQuality,
    aji,
    aji_plus,
    compute_all,
    dice,
    overlap_table,
    pq,
)

SCORES = ("dice", "aji", "aji_plus", "dq", "sq", "pq")

# Case A: one prediction (7) covers two true nuclei (1: 6 px, 2: 2 px).
A_TRUE = np.array(
    [
        [1, 1, 1, 2],
        [1, 1, 1, 2],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
A_PRED = np.array(
    [
        [7, 7, 7, 7],
        [7, 7, 7, 7],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)

# Case B: a good match (1-4), a weak match (2-8, IoU exactly 0.5) and a stray prediction (6).
B_TRUE = np.array(
    [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 2],
        [0, 0, 0, 0, 2, 2],
    ]
)
B_PRED = np.array(
    [
        [4, 4, 0, 0, 0, 0],
        [4, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 8],
        [6, 6, 0, 0, 0, 8],
    ]
)

# Case C: greedy (AJI) and one-to-one (AJI+) pairings differ.
# true: T1 = cols 0-5 (6 px), T2 = cols 6-8 (3 px); pred: P2 = cols 0-1 (2 px), P1 = cols 2-8 (7 px)
C_TRUE = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]])
C_PRED = np.array([[2, 2, 1, 1, 1, 1, 1, 1, 1, 0]])

# Case D: the max-summed-IoU pairing leaves out a pair of IoU above 0.5.
# true: T1 = cols 0-11 (12 px), T2 = col 12; pred: P1 = cols 0-4 (5 px), P2 = cols 5-12 (8 px)
D_TRUE = np.array([[1] * 12 + [2]])
D_PRED = np.array([[1] * 5 + [2] * 8])

# Case E: a tie of IoU. true: T = cols 0-5; pred: Pa = cols 0-1 (inside T), Pb = cols 2-11.
E_TRUE = np.array([[1] * 6 + [0] * 6])
E_PRED = np.array([[5] * 2 + [3] * 10])


def random_rectangles(rng: np.random.Generator, shape=(10, 10), max_count=5, ids=None) -> np.ndarray:
    """Up to ``max_count`` random rectangles painted in turn (later ones overwrite), random ids."""
    out = np.zeros(shape, dtype=np.int64)
    count = int(rng.integers(0, max_count + 1))
    ids = rng.choice(10**6, size=count, replace=False) + 1 if ids is None else ids
    for label in ids[:count]:
        y0, x0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, 5), rng.integers(1, 5)
        out[y0 : y0 + h, x0 : x0 + w] = label
    return out


def test_case_a_one_prediction_over_two_nuclei():
    # |T1|=6, |T2|=2, |P|=8; T1&P = 6 (IoU 6/8), T2&P = 2 (IoU 2/8).
    # Dice: 2*8/(8+8) = 1.
    # AJI: both true take P: inter 6+2 = 8, union 8+8 = 16 -> 0.5 (P's area counted twice).
    # AJI+: T1-P only, T2 unpaired: inter 6, union 8 + 2 = 10 -> 0.6.
    # PQ: T1-P matches (0.75 > 0.5), T2 missed: tp 1, fp 0, fn 1; dq = 1/1.5, sq 0.75, pq 0.5.
    scores = compute_all(A_TRUE, A_PRED)
    assert scores["dice"] == pytest.approx(1.0)
    assert scores["aji"] == pytest.approx(0.5)
    assert scores["aji_plus"] == pytest.approx(0.6)
    assert pq(A_TRUE, A_PRED) == pytest.approx(PanopticQuality(2 / 3, 0.75, 0.5, 1, 0, 1))


def test_aji_is_not_symmetric_but_aji_plus_is():
    # Swapped, the single true instance (8 px) takes T1 (IoU 0.75); T2 is never taken:
    # inter 6, union 8 + 2 = 10 -> 0.6, whereas aji(A_TRUE, A_PRED) = 0.5 (case A).
    assert aji(A_PRED, A_TRUE) == pytest.approx(0.6)
    assert aji_plus(A_PRED, A_TRUE) == pytest.approx(0.6)
    assert dice(A_PRED, A_TRUE) == pytest.approx(1.0)


def test_case_b_unmatched_prediction():
    # |T1|=4, |T2|=4, |P4|=3, |P8|=2, |P6|=2. T1&P4 = 3 (IoU 3/4), T2&P8 = 2 (IoU 2/4), P6 alone.
    # Dice: 2*(3+2)/(8+7) = 2/3.
    # AJI = AJI+: inter 3+2 = 5, union 4+4 + |P6| 2 = 10 -> 0.5.
    # PQ@0.5: only T1-P4 (0.5 is not > 0.5): tp 1, fp 2, fn 1; dq = 1/2.5 = 0.4, sq 0.75, pq 0.3.
    # PQ@0.4: both pairs: tp 2, fp 1, fn 0; dq = 2/2.5 = 0.8, sq = (0.75+0.5)/2 = 0.625, pq 0.5.
    assert dice(B_TRUE, B_PRED) == pytest.approx(2 / 3)
    assert aji(B_TRUE, B_PRED) == pytest.approx(0.5)
    assert aji_plus(B_TRUE, B_PRED) == pytest.approx(0.5)
    assert pq(B_TRUE, B_PRED) == pytest.approx(PanopticQuality(0.4, 0.75, 0.3, 1, 2, 1))
    assert pq(B_TRUE, B_PRED, match_iou=0.4) == pytest.approx(PanopticQuality(0.8, 0.625, 0.5, 2, 1, 0))


def test_case_c_greedy_and_one_to_one_pairings_differ():
    # IoU(T1,P2) = 2/6; IoU(T1,P1) = 4/(6+7-4) = 4/9; IoU(T2,P1) = 3/7.
    # AJI: T1->P1 (4/9), T2->P1 (3/7); P2 never taken: inter 4+3 = 7, union 9+7+2 = 18 -> 7/18.
    # AJI+: max summed IoU is T1-P2 + T2-P1 (1/3 + 3/7 > 4/9): inter 2+3 = 5, union 6+7 = 13 -> 5/13.
    # Dice: both foregrounds are cols 0-8 -> 1.
    # PQ@0.5: no IoU above 0.5 -> all zero, tp 0, fp 2, fn 2.
    # PQ@0.3: the max-IoU pairs both pass: tp 2, dq 1, sq = (1/3 + 3/7)/2 = 8/21.
    # PQ@0.4: of those pairs only T2-P1 passes: tp 1, fp 1, fn 1, dq 0.5, sq 3/7, pq 3/14.
    assert dice(C_TRUE, C_PRED) == pytest.approx(1.0)
    assert aji(C_TRUE, C_PRED) == pytest.approx(7 / 18)
    assert aji_plus(C_TRUE, C_PRED) == pytest.approx(5 / 13)
    assert pq(C_TRUE, C_PRED) == PanopticQuality(0.0, 0.0, 0.0, 0, 2, 2)
    assert pq(C_TRUE, C_PRED, match_iou=0.3) == pytest.approx(PanopticQuality(1.0, 8 / 21, 8 / 21, 2, 0, 0))
    assert pq(C_TRUE, C_PRED, match_iou=0.4) == pytest.approx(PanopticQuality(0.5, 3 / 7, 3 / 14, 1, 1, 1))


def test_case_d_threshold_rules_differ_below_and_above_one_half():
    # IoU(T1,P1) = 5/12, IoU(T1,P2) = 7/(12+8-7) = 7/13 ~ 0.538, IoU(T2,P2) = 1/8.
    # Max summed IoU: T1-P1 + T2-P2 = 0.5417 > 7/13, so AJI+ pairs T1-P1, T2-P2:
    #   inter 5+1 = 6, union 12+8 = 20 -> 0.3.
    # AJI: T1->P2, T2->P2, P1 never taken: inter 7+1 = 8, union 13+8+5 = 26 -> 4/13.
    # PQ@0.5 (all pairs above 0.5): T1-P2 matches: tp 1, fp 1, fn 1, dq 0.5, sq 7/13, pq 7/26.
    # PQ@0.4 (max-sum pairing, then threshold): only T1-P1 (5/12) passes: sq 5/12, pq 5/24.
    assert aji_plus(D_TRUE, D_PRED) == pytest.approx(0.3)
    assert aji(D_TRUE, D_PRED) == pytest.approx(4 / 13)
    assert pq(D_TRUE, D_PRED) == pytest.approx(PanopticQuality(0.5, 7 / 13, 7 / 26, 1, 1, 1))
    assert pq(D_TRUE, D_PRED, match_iou=0.4) == pytest.approx(PanopticQuality(0.5, 5 / 12, 5 / 24, 1, 1, 1))


def test_case_e_iou_tie_prefers_the_larger_pair():
    # IoU(T,Pa) = 2/6 = IoU(T,Pb) = 4/(6+10-4) = 1/3. HoVer-Net's inter/(union+1e-6) ranks
    # Pb (the larger pair) first, although Pa comes first in raster order.
    # Pb taken: inter 4, union 12 + |Pa| 2 -> 2/7 (Pa taken would give 2/(6+10) = 1/8).
    assert aji(E_TRUE, E_PRED) == pytest.approx(2 / 7)
    assert aji_plus(E_TRUE, E_PRED) == pytest.approx(2 / 7)


def test_overlap_table_of_case_b():
    # Canonical order is by first pixel: true (1 at 0, 2 at 16); pred (4 at 0, 8 at 17, 6 at 18).
    table = overlap_table(B_TRUE, B_PRED)
    assert isinstance(table, OverlapTable)
    np.testing.assert_array_equal(table.true_areas, [4, 4])
    np.testing.assert_array_equal(table.pred_areas, [3, 2, 2])
    np.testing.assert_array_equal(table.pair_true, [0, 1])
    np.testing.assert_array_equal(table.pair_pred, [0, 1])
    np.testing.assert_array_equal(table.pair_inter, [3, 2])
    np.testing.assert_allclose(table.pair_iou, [0.75, 0.5])


def test_identical_maps_score_one():
    rng = np.random.default_rng(1)
    labels = random_rectangles(rng, shape=(20, 20), max_count=8)
    labels[0, 0] = 123  # at least one instance
    scores = compute_all(labels, labels.copy())
    assert scores == {name: 1.0 for name in SCORES}
    n = np.unique(labels[labels > 0]).size
    assert pq(labels, labels) == PanopticQuality(1.0, 1.0, 1.0, n, 0, 0)


def test_compute_all_matches_single_metrics():
    assert list(compute_all(C_TRUE, C_PRED)) == list(SCORES)
    for true, pred in [(A_TRUE, A_PRED), (B_TRUE, B_PRED), (C_TRUE, C_PRED), (D_TRUE, D_PRED)]:
        scores = compute_all(true, pred, match_iou=0.3)
        panoptic = pq(true, pred, match_iou=0.3)
        assert scores["dice"] == dice(true, pred)
        assert scores["aji"] == aji(true, pred)
        assert scores["aji_plus"] == aji_plus(true, pred)
        assert (scores["dq"], scores["sq"], scores["pq"]) == panoptic[:3]


def relabel(labels: np.ndarray, new_ids: np.ndarray, dtype) -> np.ndarray:
    """Map the sorted non-zero ids of ``labels`` onto ``new_ids`` (0 stays 0)."""
    old = np.unique(labels[labels > 0])
    lut = dict(zip(old.tolist(), new_ids.tolist()))
    return np.vectorize(lambda v: lut.get(v, 0), otypes=[np.int64])(labels).astype(dtype)


@pytest.mark.parametrize("seed", range(6))
def test_invariant_to_relabelling(seed):
    # Small rectangles give many IoU ties, the cases where a tie-break by id would show.
    rng = np.random.default_rng(seed)
    true = random_rectangles(rng, shape=(12, 12), max_count=7)
    pred = random_rectangles(rng, shape=(12, 12), max_count=7)
    reference = compute_all(true, pred, match_iou=0.3)
    n_true, n_pred = np.unique(true[true > 0]).size, np.unique(pred[pred > 0]).size
    variants = [
        (np.arange(1, n_true + 1), np.arange(1, n_pred + 1), np.uint8),  # contiguous
        (rng.permutation(n_true) + 1, rng.permutation(n_pred) + 1, np.int32),  # permuted
        (rng.permutation(n_true) + 70_000, rng.permutation(n_pred) + 65_536, np.uint32),  # > 65535
        (3 * rng.permutation(n_true) + 5, 7 * rng.permutation(n_pred) + 2, np.uint16),  # gaps
        (rng.permutation(n_true) + 2**40, rng.permutation(n_pred) + 2**62, np.uint64),
    ]
    for true_ids, pred_ids, dtype in variants:
        scores = compute_all(relabel(true, true_ids, dtype), relabel(pred, pred_ids, dtype), match_iou=0.3)
        assert scores == pytest.approx(reference, abs=1e-12), dtype


@pytest.mark.parametrize("seed", range(4))
def test_symmetric_scores(seed):
    # Dice, AJI+ and PQ treat the maps alike (PQ swaps fp and fn); AJI does not (see above).
    rng = np.random.default_rng(100 + seed)
    true = random_rectangles(rng, shape=(12, 12), max_count=6)
    pred = random_rectangles(rng, shape=(12, 12), max_count=6)
    assert dice(true, pred) == pytest.approx(dice(pred, true))
    assert aji_plus(true, pred) == pytest.approx(aji_plus(pred, true))
    forward, backward = pq(true, pred), pq(pred, true)
    assert forward[:3] == pytest.approx(backward[:3])
    assert (forward.tp, forward.fp, forward.fn) == (backward.tp, backward.fn, backward.fp)


def test_empty_map_conventions():
    # Module doc: both empty -> 1.0 everywhere; one empty -> 0.0; no match -> sq 0.0.
    empty = np.zeros((4, 6), dtype=np.uint16)
    assert compute_all(empty, empty) == {name: 1.0 for name in SCORES}
    assert pq(empty, empty) == PanopticQuality(1.0, 1.0, 1.0, 0, 0, 0)
    assert compute_all(B_TRUE, empty) == {name: 0.0 for name in SCORES}
    assert compute_all(empty, B_PRED) == {name: 0.0 for name in SCORES}
    assert pq(B_TRUE, empty) == PanopticQuality(0.0, 0.0, 0.0, 0, 0, 2)
    assert pq(empty, B_PRED) == PanopticQuality(0.0, 0.0, 0.0, 0, 3, 0)
    # Disjoint instances: nothing overlaps -> Dice, AJI, AJI+ 0; PQ tp 0, fp 1, fn 1.
    disjoint_true = np.array([[1, 0], [0, 0]])
    disjoint_pred = np.array([[0, 0], [0, 5]])
    assert compute_all(disjoint_true, disjoint_pred) == {name: 0.0 for name in SCORES}
    assert pq(disjoint_true, disjoint_pred) == PanopticQuality(0.0, 0.0, 0.0, 0, 1, 1)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 6\)"):
        compute_all(A_TRUE, B_PRED)
    with pytest.raises(ValueError, match="float"):
        dice(A_TRUE.astype(float), A_PRED)
    with pytest.raises(ValueError, match="bool"):
        aji(A_TRUE, A_PRED > 0)
    with pytest.raises(ValueError, match="negative"):
        aji_plus(-A_TRUE, A_PRED)
    with pytest.raises(ValueError, match="match_iou"):
        pq(A_TRUE, A_PRED, match_iou=1.5)
    with pytest.raises(ValueError, match="match_iou"):
        compute_all(A_TRUE, A_PRED, match_iou=-0.1)


# ---- slow reference from the definitions: one boolean mask per instance ---------------------


def reference_scores(true: np.ndarray, pred: np.ndarray, match_iou: float) -> dict[str, object]:
    """Dice and AJI exactly; the AJI+ and PQ values of every max-IoU one-to-one pairing."""
    true_masks = [true == i for i in np.unique(true[true > 0])]
    pred_masks = [pred == i for i in np.unique(pred[pred > 0])]
    # first pixel in raster order: the labelling-independent tie-break of the module doc
    true_masks.sort(key=lambda m: np.flatnonzero(m)[0])
    pred_masks.sort(key=lambda m: np.flatnonzero(m)[0])
    inter = np.array([[(t & p).sum() for p in pred_masks] for t in true_masks]).reshape(len(true_masks), -1)
    union = np.array([[(t | p).sum() for p in pred_masks] for t in true_masks]).reshape(len(true_masks), -1)
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    true_area = [m.sum() for m in true_masks]
    pred_area = [m.sum() for m in pred_masks]
    both = ((true > 0) & (pred > 0)).sum()
    out: dict[str, object] = {"dice": 2 * both / ((true > 0).sum() + (pred > 0).sum())}

    def jaccard(pairs):
        paired_t, paired_p = {t for t, _ in pairs}, {p for _, p in pairs}
        i = sum(inter[t, p] for t, p in pairs)
        u = sum(union[t, p] for t, p in pairs)
        u += sum(a for t, a in enumerate(true_area) if t not in paired_t)
        u += sum(a for p, a in enumerate(pred_area) if p not in paired_p)
        return i / u

    # AJI: per true instance the max-IoU prediction; ties -> larger intersection -> earlier first pixel
    greedy = []
    for t in range(len(true_masks)):
        candidates = [p for p in range(len(pred_masks)) if iou[t, p] > 0]
        if candidates:
            greedy.append((t, max(candidates, key=lambda p: (iou[t, p], inter[t, p], -p))))
    out["aji"] = jaccard(greedy)

    # every one-to-one pairing over overlapping pairs, by brute force
    matchings = []

    def extend(t, used, pairs):
        if t == len(true_masks):
            matchings.append(pairs)
            return
        extend(t + 1, used, pairs)
        for p in range(len(pred_masks)):
            if p not in used and iou[t, p] > 0:
                extend(t + 1, used | {p}, pairs + [(t, p)])

    extend(0, frozenset(), [])

    def optimal(weights):
        best = max(sum(weights[t, p] for t, p in m) for m in matchings)
        return [m for m in matchings if sum(weights[t, p] for t, p in m) > best - 1e-12]

    # AJI+ assigns on HoVer-Net's weights inter / (union + 1e-6), PQ on the IoU itself
    out["aji_plus"] = [jaccard(m) for m in optimal(inter / (union + 1e-6))]

    def panoptic(matched):
        tp = len(matched)
        fp, fn = len(pred_masks) - tp, len(true_masks) - tp
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = sum(matched) / tp if tp else 0.0
        return dq * sq

    if match_iou >= 0.5:
        out["pq"] = [panoptic([v for v in iou.ravel() if v > match_iou])]
    else:
        out["pq"] = [panoptic([iou[t, p] for t, p in m if iou[t, p] > match_iou]) for m in optimal(iou)]
    return out


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("match_iou", [0.5, 0.2])
def test_matches_slow_reference(seed, match_iou):
    rng = np.random.default_rng(seed)
    true = random_rectangles(rng, max_count=5)
    pred = random_rectangles(rng, max_count=5)
    if not (true.any() and pred.any()):  # empty maps have their own test
        true[0, 0], pred[0, 0] = 9, 4
    expected = reference_scores(true, pred, match_iou)
    scores = compute_all(true, pred, match_iou=match_iou)
    assert scores["dice"] == pytest.approx(expected["dice"])
    assert scores["aji"] == pytest.approx(expected["aji"])
    assert any(scores["aji_plus"] == pytest.approx(v) for v in expected["aji_plus"])
    assert any(scores["pq"] == pytest.approx(v) for v in expected["pq"])
