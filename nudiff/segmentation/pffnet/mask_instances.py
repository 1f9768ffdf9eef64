"""From a detector's per-nucleus masks to one instance map (PFF-Net's inference tail).

PFF-Net (dliu5812/PFFNet, ``inference/tcga_infer.py`` with ``cell_predictor.py`` and
``metrics.py``) keeps the detections whose class score exceeds a confidence threshold (0.5),
ranks them by *mask score* (class score x predicted mask quality), pastes each mask into the
image at 0.5, and then walks the ranking: a mask mostly covered by the masks already placed
(overlap above 0.7 of its area) is dropped, any other loses its overlapping pixels and becomes
the next instance.

The masks are pasted one box at a time, never as a ``(K, H, W)`` stack: a 1000 x 1000 test image
may carry thousands of detections.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

SCORE_THRESHOLD = 0.5  # PFF-Net's confidence_threshold in tcga_infer.py
MASK_THRESHOLD = 0.5  # its Masker threshold
MAX_OVERLAP = 0.7  # its removeoverlap: drop a mask whose overlap with earlier ones exceeds this share
PASTE_PADDING = 1  # its Masker's padding: a zero border around each mask before it is resized

Pasted = tuple[int, int, np.ndarray]  # (y0, x0, bool region) of one pasted mask


def detection_order(
    scores: np.ndarray, mask_scores: np.ndarray, score_threshold: float = SCORE_THRESHOLD
) -> np.ndarray:
    """Indices of the detections with ``scores > score_threshold``, best ``mask_scores`` first.

    Ties keep the detector's order (a stable sort), so the result is deterministic.
    """
    scores, mask_scores = np.asarray(scores), np.asarray(mask_scores)
    if scores.shape != mask_scores.shape:
        raise ValueError(f"scores {scores.shape} and mask_scores {mask_scores.shape} differ")
    keep = np.flatnonzero(scores > score_threshold)
    return keep[np.argsort(-mask_scores[keep], kind="stable")]


def paste_mask(
    mask: torch.Tensor | np.ndarray, box: np.ndarray, shape: tuple[int, int], threshold: float = MASK_THRESHOLD
) -> Pasted | None:
    """One ``(M, M)`` mask probability map pasted onto its box and thresholded, as PFF-Net's
    ``Masker`` (and torchvision's ``paste_masks_in_image``) does it.

    The mask gets a border of :data:`PASTE_PADDING` zero pixels and the box grows by the same
    factor, ``(M + 2) / M``, about its centre; the box's corners are truncated to integers and the
    padded mask is resized bilinearly onto the ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels they span.
    The zero border lets the mask fall off smoothly at the box's edges instead of being cut there.

    Args:
        mask: ``(M, M)`` probabilities in the box's frame (the mask head's output).
        box: ``(x1, y1, x2, y2)`` in pixels.
        shape: the image's ``(H, W)``; the pasted region is clipped to it.

    Returns:
        ``(y0, x0, binary)``: the top-left corner of the pasted region and its ``bool`` mask, or
        ``None`` when the clipped region is empty.
    """
    height, width = shape
    padded, scale = expand_masks(torch.as_tensor(mask, dtype=torch.float32)[None, None], PASTE_PADDING)
    grown = expand_boxes(torch.as_tensor(np.asarray(box, dtype=np.float32))[None], scale)[0]
    x1, y1, x2, y2 = grown.to(torch.int64).tolist()  # truncation toward zero, as the reference
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    y0, x0 = max(y1, 0), max(x1, 0)
    y_end, x_end = min(y2 + 1, height), min(x2 + 1, width)
    if y_end <= y0 or x_end <= x0:
        return None
    region = resized[y0 - y1 : y_end - y1, x0 - x1 : x_end - x1] > threshold
    return y0, x0, region


def remove_overlaps(
    pasted: Iterable[Pasted | None], shape: tuple[int, int], max_overlap: float = MAX_OVERLAP
) -> np.ndarray:
    """PFF-Net's overlap removal: ``pasted`` (best first) -> an ``(H, W)`` int32 instance map.

    Args:
        pasted: ``(y0, x0, bool region)`` per mask in rank order (``None`` entries are skipped).
        max_overlap: a mask whose pixels already taken exceed this share of its area is dropped;
            otherwise it keeps only its free pixels.
    """
    labels = np.zeros(shape, dtype=np.int32)
    next_id = 1
    for item in pasted:
        if item is None:
            continue
        y0, x0, region = item
        area = int(region.sum())
        if area == 0:
            continue
        window = labels[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]]
        taken = region & (window > 0)
        if taken.sum() / area > max_overlap:
            continue
        window[region & ~taken] = next_id
        next_id += 1
    return labels


def instances_from_detections(
    boxes: np.ndarray,
    masks: torch.Tensor | np.ndarray,
    scores: np.ndarray,
    mask_scores: np.ndarray,
    shape: tuple[int, int],
    *,
    score_threshold: float = SCORE_THRESHOLD,
    mask_threshold: float = MASK_THRESHOLD,
    max_overlap: float = MAX_OVERLAP,
) -> np.ndarray:
    """PFF-Net's instance map of one image from its detections.

    Args:
        boxes: ``(K, 4)`` xyxy pixel boxes; masks: ``(K, M, M)`` (or ``(K, 1, M, M)``) mask
            probabilities in the boxes' frames; scores: ``(K,)`` class scores; mask_scores:
            ``(K,)`` class score x predicted mask quality (the ranking).
        shape: ``(H, W)`` of the image.

    Returns:
        ``(H, W)`` int32 instance map, ids 1.. in rank order, 0 background.
    """
    masks = torch.as_tensor(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    boxes = np.asarray(boxes, dtype=np.float64)
    if not len(boxes) == len(masks) == len(scores):
        raise ValueError(f"{len(boxes)} boxes, {len(masks)} masks and {len(scores)} scores must match")
    order = detection_order(scores, mask_scores, score_threshold)
    pasted = (paste_mask(masks[i], boxes[i], shape, mask_threshold) for i in order)
    return remove_overlaps(pasted, shape, max_overlap)
