"""Shared plumbing of the on-demand benchmarks in this folder (not a pytest module).

Every ``bench_*.py`` script imports this (it runs as ``python tests/benchmarks/<script>.py``,
so this folder is on ``sys.path``). It provides: where the real data and the outputs live,
the exact command of a run, timing helpers (medians), fresh worker subprocesses that report
their own peak memory, FLOP and saved-activation counting, and writing a report as
Markdown + JSON + CSV under ``benchmarks/`` (git-ignored).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "benchmarks"
MONUSEG = Path(os.environ.get("NUDIFF_MONUSEG", REPO.parent / "shared" / "data" / "monuseg"))
RESULT_PREFIX = "BENCH_RESULT "
MIB = 2**20
GIB = 2**30


# ---- the run -------------------------------------------------------------------


def command() -> str:
    """The command line of this run, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_arg = str(script.relative_to(REPO))
    except ValueError:
        script_arg = str(script)
    return "python " + shlex.join([script_arg, *sys.argv[1:]])


def set_threads(threads: int) -> None:
    """Torch (and OpenMP/BLAS in worker subprocesses) use ``threads`` threads."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)


def environment(threads: int) -> dict[str, Any]:
    """What the numbers depend on: versions, CPU, threads, load at the time."""
    import numpy
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average": os.getloadavg(),
        "mem_available_gib": round(mem_available() / GIB, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def mem_available() -> int:
    """Bytes of memory available to a new process (``MemAvailable`` of /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def require_monuseg(*parts: str) -> Path:
    """The real MoNuSeg folder ``MONUSEG/parts``; exits with a clear message when missing."""
    path = MONUSEG.joinpath(*parts)
    if not path.is_dir():
        raise SystemExit(f"real MoNuSeg data not found at {path} (set NUDIFF_MONUSEG to its folder)")
    return path


def parse_steps(text: str) -> tuple[int, int]:
    """``"5+20"`` -> (5 warm-up steps, 20 timed steps)."""
    try:
        warmup, timed = (int(part) for part in text.split("+"))
    except ValueError as err:
        raise SystemExit(f"steps must look like WARMUP+TIMED (e.g. 5+20), got {text!r}") from err
    if warmup < 0 or timed < 1:
        raise SystemExit(f"steps {text!r}: need warm-up >= 0 and timed >= 1")
    return warmup, timed


# ---- timing ----------------------------------------------------------------------


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def maxrss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- worker subprocesses ----------------------------------------------------------


def run_worker(script: Path, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter: ``script --worker SPEC --threads N``.

    The worker prints one line ``BENCH_RESULT {json}`` (see :func:`report_worker`), which
    includes its own peak RSS, so configurations never share a process or a memory peak.
    Its log and errors go to this process's stderr.
    """
    cmd = [sys.executable, str(script), "--worker", json.dumps(spec), "--threads", str(threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"error": f"worker exited with {proc.returncode}", "spec": spec}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def report_worker(result: dict[str, Any]) -> None:
    """Print a worker's result for :func:`run_worker`, with its peak RSS added."""
    result = {**result, "peak_rss_mib": round(maxrss_mib(), 1)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- counting ------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` by ``torch.utils.flop_counter.FlopCounterMode``.

    It counts matrix products, convolutions and attention (2 FLOPs per multiply-add) and
    nothing else (norms, activations, additions). Run it on the meta device: on the CPU,
    torch 2.x dispatches ``scaled_dot_product_attention`` to a kernel the counter has no
    formula for, and the attention FLOPs come out as 0 (checked on torch 2.14).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def saved_activation_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn()`` runs.

    That is the activation memory of a training step's forward pass (on top of weights,
    gradients and optimiser state). Storages saved twice are counted once. Works on the
    meta device (nothing is allocated), so paper-size networks can be measured anywhere.
    """
    import torch

    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


# ---- reports -------------------------------------------------------------------------


def fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Markdown table of ``rows``; ``columns`` are ``(key, header, format spec)``."""
    head = "| " + " | ".join(header for _, header, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(key), spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_report(
    name: str,
    *,
    title: str,
    sections: Sequence[str],
    data: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    threads: int,
    out_dir: Path = OUT_DIR,
) -> str:
    """Print and write ``name``.md (Markdown), ``name``.json (everything) and ``name``.csv.

    The Markdown starts with the exact command and the environment, so a table never
    travels without how it was made. Returns the Markdown.
    """
    from nudiff.io.atomic import atomic_path

    env = environment(threads)
    cmd = command()
    header = [
        f"## {title}",
        "",
        f"Command (from the repository root): `{cmd}`  ",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {threads} torch thread(s), load average "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])}; "
        + (f"GPU {env['gpu']}; " if env["gpu"] else "")
        + f"torch {env['torch']}; {env['date_utc']}.",
        "",
    ]
    markdown = "\n".join(header) + "\n" + "\n\n".join(sections) + "\n"
    print(markdown, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text(markdown)
    with atomic_path(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps({"command": cmd, "environment": env, **data}, indent=2, default=str))
    if rows:
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            tmp.write_text(buffer.getvalue())
    print(f"wrote {out_dir / name}.md, .json" + (", .csv" if rows else ""), file=sys.stderr)
    return markdown


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` (plus the command and environment) as JSON, atomically."""
    from nudiff.io.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"command": command(), **data}, indent=2, default=str))


# ---- settings and data ------------------------------------------------------------------


def demo_config() -> dict[str, Any]:
    """``config/config.yaml``: the demo sizes."""
    import yaml

    with open(REPO / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


def schema_defaults(*path: str) -> dict[str, Any]:
    """Defaults of the properties of one object in ``config/schema.yaml`` (the paper sizes).

    ``path`` walks the schema, e.g. ``("$defs", "unet")`` or ``("properties", "patches")``.
    """
    import yaml

    with open(REPO / "config" / "schema.yaml") as handle:
        node = yaml.safe_load(handle)
    for key in path:
        node = node[key]
    return {k: v["default"] for k, v in node["properties"].items() if isinstance(v, dict) and "default" in v}


def real_patches(size: int, *, images: int = 1) -> tuple[Any, Any]:
    """Non-overlapping ``size`` patches of the first MoNuSeg training image(s).

    Returns ``(rgb (N, S, S, 3) uint8, inst (N, S, S) int32)``.
    """
    import numpy as np

    from nudiff.io.images import read_image, read_instance_map
    from nudiff.patches import patch_grid

    image_dir = require_monuseg("train", "images")
    rgbs, insts = [], []
    for path in sorted(image_dir.glob("*.tif"))[:images]:
        rgb = read_image(path)
        inst = read_instance_map(path.parent.parent / "labels" / path.name)
        for y, x in patch_grid(*inst.shape, size, size):
            rgbs.append(rgb[y : y + size, x : x + size])
            insts.append(inst[y : y + size, x : x + size])
    return np.stack(rgbs), np.stack(insts)


# ---- variants of one step, side by side -------------------------------------------

StepMaker = Callable[[str, str, dict[str, Any]], tuple[Callable[[], float], int, int]]


def compare_variants(
    description: str,
    known: dict[str, dict[str, Any]],
    make_stepper: StepMaker,
    *,
    presets: str,
    models: str,
    variants: str,
    steps: str,
) -> None:
    """The command line and table shared by the step benchmarks (``bench_train_step.py``,
    ``bench_sampling_step.py``).

    ``make_stepper(preset, model, options)`` returns ``(step, size, batch)``, where ``step()``
    runs one step and returns its seconds. All variants of one (preset, model) are built
    first, then stepped round-robin, so a load change on a shared machine hits every variant
    alike; the table gives each variant's median seconds per step and the first variant's
    median over it.
    """
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", default=steps, help="WARMUP+TIMED steps per variant")
    parser.add_argument("--presets", default=presets)
    parser.add_argument("--models", default=models)
    parser.add_argument("--variants", default=variants)
    args = parser.parse_args()
    set_threads(args.threads)
    warmup, timed_steps = parse_steps(args.steps)
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(known)}")
    env = environment(args.threads)
    print(f"# {command()}")
    print(f"# torch {env['torch']}, {env['cpu']}, {args.threads} thread(s), load {env['load_average']}")
    print(f"# {warmup} warm-up + {timed_steps} timed steps per variant, interleaved; ratio = {chosen[0]} / variant")
    print(f"{'preset':12s} {'model':10s} {'size':>5s} {'batch':>5s} {'variant':8s} {'median s':>9s} {'ratio':>6s}")
    for name in args.presets.split(","):
        for model in args.models.split(","):
            steppers = {v: make_stepper(name, model, known[v]) for v in chosen}
            times: dict[str, list[float]] = {v: [] for v in chosen}
            for i in range(warmup + timed_steps):
                for v in chosen:
                    seconds = steppers[v][0]()
                    if i >= warmup:
                        times[v].append(seconds)
            base = statistics.median(times[chosen[0]])
            for v in chosen:
                _, size, batch = steppers[v]
                med = statistics.median(times[v])
                print(f"{name:12s} {model:10s} {size:5d} {batch:5d} {v:8s} {med:9.3f} {base / med:6.2f}", flush=True)
