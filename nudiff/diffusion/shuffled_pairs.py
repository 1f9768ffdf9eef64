"""The consistency control: the synthetic pairs with every image given another pair's label.

The ``shuffled`` arm trains on these instead of the true pairs. Its images and its labels are
each exactly those of the synthetic pairs, only no image belongs to its label any more: if
it gains as much as the arm on the true pairs, what helps is not that the images show the
nuclei their labels claim.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.diffusion.quality import read_shards
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.samples import (
    SAMPLE_COLUMNS,
    SHARD_IMAGES,
    SHARD_INSTANCES,
    read_sample_table,
    synthetic_samples,
    write_sample_table,
)

logger = logging.getLogger(__name__)


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(n)`` that moves every element (Sattolo's algorithm: a
    uniformly drawn single cycle), drawn with ``seed``."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    rng = np.random.default_rng(seed)
    order = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    return order


def build_shuffled_set(
    labelled_csv: str | Path,
    pair_shards: list[str | Path],
    out_shard: str | Path,
    out_csv: str | Path,
    *,
    seed: int,
) -> pd.DataFrame:
    """Rule ``build_shuffled_set``: the training set of the ``shuffled`` arm.

    Args:
        labelled_csv: the subset's training part (real patches), taken as it is.
        pair_shards: the synthetic pairs' shard files, in shard order.
        out_shard: one shard holding every synthetic image with the instance map of the pair
            :func:`derangement` assigns it (a copy of the pixels: a sample row has one index).
        out_csv: the sample table, real rows then the shuffled pairs.
        seed: seeds the derangement.

    Raises:
        InputDataError: fewer than 2 synthetic pairs.
    """
    shards = read_shards(pair_shards, (SHARD_IMAGES, SHARD_INSTANCES), "pair_shards")
    images, maps = shards[SHARD_IMAGES], shards[SHARD_INSTANCES]
    if len(images) < 2:
        raise InputDataError(f"shuffling labels needs at least 2 synthetic pairs, the shards hold {len(images)}")
    order = derangement(len(images), seed)
    with atomic_path(out_shard) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                **{SHARD_IMAGES: images, SHARD_INSTANCES: maps[order]},
                sample_index=np.arange(len(images)),
                label_of=order,
            )
    labelled = read_sample_table(labelled_csv)
    synthetic = synthetic_samples(Path(out_shard).resolve(), len(images), images.shape[1], prefix="shuffled")
    table = pd.concat([labelled, synthetic], ignore_index=True)[SAMPLE_COLUMNS]
    write_sample_table(table, out_csv)
    logger.info(
        "shuffled set: %d real + %d synthetic images, each with another pair's label (seed %d)",
        len(labelled),
        len(images),
        seed,
    )
    return table
