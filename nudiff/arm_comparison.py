"""Each arm against its control, seed by seed, with intervals at the level of what was replicated.

Within one run of the workflow (one generator: one set of diffusion models and pairs) the
replicates are the segmenter seeds. Each seed fixes the initial weights and, with paired
mixing, the real batches every arm draws, so ``arm - control`` of the same seed removes what
they share; the interval is a t-interval over those per-seed differences (each the mean over
the test images). It says nothing of the generator's variance: another generator (diffusion
models and pairs from other seeds) is another *block*, and :func:`pool_blocks` pools blocks
with the block as the unit (a t-interval on the block means of the per-seed differences).

Per-image statistics treat images of one seed as independent replicates of the comparison,
which they are not; they are not computed here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nudiff.arms import ARMS
from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.tables import read_table

logger = logging.getLogger(__name__)

COMPARED = ("dice", "aji")
SUMMARY_COLUMNS = [
    "model",
    "arm",
    "n_seeds",
    *(f"{m}_{s}" for m in COMPARED for s in ("mean", "sd")),
    "val_score_mean",
    "best_step_median",
    "last_step",
    "n_best_at_last",
]
DIFFERENCE_COLUMNS = ["model", "arm", "control", "metric", "n", "mean", "sd", "ci_low", "ci_high", "n_higher", "unit"]


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, sd, low, high)``: the mean of ``values`` and its two-sided t-interval
    (``nan`` bounds with fewer than 2 values)."""
    from scipy.stats import t  # scipy.stats takes seconds to import: only where needed

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (np.nan, np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, np.nan, np.nan, np.nan)
    sd = float(x.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2, len(x) - 1)) * sd / np.sqrt(len(x))
    return (mean, sd, mean - half, mean + half)


def _read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    frame = read_table(path, required=["model", "trainset", "seed", *COMPARED], what="metrics file")
    if frame.duplicated(["model", "trainset", "seed"]).any():
        raise InputDataError(f"{path}: a (model, trainset, seed) appears twice")
    return frame


def _validation_record(path: str | os.PathLike) -> dict[str, float]:
    """Best validation score, its step and the last validated step of one run (NaN for a run
    that validated nothing: it trained on its validation images and kept its last weights)."""
    log = read_table(path, required=["step", "score"], what="validation log")
    if log.empty:
        return {"val_score": np.nan, "best_step": np.nan, "last_step": np.nan}
    best = log.loc[log["score"].idxmax()]
    return {"val_score": float(best["score"]), "best_step": int(best["step"]), "last_step": int(log["step"].max())}


def per_seed_differences(metrics: pd.DataFrame, arm: str, control: str) -> pd.DataFrame:
    """``arm - control`` per (model, seed) for :data:`COMPARED`, over seeds both arms have."""
    keyed = {
        name: metrics[metrics["trainset"] == name].set_index(["model", "seed"])[list(COMPARED)]
        for name in (arm, control)
    }
    return (keyed[arm] - keyed[control]).dropna().reset_index()


