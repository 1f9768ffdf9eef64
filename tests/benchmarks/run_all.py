"""Run the benchmarks in order and collect their Markdown into ``benchmarks/summary.md``.

    python tests/benchmarks/run_all.py [--threads N] [--quick] [--only bench_foundation,...]

Runs ``bench_foundation``, ``bench_diffusion``, ``bench_segmentation``, ``bench_loader`` (full mode
unless ``--quick``) and then ``gpu_costs`` (which reads the FLOP counts that ``bench_diffusion``
and ``bench_segmentation`` wrote), each in its own process. A script that fails is reported in
the summary and the others still run. The full mode takes a long time on a CPU (paper-size
forward passes take about a minute each on one thread): run it on a quiet machine.
``make benchmarks`` calls this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import benchkit

SCRIPTS = ("bench_foundation", "bench_diffusion", "bench_segmentation", "bench_loader", "gpu_costs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every benchmark (default 2)")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (a smoke test)")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset, run in the usual order")
    parser.add_argument("--out-dir", type=Path, default=benchkit.OUT_DIR)
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    if unknown := sorted(set(chosen) - set(SCRIPTS)):
        raise SystemExit(f"--only: unknown {unknown}; choose from {SCRIPTS}")
    here = Path(__file__).resolve().parent
    parts, failures = [], []
    for name in [s for s in SCRIPTS if s in chosen]:
        cmd = [sys.executable, str(here / f"{name}.py"), "--threads", str(args.threads)]
        if args.out_dir != benchkit.OUT_DIR:
            cmd += ["--out-dir", str(args.out_dir)]
        if args.quick:
            cmd.append("--quick")
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=benchkit.REPO).returncode
        minutes = (time.perf_counter() - start) / 60
        report = args.out_dir / (f"{name}_quick.md" if args.quick and name != "gpu_costs" else f"{name}.md")
        if code != 0:
            failures.append(name)
            parts.append(f"## {name}\n\nFAILED (exit code {code}) after {minutes:.1f} min; see its output.\n")
        elif report.is_file():
            parts.append(report.read_text() + f"\n_{name} took {minutes:.1f} min._\n")
        else:
            parts.append(f"## {name}\n\nNo report at {report}.\n")
    header = (
        f"# nudiff benchmarks\n\nCommand (from the repository root): `{benchkit.command()}`. "
        "Timings are medians on a CPU and are rough on a shared machine; GPU figures are estimates.\n\n"
    )
    out = args.out_dir / "summary.md"
    from nudiff.io.atomic import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(header + "\n".join(parts))
    print(f"wrote {out}" + (f"; failed: {', '.join(failures)}" if failures else ""))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
