"""Labelled-subset selection: K-means, nearest-to-centre, exact share of distinct nuclei."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nudiff.subsets import Clustering, choose_patches, kmeans_clusters, nucleus_keys


def keys(*ids, image=0):
    return nucleus_keys(image, np.array(ids))


def test_nearest_patches_of_each_cluster_are_taken_first():
    # two clusters of 4 patches; each patch holds one nucleus of its own
    clustering = Clustering(
        labels=np.array([0, 0, 0, 0, 1, 1, 1, 1]), distances=np.array([4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.3, 0.2])
    )
    nuclei = [keys(i + 1) for i in range(8)]
    chosen, summary = choose_patches(clustering, nuclei, 0.25)
    # p = 1/4 keeps the nearest patch of each cluster: 1 (d 1.0) and 5 (d 0.1) -> 2 of 8 nuclei
    assert chosen.tolist() == [1, 5]
    assert summary.achieved_share == 0.25 and summary.fraction_per_cluster == 0.25
    assert summary.patches_per_cluster == {0: 1, 1: 1}


def test_a_nucleus_in_two_overlapping_patches_counts_once():
    clustering = Clustering(labels=np.zeros(3, int), distances=np.array([0.0, 1.0, 2.0]))
    nuclei = [keys(1, 2), keys(2, 3), keys(4)]  # nucleus 2 is in patches 0 and 1
    chosen, summary = choose_patches(clustering, nuclei, 0.75)
    # p = 2/3 covers nuclei {1, 2, 3} = 3 of 4 distinct nuclei = exactly 0.75
    assert chosen.tolist() == [0, 1] and summary.n_nuclei == 3 and summary.achieved_share == 0.75


def test_same_instance_id_in_two_images_is_two_nuclei():
    assert len(np.unique(np.concatenate([keys(7, image=0), keys(7, image=1)]))) == 2


def test_hundred_percent_keeps_every_patch():
    clustering = Clustering(labels=np.array([0, 1, 1]), distances=np.zeros(3))
    chosen, summary = choose_patches(clustering, [keys(1), keys(2), keys(3)], 1.0)
    assert chosen.tolist() == [0, 1, 2] and summary.achieved_share == 1.0


def test_kmeans_is_seeded_and_finds_separated_groups():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (20, 5)), rng.normal(5, 0.1, (20, 5))])
    a = kmeans_clusters(features, n_clusters=2, seed=42)
    b = kmeans_clusters(features, n_clusters=2, seed=42)
    assert np.array_equal(a.labels, b.labels)
    assert len(set(a.labels[:20])) == 1 and len(set(a.labels[20:])) == 1 and a.labels[0] != a.labels[-1]


def test_bad_targets_are_rejected():
    clustering = Clustering(labels=np.zeros(2, int), distances=np.zeros(2))
    with pytest.raises(ValueError, match="target_share"):
        choose_patches(clustering, [keys(1), keys(2)], 0.0)


MONUSEG = Path(os.environ.get("NUDIFF_MONUSEG", Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg"))


@pytest.mark.realdata
@pytest.mark.skipif(not (MONUSEG / "train" / "labels").is_dir(), reason="real MoNuSeg data not available")
def test_real_monuseg_shares_are_within_two_points_of_their_targets():
    """The 30 real training label maps, 1470 patches; features are seeded random vectors here
    (the selection's precision does not depend on what the features are)."""
    import pandas as pd

    from nudiff.io.images import read_instance_map
    from nudiff.patches import patch_grid
    from nudiff.subsets import patch_nuclei_keys

    labels = {p.stem: p for p in sorted((MONUSEG / "train" / "labels").glob("*.tif"))}
    rows = [(name, y, x, 256) for name in labels for y, x in patch_grid(1000, 1000, 256, 128)]
    patches = pd.DataFrame(rows, columns=["image", "y", "x", "size"])
    nuclei = patch_nuclei_keys(patches, lambda name: read_instance_map(labels[name]))
    features = np.random.default_rng(0).normal(size=(len(patches), 16))
    clustering = kmeans_clusters(features, n_clusters=6, seed=42)
    for target in (0.1, 0.2, 0.5):
        _, summary = choose_patches(clustering, nuclei, target)
        assert abs(summary.achieved_share - target) <= 0.02, summary
