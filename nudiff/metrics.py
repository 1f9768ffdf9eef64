"""Nuclei instance-segmentation metrics: Dice, AJI, AJI+ and panoptic quality (spec section 6).

The definitions follow HoVer-Net's ``compute_stats`` (Graham et al. 2019; repository
vqdang/hover_net, ``metrics/stats_utils.py``: ``get_dice_1``, ``get_fast_aji``,
``get_fast_aji_plus``, ``get_fast_pq``); AJI is from Kumar et al., IEEE TMI 2017, PQ from
Kirillov et al., CVPR 2019. Inputs are instance maps: 0 is background, every other integer
is one instance.

* Dice: ``2 |T & P| / (|T| + |P|)`` on the foregrounds (label > 0).
* AJI: every true instance takes the prediction of highest IoU (a prediction may serve several
  true instances); pairs with IoU > 0 add their intersection and union; true instances without
  a pair and predictions never taken add their area to the union.
* AJI+: as AJI, but the pairing is one-to-one and maximises the summed IoU
  (``scipy.optimize.linear_sum_assignment``), pairs with IoU > 0 only.
* PQ: a pair matches when IoU > ``match_iou``; for ``match_iou >= 0.5`` these are all pairs
  above the threshold (unique by construction); below 0.5, HoVer-Net first takes the one-to-one
  max-summed-IoU pairing, then keeps its pairs above the threshold. (So the two rules can
  disagree: a pair of IoU 0.54 left out of the max-sum pairing still matches at 0.5.)
  ``dq = tp / (tp + fp/2 + fn/2)``, ``sq`` = mean IoU of the matches, ``pq = dq * sq``.

Differences from HoVer-Net's code, all deliberate:

* Any labelling works: ids need not be contiguous, may exceed 65535, any integer dtype.
  Instances are put in a canonical order (by their first pixel in raster order), so every
  result is invariant to relabelling. On maps labelled in raster order (``skimage.measure.label``)
  ties resolve as HoVer-Net's do: its ranking by ``inter / (union + 1e-6)`` prefers, among
  equal IoUs, the pair with the larger intersection (AJI: then the earlier instance); AJI+
  assigns on those same weights.
* ``sq`` divides by ``tp`` exactly (HoVer-Net adds 1e-6), so identical maps give 1.0.
* No per-instance masks: one contingency table of pairwise intersections (sparse) serves
  every metric, and the one-to-one pairing is solved per connected group of overlapping
  instances (the same optimum as one global assignment, much faster).

Empty maps (no instance, all zeros), where HoVer-Net divides by zero:

* both empty: every score (dice, aji, aji_plus, dq, sq, pq) is 1.0, perfect agreement;
* exactly one empty: every score is 0.0;
* both non-empty but no match in PQ: ``sq`` (and so ``pq``) is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# PQ pairs with IoU above 0.5 are unique: two such predictions would each cover over half of
# the same true instance's union (Kirillov et al. 2019, Theorem 1).
_UNIQUE_MATCH_IOU = 0.5
# HoVer-Net's AJI and AJI+ rank pairs by inter / (union + 1e-6): among equal IoUs the larger
# pair wins. AJI+ keeps these weights so that its ties resolve as HoVer-Net's do.
_HOVERNET_EPS = 1.0e-6
# ids below max(this, 4 * pixels) are renumbered through a lookup table instead of a sort
_LOOKUP_MIN = 1 << 20


class PanopticQuality(NamedTuple):
    """Panoptic quality of one image: detection ``dq``, segmentation ``sq``, ``pq = dq * sq``."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class OverlapTable:
    """Areas of the instances of two maps and their non-zero pairwise intersections.

    Instances are numbered ``0..n-1`` in canonical order (first pixel in raster order).

    Attributes:
        true_areas: ``(n_true,)`` pixel count of each true instance.
        pred_areas: ``(n_pred,)`` pixel count of each predicted instance.
        pair_true: ``(k,)`` true index of each overlapping pair, sorted by (true, pred).
        pair_pred: ``(k,)`` predicted index of each pair.
        pair_inter: ``(k,)`` intersection in pixels (> 0) of each pair.
    """

    true_areas: np.ndarray
    pred_areas: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    @property
    def pair_union(self) -> np.ndarray:
        """``(k,)`` union in pixels of each pair."""
        return self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        """``(k,)`` IoU of each pair, in (0, 1]."""
        return self.pair_inter / self.pair_union


def _check_map(name: str, labels: ArrayLike) -> np.ndarray:
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer instance map, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name} must be an array (H, W), got a scalar")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ValueError(f"{name} has negative labels (min {array.min()}); 0 is background, instances > 0")
    return array


