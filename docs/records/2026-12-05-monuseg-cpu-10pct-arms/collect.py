"""Copy one block's evidence from its working directory into this record, and pool the blocks.

    python docs/records/2026-12-05-monuseg-cpu-10pct-arms/collect.py <block workdir> <block name>
    python docs/records/2026-12-05-monuseg-cpu-10pct-arms/collect.py --pool

A block is one run of ``snakemake --cores 2 --directory <workdir> --configfile
config/monuseg-cpu.yaml [config/overlays/monuseg-cpu-block<k>.yaml]``: one generator, every arm,
2 segmenter seeds. ``--pool`` pools every block folder here with the block as the unit
(``nudiff.arm_comparison.pool_blocks``) into ``pooled.csv``.
"""

from __future__ import annotations

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


def collect(workdir: Path, name: str) -> None:
    from nudiff.job_times import markdown, read_job_times

    out = HERE / name
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
    # no machine paths in the record: the block's folder becomes <block>
    for path in (out / "hold_out_validation.log", out / "provenance.json"):
        if path.is_file():
            path.write_text(path.read_text().replace(f"{workdir.resolve()}/", "<block>/"))
    jobs = read_job_times(workdir / "benchmarks")
    jobs.to_csv(out / "job_times.csv", index=False)
    (out / "job_times.md").write_text(markdown(jobs))


def pool() -> None:
    from nudiff.arm_comparison import write_pooled

    blocks = {p.name: p / "metrics.csv" for p in sorted(HERE.glob("block*")) if (p / "metrics.csv").is_file()}
    table = write_pooled(blocks, COMPARISONS, HERE / "pooled.csv")
    print(table.to_string(index=False))


if __name__ == "__main__":
    if sys.argv[1:] == ["--pool"]:
        pool()
    else:
        collect(Path(sys.argv[1]), sys.argv[2])
