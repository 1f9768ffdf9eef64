"""Which weights of a trained diffusion model to sample: chosen by a measured score.

A training run keeps candidates: the raw and the EMA weights of every snapshot
(``training.snapshot_every``; without snapshots, the final raw and EMA weights). Each
candidate draws a few samples and is scored; the best one is written to a JSON that the
sampling rules read. The last step is not assumed to be best: a short run's EMA may still
lag the network, and a small data set's last steps may overfit.

* structure model (:func:`select_structure_weights`): sampled structures go through the
  watershed and cleanup, and their nuclei statistics (nuclei per patch, area fraction,
  area, eccentricity, solidity) are compared with the labelled patches'. Score: the mean
  over those statistics of the two-sample Kolmogorov-Smirnov statistic (lower is better).
  An earlier score, the mean Wasserstein-1 distance divided by the real standard deviation,
  chose weights that drew almost no nuclei on the demo: solidity's tiny real spread made
  its term dominate.
* image model: judged by the labelled Hover-Net, so it is chosen in
  :mod:`nudiff.assessment.image_selection` with the candidates, conditioning maps and
  choice of this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nudiff.diffusion.quality import real_pairs
from nudiff.diffusion.quality_measures import STATISTICS, compare_statistic_tables, instance_statistics
from nudiff.diffusion.synthesis import CleanupSettings, SamplingSettings, image_batch, structure_batch
from nudiff.diffusion.training import load_diffusion_model
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.training.checkpoint import load_state

logger = logging.getLogger(__name__)

PathLike = str | Path


@dataclass(frozen=True)
class Candidate:
    """One set of weights in a model file: ``weights`` ``"ema"`` or ``"model"`` (raw), of
    snapshot ``step`` (None: the final weights)."""

    weights: str
    step: int | None

    @property
    def name(self) -> str:
        return f"{self.weights}@{'final' if self.step is None else self.step}"


def weight_candidates(model_path: PathLike) -> list[Candidate]:
    """Every snapshot's EMA and raw weights, or the final ones when the file has no snapshot."""
    state = load_state(model_path)
    steps = [int(s["step"]) for s in state.get("snapshots", [])]
    has_ema = state.get("ema") is not None
    kinds = ["ema", "model"] if has_ema else ["model"]
    if not steps:
        return [Candidate(kind, None) for kind in kinds]
    return [Candidate(kind, step) for step in steps for kind in kinds]


def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def write_selection(
    table: pd.DataFrame, chosen: Candidate, score_column: str, out_csv: PathLike, out_json: PathLike
) -> None:
    """The candidates' scores and the JSON of the chosen one (what the sampling rules read), together."""
    best = table.loc[table["candidate"] == chosen.name].iloc[0]
    record = {"chosen": asdict(chosen), "name": chosen.name, "score": score_column, "value": float(best[score_column])}
    with atomic_path(out_csv) as csv_tmp, atomic_path(out_json) as json_tmp:
        table.to_csv(csv_tmp, index=False)
        Path(json_tmp).write_text(json.dumps(record, indent=2) + "\n")


def choose_candidate(table: pd.DataFrame, score: str, *, higher_is_better: bool) -> Candidate:
    """The row of the best finite ``score`` (NaN never wins) as a :class:`Candidate`."""
    valid = table[np.isfinite(table[score])]
    if valid.empty:
        raise InputDataError(f"no candidate weights could be scored ({score} is undefined for all)")
    row = valid.loc[valid[score].idxmax() if higher_is_better else valid[score].idxmin()]
    return Candidate(str(row["weights"]), None if pd.isna(row["step"]) else int(row["step"]))


def keep_best(
    table: pd.DataFrame, score: str, *, higher_is_better: bool, what: str, out_csv: PathLike, out_json: PathLike
) -> Candidate:
    """Choose the best candidate of ``table`` by ``score``, log it and write the CSV and JSON."""
    chosen = choose_candidate(table, score, higher_is_better=higher_is_better)
    logger.info("chosen %s weights: %s", what, chosen.name)
    write_selection(table, chosen, score, out_csv, out_json)
    return chosen


