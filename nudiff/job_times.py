"""Time per job and per rule of a run, from the benchmark files Snakemake writes.

Every rule has a ``benchmark:`` file (``benchmarks/<dataset>/...``): one TSV row with the job's
wall seconds ``s``, its ``cpu_time`` and peak memory ``max_rss`` (MB). A file is written when
its job ends, so its modification time minus ``s`` is when the job started; the span from the
first start to the last end is the run's wall time (from the first job, not from Snakemake's
start-up).

    python -m nudiff.job_times benchmarks/monuseg [--csv job_times.csv]

prints the per-rule table, the span and the total CPU time as Markdown.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"


def rule_names(rules_dir: str | Path = RULES_DIR) -> list[str]:
    """The workflow's rule names, read from its ``rules/*.smk`` files."""
    names = []
    for path in sorted(Path(rules_dir).glob("*.smk")):
        names += re.findall(r"^rule (\w+):", path.read_text(), flags=re.MULTILINE)
    if not names:
        raise FileNotFoundError(f"no 'rule <name>:' in {rules_dir}/*.smk")
    return names


def _rule_of(job: str, rules: list[str]) -> str:
    """A benchmark file is named after its rule, then its wildcards: the longest matching rule."""
    matches = [r for r in rules if job == r or job.startswith(r + "_")]
    return max(matches, key=len) if matches else job


def read_job_times(benchmarks: str | Path, rules: list[str] | None = None) -> pd.DataFrame:
    """One row per benchmark file under ``benchmarks``: job, rule, start, end, wall_s, cpu_s,
    max_rss_mb; sorted by start."""
    benchmarks = Path(benchmarks)
    files = sorted(benchmarks.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no benchmark files (*.tsv) under {benchmarks}")
    rules = rule_names() if rules is None else rules
    rows = []
    for path in files:
        table = pd.read_csv(path, sep="\t")
        missing = {"s", "cpu_time", "max_rss"} - set(table.columns)
        if missing or table.empty:
            raise ValueError(f"{path}: not a Snakemake benchmark file (missing {sorted(missing) or 'rows'})")
        wall, cpu, rss = (float(table[c].iloc[-1]) for c in ("s", "cpu_time", "max_rss"))
        end = path.stat().st_mtime
        job = path.relative_to(benchmarks).with_suffix("").as_posix().replace("/", "_")
        rows.append(
            {
                "job": job,
                "rule": _rule_of(path.stem, rules),
                "start": _utc(end - wall),
                "end": _utc(end),
                "wall_s": wall,
                "cpu_s": cpu,
                "max_rss_mb": rss,
            }
        )
    return pd.DataFrame(rows).sort_values("start", ignore_index=True)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs, summed wall and CPU seconds and peak memory of each rule, in order of first start."""
    grouped = jobs.groupby("rule", sort=False)
    table = grouped.agg(
        jobs=("job", "size"),
        first_start=("start", "min"),
        wall_s=("wall_s", "sum"),
        cpu_s=("cpu_s", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
    )
    return table.sort_values("first_start").drop(columns="first_start").reset_index()


def span_seconds(jobs: pd.DataFrame) -> float:
    """Wall seconds from the first job's start to the last job's end."""
    return (jobs["end"].max() - jobs["start"].min()).total_seconds()


def markdown(jobs: pd.DataFrame) -> str:
    rules = per_rule(jobs)
    lines = ["| rule | jobs | wall s | CPU s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for row in rules.itertuples():
        lines.append(f"| {row.rule} | {row.jobs} | {row.wall_s:,.0f} | {row.cpu_s:,.0f} | {row.max_rss_mb:,.0f} |")
    span = span_seconds(jobs)
    cpu = jobs["cpu_s"].sum()
    lines += [
        "",
        f"{len(jobs)} jobs from {jobs['start'].min():%Y-%m-%d %H:%M:%S} to {jobs['end'].max():%H:%M:%S} UTC: "
        f"{span:,.0f} s ({span / 3600:.2f} h) of wall time, {cpu:,.0f} CPU-seconds ({cpu / 3600:.2f} CPU-hours).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmarks", type=Path, help="a folder of Snakemake benchmark files, e.g. benchmarks/demo")
    parser.add_argument("--csv", type=Path, help="also write the per-job table here")
    args = parser.parse_args(argv)
    jobs = read_job_times(args.benchmarks)
    if args.csv is not None:
        jobs.to_csv(args.csv, index=False)
    print(markdown(jobs))


if __name__ == "__main__":
    main()
