"""The final results table: our Dice/AJI per subset next to the paper's Tables 1 and 2.

Inputs are the ``metrics.csv`` files of the evaluation stage (one row per segmentation
model, training set and seed; means over test images). :func:`build_table` averages over
seeds, looks up the paper's number for the same dataset, model, subset and training set, and
adds the gain of the augmented set over the labelled one. :func:`write_table` renders it as
CSV, as Markdown in the paper's layout and as a standalone HTML page.
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import pandas as pd

from nudiff.arms import ARMS
from nudiff.errors import ConfigError, InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.io.tables import read_table

logger = logging.getLogger(__name__)

METRICS = ("dice", "aji")
# the paper reports two arms; nudiff.arms.ARMS are every arm a preset may train
PAPER_ARMS = ("labelled", "augmented")
TRAINSETS = ARMS
PAPER_DATASETS = ("monuseg", "kumar")
_PAPER_NAMES = {"monuseg": "MoNuSeg", "kumar": "Kumar"}
MODEL_NAMES = {"hovernet": "Hover-Net", "pffnet": "PFF-Net"}
GROUP = ["dataset", "model", "subset", "trainset"]
REQUIRED_COLUMNS = (*GROUP, "seed", "n_images", *METRICS)
TABLE_COLUMNS = (
    *GROUP,
    "n_seeds",
    "n_images",
    "dice_mean",
    "dice_std",
    "aji_mean",
    "aji_std",
    "paper_dataset",
    "paper_dice",
    "paper_aji",
    "dice_diff",
    "aji_diff",
    "dice_gain",
    "aji_gain",
    "paper_dice_gain",
    "paper_aji_gain",
    "n_paired_seeds",
    "dice_paired_gain_mean",
    "dice_paired_gain_std",
    "aji_paired_gain_mean",
    "aji_paired_gain_std",
)
_SUBSET = re.compile(r"^(\d+)pct$")


def _paper_rows() -> dict[tuple[str, str, str, str], tuple[float, float]]:
    # Transcribed from SPEC.md section 7 (= the paper's Table 1, Hover-Net, and Table 2,
    # PFF-Net; arXiv 2310.14197). Per subset: labelled then augmented; per dataset (Dice, AJI).
    rows = {
        "hovernet": {
            "10pct": (((0.7969, 0.6344), (0.8040, 0.5939)), ((0.8291, 0.6785), (0.8049, 0.6161))),
            "20pct": (((0.8118, 0.6501), (0.8078, 0.6098)), ((0.8219, 0.6657), (0.8192, 0.6255))),
            "50pct": (((0.8182, 0.6603), (0.8175, 0.6201)), ((0.8291, 0.6764), (0.8158, 0.6307))),
            "100pct": (((0.8206, 0.6652), (0.8150, 0.6183)), ((0.8336, 0.6810), (0.8210, 0.6301))),
        },
        "pffnet": {
            "10pct": (((0.7489, 0.5290), (0.7685, 0.5965)), ((0.7764, 0.5618), (0.8051, 0.6458))),
            "20pct": (((0.7691, 0.5629), (0.7786, 0.6087)), ((0.7891, 0.5927), (0.8019, 0.6400))),
            "50pct": (((0.7663, 0.5661), (0.7797, 0.6175)), ((0.7902, 0.5998), (0.8104, 0.6524))),
            "100pct": (((0.7809, 0.5708), (0.8032, 0.6461)), ((0.7872, 0.5860), (0.8125, 0.6550))),
        },
    }
    out = {}
    for model, subsets in rows.items():
        for subset, per_trainset in subsets.items():
            for trainset, per_dataset in zip(PAPER_ARMS, per_trainset):
                for paper_dataset, scores in zip(PAPER_DATASETS, per_dataset):
                    out[(paper_dataset, model, subset, trainset)] = scores
    return out


#: (paper_dataset, model, subset, trainset) -> (dice, aji), the paper's Tables 1-2.
PAPER_RESULTS: Mapping[tuple[str, str, str, str], tuple[float, float]] = MappingProxyType(_paper_rows())


def subset_percent(subset: str) -> int:
    """``"10pct"`` -> 10; raises ``ValueError`` naming any other form."""
    match = _SUBSET.match(str(subset))
    if match is None:
        raise ValueError(f"subset {subset!r} is not of the form '<percent>pct'")
    return int(match.group(1))


def _read_metrics(path: Path) -> pd.DataFrame:
    frame = read_table(
        path, required=REQUIRED_COLUMNS, what="metrics file", allow_empty=False, dtype={c: str for c in GROUP}
    )
    bad = sorted(set(frame["trainset"]) - set(TRAINSETS))
    if bad:
        raise InputDataError(f"{path}: unknown trainset(s) {bad}; expected {TRAINSETS}")
    for subset in frame["subset"].unique():
        if _SUBSET.match(str(subset)) is None:
            raise InputDataError(f"{path}: subset {subset!r} is not of the form '<percent>pct'")
    values = frame[list(METRICS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or not values.stack().between(0, 1).all():
        raise InputDataError(f"{path}: dice/aji must be numbers in [0, 1]")
    frame[list(METRICS)] = values
    n_images = pd.to_numeric(frame["n_images"], errors="coerce")
    if n_images.isna().any() or (n_images < 1).any() or (n_images % 1 != 0).any():
        raise InputDataError(f"{path}: n_images must be positive integers")
    frame["n_images"] = n_images.astype(np.int64)
    frame["source"] = str(path)
    return frame


def _check_mapping(datasets: Sequence[str], paper_datasets: Mapping[str, str | None]) -> None:
    for name, paper in paper_datasets.items():
        if paper is not None and paper not in PAPER_DATASETS:
            raise ConfigError(f"paper_datasets[{name!r}] = {paper!r}; expected one of {PAPER_DATASETS} or None")
    unmapped = sorted(set(datasets) - set(paper_datasets))
    if unmapped:
        raise ConfigError(
            f"paper_datasets has no entry for dataset(s) {unmapped}; map each to {PAPER_DATASETS} or None"
        )


def build_table(metrics_csvs: Sequence[str | os.PathLike], *, paper_datasets: Mapping[str, str | None]) -> pd.DataFrame:
    """One row per (dataset, model, subset, trainset): ours over seeds next to the paper's.

    Args:
        metrics_csvs: the evaluation stage's ``metrics.csv`` files (columns ``dataset,
            subset, model, trainset, seed, n_images, dice, aji, ...``).
        paper_datasets: our dataset name -> the paper's dataset it reproduces
            (``"monuseg"``, ``"kumar"``) or ``None`` (no paper numbers, e.g. the demo). Every
            dataset in the files needs an entry; its order is the table's dataset order.

    Returns:
        Columns ``TABLE_COLUMNS``. ``*_mean``/``*_std`` are over seeds (sample std, NaN with
        one seed); ``paper_*`` are the paper's Tables 1-2 (NaN where it has no such cell);
        ``*_diff`` = ours - paper; ``*_gain`` (ours) and ``paper_*_gain`` = augmented -
        labelled of the same dataset, model and subset, set on the augmented row only.
        Sorted by model (paper's first), dataset, subset ascending, labelled before augmented.

    Raises:
        InputDataError: naming the file, for a missing/unreadable file, a missing column,
            bad values, a (dataset, model, subset, trainset, seed) given twice, or seeds of
            one group scored on different numbers of images.
        ConfigError: a dataset without an entry in ``paper_datasets``, or an unknown
            paper dataset.
    """
    if not metrics_csvs:
        raise ValueError("metrics_csvs is empty: nothing to tabulate")
    rows = pd.concat([_read_metrics(Path(p)) for p in metrics_csvs], ignore_index=True)
    duplicated = rows.duplicated([*GROUP, "seed"], keep=False)
    if duplicated.any():
        first = rows[duplicated].iloc[0]
        raise InputDataError(
            f"{sorted(set(rows.loc[duplicated, 'source']))}: row "
            f"{first[GROUP + ['seed']].tolist()} appears more than once"
        )
    _check_mapping(rows["dataset"].unique().tolist(), paper_datasets)

    records = []
    for key, group in rows.groupby(GROUP, sort=False):
        if group["n_images"].nunique() != 1:
            raise InputDataError(
                f"{sorted(set(group['source']))}: seeds of {list(key)} were scored on different "
                f"numbers of images {sorted(group['n_images'].unique())}"
            )
        dataset, model, subset, trainset = key
        paper_dataset = paper_datasets[dataset]
        paper = PAPER_RESULTS.get((paper_dataset, model, subset, trainset), (np.nan, np.nan))
        record = dict(
            zip(GROUP, key), n_seeds=len(group), n_images=int(group["n_images"].iloc[0]), paper_dataset=paper_dataset
        )
        for metric, paper_value in zip(METRICS, paper):
            record[f"{metric}_mean"] = group[metric].mean()
            record[f"{metric}_std"] = group[metric].std(ddof=1)  # NaN with one seed
            record[f"paper_{metric}"] = paper_value
            record[f"{metric}_diff"] = record[f"{metric}_mean"] - paper_value
        records.append(record)
    table = pd.DataFrame(records)
    _add_gains(table)
    _add_paired_gains(table, rows)

    model_rank = {name: i for i, name in enumerate(MODEL_NAMES)}
    table = table.assign(
        _known=[model_rank.get(m, len(model_rank)) for m in table["model"]],
        _dataset=table["dataset"].map({name: i for i, name in enumerate(paper_datasets)}),
        _subset=table["subset"].map(subset_percent),
        _trainset=table["trainset"].map(TRAINSETS.index),
    ).sort_values(["_known", "model", "_dataset", "_subset", "_trainset"])
    logger.info("tabulated %d rows from %d metrics file(s)", len(table), len(metrics_csvs))
    return table[list(TABLE_COLUMNS)].reset_index(drop=True)


def _add_gains(table: pd.DataFrame) -> None:
    """Arm - labelled of the same (dataset, model, subset), on the rows of every other arm."""
    keys = ["dataset", "model", "subset"]
    labelled = table[table["trainset"] == "labelled"].set_index(keys)
    index = pd.MultiIndex.from_frame(table[keys])
    is_augmented = (table["trainset"] != "labelled").to_numpy()
    for metric in METRICS:
        for column, gain in ((f"{metric}_mean", f"{metric}_gain"), (f"paper_{metric}", f"paper_{metric}_gain")):
            base = labelled[column].reindex(index).to_numpy()
            table[gain] = np.where(is_augmented, table[column].to_numpy() - base, np.nan)


def _add_paired_gains(table: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Arm - labelled of the same seed, then mean and sample std over the seeds both have.

    A seed fixes a segmenter's initial weights, validation split and (with paired mixing)
    its real training batches, so the per-seed difference removes what the two arms share;
    its spread is the yardstick a gain must exceed. On the rows of every arm but labelled.
    """
    keys = ["dataset", "model", "subset"]
    by_arm = {arm: rows[rows["trainset"] == arm].set_index([*keys, "seed"])[list(METRICS)] for arm in ARMS}
    for column in ("n_paired_seeds", *(f"{m}_paired_gain_{s}" for m in METRICS for s in ("mean", "std"))):
        table[column] = np.nan
    for arm in ARMS[1:]:
        differences = (by_arm[arm] - by_arm["labelled"]).dropna()
        for key, group in differences.groupby(level=keys):
            at = (table[keys].apply(tuple, axis=1) == key) & (table["trainset"] == arm)
            table.loc[at, "n_paired_seeds"] = len(group)
            for metric in METRICS:
                table.loc[at, f"{metric}_paired_gain_mean"] = group[metric].mean()
                table.loc[at, f"{metric}_paired_gain_std"] = group[metric].std(ddof=1)


def paired_gain_text(row: pd.Series, metric: str) -> str:
    """``+0.0123 ± 0.0045 (3 seeds)``; ``-`` without paired seeds."""
    n = row["n_paired_seeds"]
    if not np.isfinite(n) or n < 1:
        return "-"
    mean, std = row[f"{metric}_paired_gain_mean"], row[f"{metric}_paired_gain_std"]
    spread = f" ± {std:.4f}" if np.isfinite(std) else ""
    return f"{mean:+.4f}{spread} ({int(n)} seed{'s' if n > 1 else ''})"


def _paired_lines(table: pd.DataFrame, model: str) -> list[str]:
    part = table[(table["model"] == model) & (table["trainset"] != "labelled")]
    return [
        f"{r['dataset']} {subset_percent(r['subset'])}%: {r['trainset']} - labelled, same seed: "
        + ", ".join(f"{'Dice' if m == 'dice' else 'AJI'} {paired_gain_text(r, m)}" for m in METRICS)
        for _, r in part.iterrows()
        if np.isfinite(r["n_paired_seeds"])
    ]


def _fmt(value: float, *, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _ours(row: pd.Series, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if row["n_seeds"] > 1 and np.isfinite(std):
        return f"{mean:.4f} ± {std:.4f}"
    return f"{mean:.4f}"


class _Block(NamedTuple):
    """One model's table in the paper's layout, as strings, plus what HTML highlights."""

    model: str
    header: list[str]
    rows: list[list[str]]
    signs: list[list[int]]  # per cell: sign of ours' gain over labelled (augmented rows), else 0
    notes: list[str]


def _cells(row: pd.Series | None, metric: str, with_paper: bool) -> list[tuple[str, int]]:
    """(text, sign of our gain) for one dataset's metric: ours[, paper, diff]."""
    if row is None:
        return [("-", 0)] * (3 if with_paper else 1)
    gain = row[f"{metric}_gain"]
    cells = [(_ours(row, metric), int(np.sign(gain)) if np.isfinite(gain) else 0)]
    if with_paper:
        cells += [(_fmt(row[f"paper_{metric}"]), 0), (_fmt(row[f"{metric}_diff"], signed=True), 0)]
    return cells


def _note(model: str, dataset: str, rows: pd.DataFrame) -> str:
    seeds = sorted(set(rows["n_seeds"]))
    augmented = rows[rows["trainset"] == "augmented"]
    wins = ", ".join(
        f"{m} {int((augmented[f'{m}_gain'] > 0).sum())}/{int(augmented[f'{m}_gain'].notna().sum())}" for m in METRICS
    )
    paper = rows["paper_dataset"].dropna().unique()
    source = (
        f"paper: Table {1 + list(MODEL_NAMES).index(model)}, {_PAPER_NAMES[paper[0]]} column"
        if len(paper) and model in MODEL_NAMES
        else "no paper numbers"
    )
    return (
        f"{dataset}: ours = mean{' ± std' if max(seeds) > 1 else ''} over "
        f"{'/'.join(map(str, seeds))} seed(s), {int(rows['n_images'].iloc[0])} test images; "
        f"{source}; augmented beats labelled (ours) on {wins} subsets"
    )


def _blocks(table: pd.DataFrame) -> list[_Block]:
    blocks = []
    for model in table["model"].unique():
        part = table[table["model"] == model]
        datasets = part["dataset"].unique().tolist()
        with_paper = {d: part.loc[part["dataset"] == d, "paper_dataset"].notna().any() for d in datasets}
        header = ["training data"]
        for dataset in datasets:
            for metric in METRICS:
                header += [f"{dataset} {'Dice' if metric == 'dice' else 'AJI'}"]
                header += ["paper", "diff"] if with_paper[dataset] else []
        by_key = {(r.dataset, r.subset, r.trainset): r for _, r in part.iterrows()}
        keys = sorted({key[1:] for key in by_key}, key=lambda k: (subset_percent(k[0]), TRAINSETS.index(k[1])))
        rows, signs = [], []
        for subset, trainset in keys:
            cells = [(f"{subset_percent(subset)}% {trainset}", 0)]
            for dataset in datasets:
                for metric in METRICS:
                    cells += _cells(by_key.get((dataset, subset, trainset)), metric, with_paper[dataset])
            rows.append([text for text, _ in cells])
            signs.append([sign for _, sign in cells])
        notes = [_note(model, d, part[part["dataset"] == d]) for d in datasets] + _paired_lines(table, model)
        blocks.append(_Block(MODEL_NAMES.get(model, model), header, rows, signs, notes))
    return blocks


_TITLE = "Segmentation on labelled vs augmented subsets: ours and the paper's Tables 1-2"


def render_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: one block per model, the paper's row and column layout."""
    lines = [f"# {_TITLE}", "", "diff = ours - paper (Yu et al., MICCAI 2023).", ""]
    for block in _blocks(table):
        lines += [
            f"## {block.model}",
            "",
            "| " + " | ".join(block.header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(block.header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in block.rows]
        lines += [""] + [f"- {note}" for note in block.notes] + [""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f0f0f0; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; white-space: nowrap; }
tr.beats td:first-child { font-weight: bold; border-left: 4px solid #2a9d3a; }
td.gain { background: #d8f3dc; }
td.loss { background: #fde2e2; }
.legend, li { color: #555; font-size: 0.9em; }
"""


_CELL_CLASS = {1: " class='gain'", -1: " class='loss'"}


def render_html(table: pd.DataFrame) -> str:
    """The Markdown's tables as one standalone HTML page (inline CSS, no external assets).

    On augmented rows, our cells are green where augmented beats labelled and red where
    it loses; a row whose every score beats labelled gets a bold, green-edged label.
    """
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(_TITLE)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(_TITLE)}</h1>",
        "<p class='legend'>diff = ours - paper (Yu et al., MICCAI 2023). On augmented rows, "
        "green = augmented beats labelled, red = it does not (ours); a bold green-edged row "
        "beats labelled on every score.</p>",
    ]
    for block in _blocks(table):
        parts.append(
            f"<h2>{esc(block.model)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>"
        )
        for cells, signs in zip(block.rows, block.signs):
            scored = [s for s in signs if s != 0]
            beats = bool(scored) and all(s > 0 for s in scored)
            parts.append(
                ("<tr class='beats'>" if beats else "<tr>")
                + "".join(f"<td{_CELL_CLASS.get(s, '')}>{esc(c)}</td>" for c, s in zip(cells, signs))
                + "</tr>"
            )
        parts.append("</table><ul>" + "".join(f"<li>{esc(n)}</li>" for n in block.notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_table(
    table: pd.DataFrame,
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike,
    out_html: str | os.PathLike,
) -> None:
    """Write ``table`` (from :func:`build_table`) as CSV, Markdown and standalone HTML.

    All three are rendered before any is written, and each is written atomically.
    """
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; build it with build_table")
    markdown = render_markdown(table)
    page = render_html(table)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")


SEED_SUMMARY_COLUMNS = (
    *GROUP,
    "n_seeds",
    "dice_mean",
    "dice_std",
    "aji_mean",
    "aji_std",
    "n_paired_seeds",
    "dice_paired_gain_mean",
    "dice_paired_gain_std",
    "aji_paired_gain_mean",
    "aji_paired_gain_std",
)


def seed_summary(metrics_csv: str | os.PathLike, out_csv: str | os.PathLike) -> pd.DataFrame:
    """Rule ``summarize_metrics``' summary: one ``metrics.csv`` over seeds, without paper numbers.

    One row per (dataset, model, subset, trainset): mean and sample std over seeds of Dice and
    AJI, and on augmented rows the paired gain (augmented - labelled of the same seed) with its
    mean and std. Columns :data:`SEED_SUMMARY_COLUMNS`.
    """
    datasets = _read_metrics(Path(metrics_csv))["dataset"].unique()
    table = build_table([metrics_csv], paper_datasets={d: None for d in datasets})[list(SEED_SUMMARY_COLUMNS)]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table


def make_table(
    metrics_csvs: Sequence[str | os.PathLike],
    paper_datasets: Mapping[str, str | None],
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike,
    out_html: str | os.PathLike,
) -> pd.DataFrame:
    """Rule ``make_table``: :func:`build_table` then :func:`write_table`; returns the table."""
    table = build_table(metrics_csvs, paper_datasets=paper_datasets)
    write_table(table, out_csv, out_md, out_html)
    return table