def structure_score(real_maps: Sequence[np.ndarray], synthetic_maps: Sequence[np.ndarray]) -> dict[str, float]:
    """Distances of each nuclei statistic to the real one, and the ``score``.

    ``w1_*``: Wasserstein-1 / real std (for reading); ``ks_*``: two-sample Kolmogorov-Smirnov
    statistic. ``score`` is the mean KS statistic: bounded in [0, 1] per statistic, so one
    statistic with a tiny real spread (solidity) cannot outweigh structures that lack nuclei
    (nuclei per patch, which counts empty structures). NaN when a statistic is undefined.
    """
    comparison = compare_statistic_tables(
        instance_statistics(real_maps), {"candidate": instance_statistics(synthetic_maps)}
    )
    w1 = dict(zip(comparison["statistic"], comparison["wasserstein_per_real_std"]))
    ks = dict(zip(comparison["statistic"], comparison["ks_statistic"]))
    finite = [v for v in ks.values() if np.isfinite(v)]
    # a candidate whose samples miss a statistic entirely (no whole nucleus) cannot be best
    score = float(np.mean(finite)) if len(finite) == len(STATISTICS) else float("nan")
    return {
        **{f"w1_{k}": float(v) for k, v in w1.items()},
        **{f"ks_{k}": float(v) for k, v in ks.items()},
        "score": score,
    }


def select_structure_weights(
    model_path: PathLike,
    labelled_csv: PathLike,
    *,
    out_csv: PathLike,
    out_json: PathLike,
    n: int,
    sampling: SamplingSettings,
    watershed: Mapping[str, Any],
    cleanup: CleanupSettings,
    device: str = "cpu",
) -> Candidate:
    """Rule ``select_structure_weights``: score every candidate by its nuclei statistics.

    Raises ValueError for ``n < 1``.

    Each candidate samples the same ``n`` noise seeds (stream ``select_structure``), so the
    candidates differ only by their weights. Writes one row per candidate (``candidate``,
    ``weights``, ``step``, each statistic's W1 / real std and KS statistic, ``score``, ``n_nuclei``) and the
    JSON of the chosen one (lowest score).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _, real_maps = real_pairs(labelled_csv)
    rows = []
    for candidate in weight_candidates(model_path):
        t0 = time.monotonic()
        model, schedule, saved = load_diffusion_model(
            model_path, device=device, expect="structure", weights=candidate.weights, step=candidate.step
        )
        size = int(saved["patch_size"])
        maps = []
        for batch in _batches(n, sampling.batch_size):
            out = structure_batch(
                model,
                schedule,
                size,
                batch,
                sampling,
                watershed=dict(watershed),
                cleanup=cleanup,
                device=device,
                stream="select_structure",
            )
            maps.extend(out["instances"])
        scores = structure_score(real_maps, maps)
        rows.append(
            {
                "candidate": candidate.name,
                "weights": candidate.weights,
                "step": candidate.step,
                **scores,
                "n_nuclei": float(np.mean([len(np.unique(m[m > 0])) for m in maps])),
            }
        )
        logger.info(
            "structure weights %s: mean KS %.3f (%d structures, %.0f s)",
            candidate.name,
            scores["score"],
            n,
            time.monotonic() - t0,
        )
    return keep_best(
        pd.DataFrame(rows), "score", higher_is_better=False, what="structure", out_csv=out_csv, out_json=out_json
    )


def conditioning_maps(labelled_csv: PathLike, n: int) -> list[np.ndarray]:
    """``n`` real label maps of the labelled subset, evenly spaced over its rows (those with nuclei)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _, real_maps = real_pairs(labelled_csv)
    with_nuclei = [m for m in real_maps if m.max() > 0]
    if not with_nuclei:
        raise InputDataError(f"{labelled_csv}: no labelled patch holds a nucleus to condition on")
    picks = np.linspace(0, len(with_nuclei) - 1, num=min(n, len(with_nuclei))).round().astype(int)
    return [with_nuclei[i] for i in picks]


def sample_conditioned_images(
    model: torch.nn.Module,
    schedule,
    maps: Sequence[np.ndarray],
    sampling: SamplingSettings,
    *,
    device: str,
    stream: str,
) -> np.ndarray:
    """One image per map, conditioned on the map's structure, in batches; sample k uses seed k of ``stream``."""
    stacked = np.stack(maps)
    return np.concatenate(
        [
            image_batch(model, schedule, stacked[batch], batch, sampling, device=device, stream=stream)
            for batch in _batches(len(stacked), sampling.batch_size)
        ]
    )
