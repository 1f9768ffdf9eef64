"""Copy one block's evidence from its working directory into this record, and pool the blocks.

    python docs/records/2026-12-05-monuseg-cpu-10pct-arms/collect.py <block workdir> <block name>
    python docs/records/2026-12-05-monuseg-cpu-10pct-arms/collect.py --pool
    python docs/records/2026-12-05-monuseg-cpu-10pct-arms/collect.py --markdown   # the README's tables

``--record <folder>`` first writes into (and pools) another record's block folders instead of
this one's: the blocks at the tuned schedules have their own record, and blocks run at
different schedules are never pooled together. A block that trained only some arms (one
comparison per block at the tuned schedules) gets the comparisons its arms allow.

A block is one run of ``snakemake --cores 2 --directory <workdir> --configfile
config/monuseg-cpu.yaml [config/overlays/monuseg-cpu-block<k>.yaml]``: one generator, every arm,
2 segmenter seeds. ``--pool`` pools every block folder here with the block as the unit
(``nudiff.arm_comparison.pool_blocks``) into ``pooled.csv``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBSET = Path("results/monuseg/10pct")
FILES = [
    "metrics.csv",
    "metrics_per_image.csv",
    "metrics_over_seeds.csv",
    "arms.csv",
    "arm_differences.csv",
    "arms.png",
    "per_image_metrics.png",
    "prediction_overlays.png",
    "synthetic/quality/segmenter_agreement.csv",
    "synthetic/quality/statistics.csv",
    "synthetic/quality/samples.png",
    "diffusion/structure_model_selection.csv",
    "diffusion/image_model_selection.csv",
]
COMPARISONS = [
    ("augmented", "labelled"),
    ("pretrained", "pretrained-real"),
    ("pretrained-real", "labelled"),
    ("shuffled", "augmented"),
    ("pretrained", "labelled"),
]


def collect(workdir: Path, name: str, record: Path = HERE) -> None:
    from nudiff.job_times import markdown, read_job_times

    out = record / name
    out.mkdir(exist_ok=True)
    for rel in FILES:
        source = workdir / SUBSET / rel
        if source.is_file():
            shutil.copy(source, out / source.name)
    for log in sorted((workdir / SUBSET / "segmentation").glob("*/*/seed*/validation.csv")):
        model, arm, seed = log.parts[-4:-1]
        shutil.copy(log, out / f"validation_{model}_{arm}_{seed}.csv")
    shutil.copy(workdir / "logs/monuseg/10pct/hold_out_validation.log", out / "hold_out_validation.log")
    for extra in ("results/provenance.json", "results/table.md"):
        if (workdir / extra).is_file():
            shutil.copy(workdir / extra, out / Path(extra).name)
    # no machine paths in the record: the block's folder becomes <block>, and so does the
    # folder a copied block was made from (its provenance names the original's data paths)
    for path in (out / "hold_out_validation.log", out / "provenance.json"):
        if path.is_file():
            text = path.read_text().replace(f"{workdir.resolve()}/", "<block>/")
            path.write_text(re.sub(r"/[^\s\"']*?/(?=(?:data|results|logs)/)", "<block>/", text))
    jobs = read_job_times(workdir / "benchmarks")
    jobs.to_csv(out / "job_times.csv", index=False)
    (out / "job_times.md").write_text(markdown(jobs))


def pool(record: Path = HERE) -> None:
    from nudiff.arm_comparison import write_pooled

    blocks = {p.name: p / "metrics.csv" for p in sorted(record.glob("block*")) if (p / "metrics.csv").is_file()}
    table = write_pooled(blocks, COMPARISONS, record / "pooled.csv")
    print(table.to_string(index=False))


def _mean_sd(mean: float, sd: float) -> str:
    """``mean ± sd``, or the mean alone for a one-seed arm (its sd is undefined)."""
    return f"{mean:.3f}" if sd != sd else f"{mean:.3f} ± {sd:.3f}"


def _difference(row) -> str:
    """``mean [low, high]``, or the mean alone where one seed leaves no interval."""
    if row.ci_low != row.ci_low:
        return f"{row['mean']:+.3f}"
    return f"{row['mean']:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"


def markdown(record: Path = HERE) -> None:
    """Per segmenter and block: arms (AJI mean +- sd over seeds) and each comparison; then the
    pooled one (blank cells: the block did not train that arm)."""
    import pandas as pd

    blocks = sorted(p for p in record.glob("block*") if (p / "arms.csv").is_file())
    arms = {b.name: pd.read_csv(b / "arms.csv") for b in blocks}
    differences = {b.name: pd.read_csv(b / "arm_differences.csv") for b in blocks}
    pooled = pd.read_csv(record / "pooled.csv") if (record / "pooled.csv").is_file() else None
    models = list(dict.fromkeys(m for t in arms.values() for m in t["model"]))
    for model in models:
        print(f"**{model}**\n")
        print("| arm | " + " | ".join(f"{b} AJI" for b in arms) + " |")
        print("|---|" + "---:|" * len(arms))
        for arm in ["labelled", "augmented", "pretrained", "pretrained-real", "shuffled"]:
            cells = []
            for t in arms.values():
                rows = t[(t.model == model) & (t.arm == arm)]
                cells.append("" if rows.empty else _mean_sd(rows.iloc[0]["aji_mean"], rows.iloc[0]["aji_sd"]))
            if any(cells):
                print(f"| {arm} | " + " | ".join(cells) + " |")
        print()
        print(f"| comparison (AJI) | {' | '.join(arms)} | pooled (block as unit) |")
        print("|---|" + "---:|" * len(arms) + "---|")
        for arm, control in COMPARISONS:
            cells = []
            for d in differences.values():
                rows = d[(d.model == model) & (d.arm == arm) & (d.control == control) & (d.metric == "aji")]
                cells.append("" if rows.empty else _difference(rows.iloc[0]))
            if not any(cells):
                continue
            last = ""
            rows = pd.DataFrame() if pooled is None else pooled[
                (pooled.model == model) & (pooled.arm == arm) & (pooled.control == control) & (pooled.metric == "aji")
            ]
            if not rows.empty:
                row = rows.iloc[0]
                last = f"{_difference(row)}, {row.n_higher} of {row.n_pairs} higher"
            print(f"| {arm} - {control} | " + " | ".join(cells) + f" | {last} |")
        print()


if __name__ == "__main__":
    args = sys.argv[1:]
    record = HERE
    if args[:1] == ["--record"]:
        record, args = Path(args[1]).resolve(), args[2:]
        record.mkdir(parents=True, exist_ok=True)
    if args == ["--pool"]:
        pool(record)
    elif args == ["--markdown"]:
        markdown(record)
    else:
        collect(Path(args[0]), args[1], record)
