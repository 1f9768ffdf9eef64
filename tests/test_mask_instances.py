"""PFF-Net's inference tail: ranking, pasting and overlap removal on hand-built detections."""

import numpy as np
import pytest
import torch

from nudiff.segmentation.pffnet.mask_instances import (
    detection_order,
    instances_from_detections,
    paste_mask,
    remove_overlaps,
)


def _square(y0, x0, h, w):
    return y0, x0, np.ones((h, w), dtype=bool)


def test_order_keeps_confident_detections_ranked_by_mask_score():
    scores = np.array([0.9, 0.4, 0.8, 0.95])
    mask_scores = np.array([0.3, 0.39, 0.7, 0.3])
    # 0.4 is below the 0.5 confidence threshold; ties (0.3) keep the detector's order
    assert detection_order(scores, mask_scores).tolist() == [2, 0, 3]


def test_a_mostly_covered_mask_is_dropped_and_a_partly_covered_one_trimmed():
    first = _square(0, 0, 10, 10)  # 100 px
    covered = _square(0, 0, 10, 9)  # 90 px, all taken: dropped
    partly = _square(0, 5, 10, 10)  # 100 px, 50 taken (0.5 <= 0.7): keeps its free half
    labels = remove_overlaps([first, covered, partly], (10, 20))
    assert (labels[:, :10] == 1).all()
    assert (labels[:, 10:15] == 2).all()  # the third mask became instance 2
    assert (labels[:, 15:] == 0).all()
    assert set(np.unique(labels)) == {0, 1, 2}


def test_overlap_at_exactly_the_limit_is_kept():
    first = _square(0, 0, 10, 7)  # takes 70 of the next mask's 100 px
    second = _square(0, 0, 10, 10)
    labels = remove_overlaps([first, second], (10, 10))
    assert (labels[:, 7:] == 2).all()


def test_paste_is_the_reference_masker_padded_and_with_the_box_grown():
    """As PFF-Net's Masker and torchvision's paste_masks_in_image: a zero border of one pixel,
    the box grown by (M + 2) / M, corners truncated, x2 and y2 inclusive, clipped to the image."""
    mask = np.ones((28, 28), dtype=np.float32)
    y0, x0, region = paste_mask(mask, np.array([4, 2, 24, 12]), (20, 30))
    # grown box: x 14 -+ 10 * 30/28 -> 3.29, 24.71 -> 3, 24; y 7 -+ 5 * 30/28 -> 1.64, 12.36 -> 1, 12
    assert (y0, x0, region.shape) == (1, 3, (12, 22))
    assert region[1:-1, 1:-1].all() and not region[0, 0]  # the zero border rounds the corners
    # a box reaching past the image is cut to it; one outside it pastes nothing
    y0, x0, region = paste_mask(mask, np.array([-5, 15, 10, 30]), (20, 30))
    assert (y0, x0) == (14, 0) and region.shape == (6, 11)
    assert paste_mask(mask, np.array([40, 40, 50, 50]), (20, 30)) is None


def test_paste_equals_torchvisions_paste_masks_in_image():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(0)
    shape = (40, 50)
    for _ in range(30):
        mask = rng.random((28, 28)).astype(np.float32)
        x1, y1 = rng.uniform(-8, 45), rng.uniform(-8, 35)
        box = np.array([x1, y1, x1 + rng.uniform(1, 20), y1 + rng.uniform(1, 20)], dtype=np.float32)
        try:
            full = paste_masks_in_image(torch.from_numpy(mask)[None, None], torch.from_numpy(box)[None], shape, 1)
        except RuntimeError:  # torchvision cannot paste a box wholly above or left of the image
            assert paste_mask(mask, box, shape) is None, box
            continue
        expected = full[0, 0].numpy() > 0.5
        got = np.zeros(shape, dtype=bool)
        pasted = paste_mask(mask, box, shape)
        if pasted is not None:
            y0, x0, region = pasted
            got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
        assert np.array_equal(got, expected), box


def test_instances_from_detections_end_to_end():
    boxes = np.array([[0, 0, 8, 8], [4, 0, 12, 8], [20, 20, 28, 28]], dtype=np.float32)
    masks = np.ones((3, 1, 28, 28), dtype=np.float32)
    scores = np.array([0.9, 0.9, 0.3])  # the third is not confident
    mask_scores = np.array([0.5, 0.8, 0.9])  # the second ranks first
    labels = instances_from_detections(boxes, masks, scores, mask_scores, (32, 32))
    assert (labels[1:8, 4:12] == 1).all()  # the best-ranked mask, whole
    assert (labels[1:8, 0:3] == 2).all()  # the other keeps its free part (boxes grow by 30/28)
    assert labels[20:28, 20:28].max() == 0
    with pytest.raises(ValueError, match="must match"):
        instances_from_detections(boxes[:2], masks, scores, mask_scores, (32, 32))