def _canonical_labels(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """``(N,)`` labels renumbered ``1..n`` by first pixel (0 stays background), and ``n``."""
    top = int(flat.max()) if flat.size else 0
    if top < max(_LOOKUP_MIN, 4 * flat.size):
        # ids small enough for a lookup table: avoids sorting all N pixels
        first = np.full(top + 1, flat.size, dtype=np.int64)
        np.minimum.at(first, flat, np.arange(flat.size))
        first[0] = flat.size
        present = np.flatnonzero(first < flat.size)
        lookup = np.zeros(top + 1, dtype=np.int64)
        lookup[present[np.argsort(first[present])]] = np.arange(1, present.size + 1)
        return lookup[flat], present.size
    foreground = np.flatnonzero(flat)
    _, first, inverse = np.unique(flat[foreground], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(1, first.size + 1)
    dense = np.zeros(flat.size, dtype=np.int64)
    dense[foreground] = rank[inverse]
    return dense, first.size


def overlap_table(true: ArrayLike, pred: ArrayLike) -> OverlapTable:
    """Contingency table of two instance maps, built in one vectorised pass.

    Args:
        true: ``(H, W)`` ground-truth instance map (any non-negative integer dtype).
        pred: ``(H, W)`` predicted instance map, same shape.

    Raises:
        ValueError: shapes differ, or a map is not integer or has negative labels.
    """
    true = _check_map("true", true)
    pred = _check_map("pred", pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in shape: {true.shape} vs {pred.shape}")
    dense_true, n_true = _canonical_labels(true.ravel())
    dense_pred, n_pred = _canonical_labels(pred.ravel())
    both = (dense_true > 0) & (dense_pred > 0)
    codes = (dense_true[both] - 1) * n_pred + (dense_pred[both] - 1)
    codes, inter = np.unique(codes, return_counts=True)
    divisor = max(n_pred, 1)
    return OverlapTable(
        true_areas=np.bincount(dense_true, minlength=n_true + 1)[1:],
        pred_areas=np.bincount(dense_pred, minlength=n_pred + 1)[1:],
        pair_true=codes // divisor,
        pair_pred=codes % divisor,
        pair_inter=inter.astype(np.int64),
    )


def _empty_score(table: OverlapTable) -> float | None:
    """Score of the empty-map conventions (module doc), or None when both maps have instances."""
    n_true, n_pred = table.true_areas.size, table.pred_areas.size
    if n_true and n_pred:
        return None
    return 1.0 if n_true == n_pred else 0.0


def _dice(table: OverlapTable) -> float:
    empty = _empty_score(table)
    if empty is not None:
        return empty
    # every foreground-foreground pixel belongs to exactly one pair
    return float(2 * table.pair_inter.sum() / (table.true_areas.sum() + table.pred_areas.sum()))


def _aggregated_jaccard(table: OverlapTable, chosen: np.ndarray) -> float:
    """AJI over the chosen pairs ``(m,)`` (indices into the table's pairs)."""
    empty = _empty_score(table)
    if empty is not None:
        return empty
    inter = table.pair_inter[chosen].sum()
    union = table.pair_union[chosen].sum()
    unpaired_true = np.ones(table.true_areas.size, dtype=bool)
    unpaired_true[table.pair_true[chosen]] = False
    unpaired_pred = np.ones(table.pred_areas.size, dtype=bool)
    unpaired_pred[table.pair_pred[chosen]] = False
    union += table.true_areas[unpaired_true].sum() + table.pred_areas[unpaired_pred].sum()
    return float(inter / union)


def _best_pair_per_true(table: OverlapTable) -> np.ndarray:
    """For each true instance with an overlap, its pair of highest IoU (ties: module doc)."""
    order = np.lexsort((table.pair_pred, -table.pair_inter, -table.pair_iou, table.pair_true))
    first_of_true = np.ones(order.size, dtype=bool)
    first_of_true[1:] = table.pair_true[order][1:] != table.pair_true[order][:-1]
    return order[first_of_true]


def _max_iou_matching(table: OverlapTable, weights: np.ndarray) -> np.ndarray:
    """One-to-one pairing maximising the summed ``(k,)`` pair weights (IoUs), as indices ``(m,)``.

    The optimum splits over connected groups of overlapping instances, so each group gets its
    own small assignment problem; a group that is one pair is matched directly.
    """
    n_true, n_pred = table.true_areas.size, table.pred_areas.size
    if table.pair_true.size == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix(
        (np.ones(table.pair_true.size), (table.pair_true, n_true + table.pair_pred)),
        shape=(n_true + n_pred, n_true + n_pred),
    )
    _, group = connected_components(graph, directed=False)
    pair_group = group[table.pair_true]
    pairs_in_group = np.bincount(pair_group)
    single = pairs_in_group[pair_group] == 1
    chosen = [np.flatnonzero(single)]
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(pair_group[multi], kind="stable")]
    bounds = np.flatnonzero(np.diff(pair_group[multi])) + 1
    for pairs in np.split(multi, bounds) if multi.size else []:
        # np.unique keeps canonical order, so ties resolve the same for any labelling
        rows, row_of = np.unique(table.pair_true[pairs], return_inverse=True)
        cols, col_of = np.unique(table.pair_pred[pairs], return_inverse=True)
        block = np.zeros((rows.size, cols.size))
        index = np.full((rows.size, cols.size), -1, dtype=np.int64)
        block[row_of, col_of] = weights[pairs]
        index[row_of, col_of] = pairs
        r, c = linear_sum_assignment(block, maximize=True)
        matched = index[r, c]
        chosen.append(matched[matched >= 0])
    return np.sort(np.concatenate(chosen))


def _aji_plus_matching(table: OverlapTable) -> np.ndarray:
    return _max_iou_matching(table, table.pair_inter / (table.pair_union + _HOVERNET_EPS))


def _panoptic(table: OverlapTable, match_iou: float) -> PanopticQuality:
    n_true, n_pred = table.true_areas.size, table.pred_areas.size
    empty = _empty_score(table)
    if empty is not None:
        return PanopticQuality(empty, empty, empty, 0, n_pred, n_true)
    iou = table.pair_iou
    if match_iou >= _UNIQUE_MATCH_IOU:
        matched_iou = iou[iou > match_iou]
    else:
        # HoVer-Net's order: the max-IoU one-to-one pairing first, then the threshold
        matching = _max_iou_matching(table, iou)
        matched_iou = iou[matching][iou[matching] > match_iou]
    tp = int(matched_iou.size)
    fp, fn = n_pred - tp, n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched_iou.sum() / tp) if tp else 0.0
    return PanopticQuality(dq, sq, dq * sq, tp, fp, fn)


def _check_match_iou(match_iou: float) -> None:
    if not 0.0 <= match_iou <= 1.0:
        raise ValueError(f"match_iou must be in [0, 1], got {match_iou}")


def dice(true: ArrayLike, pred: ArrayLike) -> float:
    """Binary Dice of the foregrounds (label > 0) of two ``(H, W)`` instance maps."""
    return _dice(overlap_table(true, pred))


def aji(true: ArrayLike, pred: ArrayLike) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017) of two ``(H, W)`` maps, as ``get_fast_aji``."""
    table = overlap_table(true, pred)
    return _aggregated_jaccard(table, _best_pair_per_true(table))


def aji_plus(true: ArrayLike, pred: ArrayLike) -> float:
    """AJI+ (one-to-one max-IoU pairing) of two ``(H, W)`` maps, as ``get_fast_aji_plus``."""
    table = overlap_table(true, pred)
    return _aggregated_jaccard(table, _aji_plus_matching(table))


def pq(true: ArrayLike, pred: ArrayLike, match_iou: float = 0.5) -> PanopticQuality:
    """Panoptic quality of two ``(H, W)`` maps, as ``get_fast_pq``.

    Args:
        true: ``(H, W)`` ground-truth instance map.
        pred: ``(H, W)`` predicted instance map.
        match_iou: a pair matches when its IoU is strictly above this, in [0, 1]; default 0.5.
    """
    _check_match_iou(match_iou)
    return _panoptic(overlap_table(true, pred), match_iou)


def compute_all(true: ArrayLike, pred: ArrayLike, *, match_iou: float = 0.5) -> dict[str, float]:
    """Every score of one image from one contingency table.

    Args:
        true: ``(H, W)`` ground-truth instance map.
        pred: ``(H, W)`` predicted instance map.
        match_iou: PQ matching threshold (see :func:`pq`).

    Returns:
        ``{"dice", "aji", "aji_plus", "dq", "sq", "pq"}`` as floats, in that order.
    """
    _check_match_iou(match_iou)
    table = overlap_table(true, pred)
    panoptic = _panoptic(table, match_iou)
    return {
        "dice": _dice(table),
        "aji": _aggregated_jaccard(table, _best_pair_per_true(table)),
        "aji_plus": _aggregated_jaccard(table, _aji_plus_matching(table)),
        "dq": panoptic.dq,
        "sq": panoptic.sq,
        "pq": panoptic.pq,
    }