def compare_arms(
    metrics_csv: str | os.PathLike,
    validation_logs: Mapping[str, str | os.PathLike],
    comparisons: Sequence[tuple[str, str]],
    out_summary_csv: str | os.PathLike,
    out_differences_csv: str | os.PathLike,
    out_png: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule ``compare_arms``: every arm over seeds, and each arm against its control.

    Args:
        metrics_csv: a subset's ``metrics.csv`` (one row per model, arm and seed; test-image means).
        validation_logs: ``"<model>/<arm>/<seed>"`` -> the run's ``validation.csv``.
        comparisons: ``(arm, control)`` pairs (:func:`nudiff.arms.comparisons`).
        out_summary_csv: per model and arm: seeds, mean and sd of Dice and AJI over seeds, the
            mean best validation score, the median best step and how many runs were best at
            their last validation (a schedule that may be too short).
        out_differences_csv: per model, comparison and metric: the per-seed differences' mean,
            sd, 95% t-interval and how many seeds were higher; ``unit`` names the replicate.
        out_png: seed means per arm and the differences with their intervals.
    """
    metrics = _read_metrics(metrics_csv)
    records = []
    for key, path in validation_logs.items():
        model, arm, seed = key.split("/")
        records.append({"model": model, "trainset": arm, "seed": int(seed), **_validation_record(path)})
    validation = pd.DataFrame(records, columns=["model", "trainset", "seed", "val_score", "best_step", "last_step"])
    runs = metrics.merge(validation, on=["model", "trainset", "seed"], how="left")

    summary_rows = []
    for (model, arm), group in runs.groupby(["model", "trainset"], sort=False):
        row = {"model": model, "arm": arm, "n_seeds": len(group)}
        for metric in COMPARED:
            row[f"{metric}_mean"] = float(group[metric].mean())
            row[f"{metric}_sd"] = float(group[metric].std(ddof=1)) if len(group) > 1 else np.nan
        row["val_score_mean"] = float(group["val_score"].mean())
        row["best_step_median"] = float(group["best_step"].median())
        row["last_step"] = float(group["last_step"].max())
        row["n_best_at_last"] = int((group["best_step"] == group["last_step"]).sum())
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS)

    difference_rows = []
    for arm, control in comparisons:
        differences = per_seed_differences(metrics, arm, control)
        for model, group in differences.groupby("model", sort=False):
            for metric in COMPARED:
                mean, sd, low, high = t_interval(group[metric])
                difference_rows.append(
                    {
                        "model": model,
                        "arm": arm,
                        "control": control,
                        "metric": metric,
                        "n": len(group),
                        "mean": mean,
                        "sd": sd,
                        "ci_low": low,
                        "ci_high": high,
                        "n_higher": int((group[metric] > 0).sum()),
                        "unit": "segmenter seed, one generator",
                    }
                )
    differences = pd.DataFrame(difference_rows, columns=DIFFERENCE_COLUMNS)
    for row in differences[differences["metric"] == "aji"].itertuples():
        logger.info(
            "%s %s - %s: AJI %+.4f [%+.4f, %+.4f] over %d seeds (%d higher)",
            row.model,
            row.arm,
            row.control,
            row.mean,
            row.ci_low,
            row.ci_high,
            row.n,
            row.n_higher,
        )
    with (
        atomic_path(out_summary_csv) as summary_tmp,
        atomic_path(out_differences_csv) as differences_tmp,
        atomic_path(out_png) as png_tmp,
    ):
        summary.to_csv(summary_tmp, index=False)
        differences.to_csv(differences_tmp, index=False)
        plot_arms(metrics, differences, png_tmp)
    return summary, differences


def plot_arms(metrics: pd.DataFrame, differences: pd.DataFrame, out_png: str | os.PathLike) -> None:
    """Per model and metric: each seed's test mean per arm (dots, one line per seed), and each
    arm's difference from its control with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nudiff.figures import save_figure

    models = list(dict.fromkeys(metrics["model"]))
    present = set(metrics["trainset"])
    arms = [arm for arm in ARMS if arm in present]  # each control next to its arm
    fig, axes = plt.subplots(
        len(models) * len(COMPARED), 2, squeeze=False, figsize=(11, 2.8 * len(models) * len(COMPARED) + 0.6)
    )
    for i, (model, metric) in enumerate((m, k) for m in models for k in COMPARED):
        left, right = axes[i]
        part = metrics[metrics["model"] == model]
        wide = part.pivot_table(index="seed", columns="trainset", values=metric).reindex(columns=arms)
        for seed, row in wide.iterrows():
            left.plot(range(len(arms)), row.to_numpy(), color="0.75", lw=0.8, zorder=1)
            left.scatter(range(len(arms)), row.to_numpy(), s=18, zorder=2, label=f"seed {seed}")
        left.plot(range(len(arms)), wide.mean().to_numpy(), "k_", markersize=18, mew=2, label="mean")
        left.set_xticks(range(len(arms)))
        left.set_xticklabels(arms, fontsize=8)
        left.set_ylabel(f"{model}\ntest {metric.upper() if metric == 'aji' else 'Dice'}")
        left.grid(axis="y", alpha=0.3)
        rows = differences[(differences["model"] == model) & (differences["metric"] == metric)]
        labels = [f"{r.arm}\n- {r.control}" for r in rows.itertuples()]
        y = np.arange(len(rows))
        err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        right.errorbar(rows["mean"], y, xerr=np.nan_to_num(err), fmt="o", color="k", capsize=3)
        right.axvline(0, color="tab:red", lw=0.8)
        right.set_yticks(y)
        right.set_yticklabels(labels, fontsize=8)
        right.invert_yaxis()
        right.set_xlabel("difference, same seed (mean, 95% t-interval over seeds)")
        right.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Arms on the test images: one generator, segmenter seeds as replicates", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)


def pool_blocks(blocks: Mapping[str, str | os.PathLike], comparisons: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Pool blocks (one generator each) with the block as the unit.

    Args:
        blocks: block name -> its subset's ``metrics.csv``.
        comparisons: ``(arm, control)`` pairs.

    Returns:
        Per model, comparison and metric: the number of blocks and of block x seed pairs, the
        mean of the block means of the per-seed differences, their sd over blocks and the 95%
        t-interval over blocks, the per-block means (``;``-joined), and how many pairs were higher.
    """
    rows = []
    for arm, control in comparisons:
        per_block = []
        for name, path in blocks.items():
            differences = per_seed_differences(_read_metrics(path), arm, control)
            per_block.append(differences.assign(block=name))
        pooled = pd.concat(per_block, ignore_index=True)
        for model, group in pooled.groupby("model", sort=False):
            for metric in COMPARED:
                block_means = group.groupby("block", sort=False)[metric].mean()
                mean, sd, low, high = t_interval(block_means)
                rows.append(
                    {
                        "model": model,
                        "arm": arm,
                        "control": control,
                        "metric": metric,
                        "n_blocks": len(block_means),
                        "n_pairs": len(group),
                        "mean": mean,
                        "sd_over_blocks": sd,
                        "ci_low": low,
                        "ci_high": high,
                        "block_means": ";".join(f"{b}:{v:+.4f}" for b, v in block_means.items()),
                        "n_higher": int((group[metric] > 0).sum()),
                        "unit": "block (generator)",
                    }
                )
    return pd.DataFrame(rows)


def write_pooled(
    blocks: Mapping[str, str | os.PathLike], comparisons: Sequence[tuple[str, str]], out_csv: str | Path
) -> pd.DataFrame:
    """:func:`pool_blocks`, written to ``out_csv``."""
    table = pool_blocks(blocks, comparisons)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def plot_pooled(
    blocks: Mapping[str, str | os.PathLike], arm: str, control: str, out_png: str | os.PathLike
) -> pd.DataFrame:
    """Forest plot of ``arm - control`` per block and pooled, one panel per model and metric:
    each block x seed difference (dots), each block's mean (bar), and the pooled mean with its
    95% t-interval over block means (the row at the bottom), so a reader sees what the interval
    rests on.

    Returns:
        The plotted per-seed differences, with a ``block`` column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nudiff.figures import save_figure

    differences = pd.concat(
        [per_seed_differences(_read_metrics(path), arm, control).assign(block=name) for name, path in blocks.items()],
        ignore_index=True,
    )
    pooled = pool_blocks(blocks, [(arm, control)])
    panels = [(m, k) for m in dict.fromkeys(differences["model"]) for k in COMPARED]
    names = list(blocks)
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(5.5 * len(panels), 0.55 * len(names) + 1.8))
    for ax, (model, metric) in zip(axes[0], panels):
        part = differences[differences["model"] == model]
        for y, name in enumerate(names):
            values = part.loc[part["block"] == name, metric]
            ax.scatter(values, np.full(len(values), y), s=22, color="tab:blue", zorder=2)
            ax.plot(values.mean(), y, "k|", markersize=16, mew=2, zorder=3)
        row = pooled[(pooled["model"] == model) & (pooled["metric"] == metric)].iloc[0]
        y = len(names)
        ax.errorbar(
            row["mean"],
            y,
            xerr=np.nan_to_num([[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]),
            fmt="D",
            color="k",
            capsize=4,
        )
        ax.axvline(0, color="tab:red", lw=0.8)
        ax.margins(x=0.08)  # keep the zero line off the frame
        ax.set_yticks(range(len(names) + 1))
        ax.set_yticklabels([*names, f"pooled ({row['n_blocks']} blocks)"], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{model}: {arm} - {control}, test {'AJI' if metric == 'aji' else 'Dice'}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "dots: segmenter seeds; bars: block means; diamond: pooled mean, 95% t-interval over blocks", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, out_png)
    return differences
