"""PFF-Net's inference tail: ranking, pasting and overlap removal on hand-built detections."""

import numpy as np
import pytest

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


def test_paste_resizes_onto_the_box_and_clips_at_the_border():
    mask = np.zeros((28, 28), dtype=np.float32)
    mask[:, :14] = 1.0  # left half of the box
    y0, x0, region = paste_mask(mask, np.array([4, 2, 24, 12]), (20, 30))
    assert (y0, x0, region.shape) == (2, 4, (10, 20))
    assert region[:, :10].all() and not region[:, 10:].any()
    # a box reaching past the image is cut to it
    y0, x0, region = paste_mask(np.ones((28, 28)), np.array([-5, 15, 10, 30]), (20, 30))
    assert (y0, x0, region.shape) == (15, 0, (5, 10))
    assert paste_mask(np.ones((28, 28)), np.array([40, 40, 50, 50]), (20, 30)) is None


def test_instances_from_detections_end_to_end():
    boxes = np.array([[0, 0, 8, 8], [4, 0, 12, 8], [20, 20, 28, 28]], dtype=np.float32)
    masks = np.ones((3, 1, 28, 28), dtype=np.float32)
    scores = np.array([0.9, 0.9, 0.3])  # the third is not confident
    mask_scores = np.array([0.5, 0.8, 0.9])  # the second ranks first
    labels = instances_from_detections(boxes, masks, scores, mask_scores, (32, 32))
    assert (labels[0:8, 4:12] == 1).all()  # the best-ranked mask, whole
    assert (labels[0:8, 0:4] == 2).all()  # the other keeps its free half
    assert labels[20:28, 20:28].max() == 0
    with pytest.raises(ValueError, match="must match"):
        instances_from_detections(boxes[:2], masks, scores, mask_scores, (32, 32))
