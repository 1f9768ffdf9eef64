"""Rule ``build_augmented_set``: the paper's augmented subset, the labelled patches plus every
synthetic pair, as one sample table."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.samples import SAMPLE_COLUMNS, read_sample_table, synthetic_samples, write_sample_table

logger = logging.getLogger(__name__)


def build_augmented_set(labelled_csv: str | Path, pair_shards: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Rule ``build_augmented_set``: the labelled subset plus every synthetic pair.

    The table refers to the shard files in place; no pixels are copied.
    """
    labelled = read_sample_table(labelled_csv)
    parts = [labelled]
    for k, path in enumerate(pair_shards):
        with np.load(path) as shard:
            n, size = len(shard["sample_index"]), shard["images"].shape[1]
        parts.append(synthetic_samples(Path(path).resolve(), n, size, prefix=f"synthetic_shard{k}"))
    table = pd.concat(parts, ignore_index=True)[SAMPLE_COLUMNS]
    write_sample_table(table, out_csv)
    logger.info("augmented set: %d real + %d synthetic samples", len(labelled), len(table) - len(labelled))
    return table
