"""Labelled subsets chosen by K-means on patch features (spec section 2).

All training patches are clustered (K = 6). From every cluster the fraction p
of its patches nearest the cluster centre is kept. The authors tuned p by hand
until the subset held about 10%, 20% or 50% of the training set's nuclei; here
p is found exactly: the share of distinct nuclei only grows with p and changes
only at p = j / n_c, so every breakpoint is evaluated and the one whose share
is closest to the target wins.

A nucleus is identified by (source image, instance id), so a nucleus seen by
two overlapping patches counts once (as in the authors' code).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from nudiff.datasets.prepare import read_manifest
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.images import read_instance_map
from nudiff.patches import read_patch_index
from nudiff.samples import real_samples, write_sample_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clustering:
    """K-means result over N patches: ``labels`` (N,) and ``distances`` (N,) to their own centre."""

    labels: np.ndarray
    distances: np.ndarray


@dataclass(frozen=True)
class SubsetSummary:
    """What a selection achieved, written next to the patch list."""

    target_share: float
    achieved_share: float
    fraction_per_cluster: float
    n_patches: int
    n_patches_total: int
    n_nuclei: int
    n_nuclei_total: int
    patches_per_cluster: dict[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


def kmeans_clusters(features: np.ndarray, *, n_clusters: int = 6, seed: int = 42, n_init: int = 10) -> Clustering:
    """K-means with random initialisation (as the authors' code), seeded.

    Args:
        features: ``(N, D)`` patch features.
    """
    if features.ndim != 2 or len(features) < n_clusters:
        raise ValueError(f"need a (N, D) feature array with N >= n_clusters={n_clusters}, got {features.shape}")
    kmeans = KMeans(n_clusters=n_clusters, init="random", n_init=n_init, random_state=seed)
    labels = kmeans.fit_predict(features.astype(np.float64))
    distances = np.linalg.norm(features - kmeans.cluster_centers_[labels], axis=1)
    sizes = np.bincount(labels, minlength=n_clusters)
    logger.info("K-means (K=%d, seed %d): cluster sizes %s", n_clusters, seed, sizes.tolist())
    return Clustering(labels=labels, distances=distances)


def _ranked_clusters(clustering: Clustering) -> dict[int, np.ndarray]:
    """Patch indices of each cluster, nearest to the centre first (ties by index)."""
    ranked = {}
    for c in np.unique(clustering.labels):
        members = np.flatnonzero(clustering.labels == c)
        order = np.lexsort((members, clustering.distances[members]))
        ranked[int(c)] = members[order]
    return ranked


def choose_patches(
    clustering: Clustering,
    patch_nuclei: list[np.ndarray],
    target_share: float,
) -> tuple[np.ndarray, SubsetSummary]:
    """Choose the fraction p whose nearest-to-centre patches hold ``target_share`` of the nuclei.

    Args:
        clustering: from :func:`kmeans_clusters`.
        patch_nuclei: for each patch, an int64 array of global nucleus keys
            (unique per source image and instance id, see :func:`nucleus_keys`).
        target_share: wanted share of distinct nuclei in (0, 1]; 1 keeps all patches.

    Returns:
        Sorted patch indices and a summary.
    """
    if not 0 < target_share <= 1:
        raise ValueError(f"target_share must be in (0, 1], got {target_share}")
    n_total = len(patch_nuclei)
    if len(clustering.labels) != n_total:
        raise ValueError(f"{len(clustering.labels)} cluster labels for {n_total} patches")
    all_nuclei = np.unique(np.concatenate(patch_nuclei)) if n_total else np.array([], np.int64)
    ranked = _ranked_clusters(clustering)

    if target_share == 1:
        chosen, best_p = np.arange(n_total), 1.0
    else:
        # Candidate fractions: where some cluster's ceil(p * n_c) steps up.
        candidates = sorted({j / len(m) for m in ranked.values() for j in range(1, len(m) + 1)})
        taken = {c: 0 for c in ranked}
        covered: set[int] = set()
        best_p, best_gap, best_count = 0.0, math.inf, {}
        for p in candidates:
            for c, members in ranked.items():
                want = math.ceil(p * len(members) - 1e-9)
                for i in members[taken[c] : want]:
                    covered.update(patch_nuclei[i].tolist())
                taken[c] = max(taken[c], want)
            gap = abs(len(covered) / len(all_nuclei) - target_share)
            if gap < best_gap:
                best_p, best_gap, best_count = p, gap, dict(taken)
            elif len(covered) / len(all_nuclei) > target_share:
                break  # the share only grows from here
        chosen = np.sort(np.concatenate([ranked[c][:k] for c, k in best_count.items()]))

    nuclei = np.unique(np.concatenate([patch_nuclei[i] for i in chosen])) if len(chosen) else np.array([])
    per_cluster = np.bincount(clustering.labels[chosen], minlength=len(ranked))
    summary = SubsetSummary(
        target_share=float(target_share),
        achieved_share=float(len(nuclei) / len(all_nuclei)) if len(all_nuclei) else 0.0,
        fraction_per_cluster=float(best_p),
        n_patches=int(len(chosen)),
        n_patches_total=int(n_total),
        n_nuclei=int(len(nuclei)),
        n_nuclei_total=int(len(all_nuclei)),
        patches_per_cluster={int(c): int(k) for c, k in enumerate(per_cluster)},
    )
    logger.info(
        "subset for %.0f%% of nuclei: p = %.4f, %d/%d patches, %d/%d nuclei (%.2f%%)",
        100 * target_share,
        best_p,
        summary.n_patches,
        n_total,
        summary.n_nuclei,
        summary.n_nuclei_total,
        100 * summary.achieved_share,
    )
    return chosen, summary


def nucleus_keys(image_number: int, instance_ids: np.ndarray) -> np.ndarray:
    """Global keys for nuclei: ``image_number * 2**32 + id`` (ids are below 2**31)."""
    ids = np.asarray(instance_ids, dtype=np.int64)
    return np.int64(image_number) * (1 << 32) + ids[ids > 0]


def patch_nuclei_keys(patches: pd.DataFrame, read_label) -> list[np.ndarray]:
    """Nucleus keys of each patch of a patch index.

    Args:
        patches: patch index rows (``image``, ``y``, ``x``, ``size``).
        read_label: ``image name -> (H, W)`` instance map; each image is read once.
    """
    keys: list[np.ndarray] = [np.array([], np.int64)] * len(patches)
    positions = {name: i for i, name in enumerate(pd.unique(patches["image"]))}
    for name, rows in patches.groupby("image", sort=False):
        inst = read_label(name)
        for row_number, row in zip(rows.index, rows.itertuples()):
            crop = inst[row.y : row.y + row.size, row.x : row.x + row.size]
            keys[patches.index.get_loc(row_number)] = nucleus_keys(positions[name], np.unique(crop))
    return keys


def cluster_patches(
    features_npz: str | Path, out_csv: str | Path, *, n_clusters: int = 6, seed: int = 42, n_init: int = 10
) -> pd.DataFrame:
    """Rule ``cluster_patches``: cluster label and distance to its centre for every patch."""
    with np.load(features_npz) as saved:
        ids, features = saved["patch_id"], saved["features"]
    clustering = kmeans_clusters(features, n_clusters=n_clusters, seed=seed, n_init=n_init)
    table = pd.DataFrame({"patch_id": ids, "cluster": clustering.labels, "distance": clustering.distances})
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def select_subset(
    prepared_dir: str | Path,
    index_csv: str | Path,
    clusters_csv: str | Path,
    *,
    percent: int,
    out_csv: str | Path,
    out_summary: str | Path,
) -> SubsetSummary:
    """Rule ``select_subset``: the labelled subset for ``percent`` % of the nuclei.

    Writes the subset as a sample table (:mod:`nudiff.samples`) and a JSON
    summary of target against achieved share.
    """
    manifest = read_manifest(Path(prepared_dir) / "manifest.csv")
    index = read_patch_index(index_csv)
    clusters = pd.read_csv(clusters_csv)
    if clusters["patch_id"].tolist() != index["patch_id"].tolist():
        raise InputDataError(f"{clusters_csv} does not list the patches of {index_csv} in order")
    labels_by_name = manifest.set_index("name")["label"]
    keys = patch_nuclei_keys(index, lambda name: read_instance_map(labels_by_name[name]))
    clustering = Clustering(labels=clusters["cluster"].to_numpy(), distances=clusters["distance"].to_numpy())
    chosen, summary = choose_patches(clustering, keys, percent / 100)
    write_sample_table(real_samples(index.iloc[chosen], manifest), out_csv)
    with atomic_path(out_summary) as tmp:
        tmp.write_text(json.dumps({"percent": percent, **summary.to_dict()}, indent=2))
    return summary


def summarize_subsets(summary_files: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Rule ``summarize_subsets``: one row per subset, target against achieved share."""
    rows = [json.loads(Path(p).read_text()) for p in summary_files]
    table = pd.DataFrame(rows).drop(columns=["patches_per_cluster"]).sort_values("percent")
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    for row in table.itertuples():
        logger.info(
            "%d%% subset: %d of %d patches, %.2f%% of the distinct nuclei (target %d%%)",
            row.percent,
            row.n_patches,
            row.n_patches_total,
            100 * row.achieved_share,
            row.percent,
        )
    return table
