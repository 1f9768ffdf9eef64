"""Benchmark of the segmenter's batch loader: batches per second with 0, 1, 2... DataLoader workers.

What ``train_segmenter`` does per step, without the network: :class:`StepBatches` builds batch
``k`` (HoVer-Net's augmentations at their defaults: affine warp, flips, blur/noise, colour
jitter; then the nuclei structure of every sample) from real MoNuSeg patches, and
:class:`BatchStream` delivers the batches of steps 1, 2, ... with ``--workers`` processes. The
training process stands in for the GPU: after each batch it sleeps ``--step-seconds`` (default
0.06 s, the estimated GPU step of the paper's Hover-Net at batch 8), which leaves its core free
as a GPU step would. Per configuration, in a fresh subprocess:

* ``wait_s``: median seconds the training process waited for its next batch (0 = GPU fed);
* ``interval_s`` and ``batches_per_s``: median seconds between batches, and timed batches per
  wall-clock second;
* ``cpu_s_per_batch``: CPU seconds of all processes (training process + joined workers) per
  batch, the figure that does not depend on how busy the machine is, and for 0 workers
  ``prep_cpu_s``, the median CPU seconds of building one batch;
* ``workers_to_feed``: ``ceil(prep_cpu_s / step_seconds)``, the workers (one core each) a
  step of ``--step-seconds`` needs.

For comparison, ``--diffusion`` (default ``256x4,256x1``: the paper's structure and image model
batches) measures the CPU seconds of one ``TrainingExamples.draw`` of the diffusion training
(flip/rotation and nuclei structure per sample, no other augmentation), which still runs in the
training process.

Run on demand (not collected by pytest):

    python tests/benchmarks/bench_loader.py [--quick] [--sizes 256x8,128x8] [--workers 0,1,2]
        [--steps 3+30] [--step-seconds 0.06] [--diffusion 256x4,256x1]

Output: ``benchmarks/bench_loader[_quick].{md,json,csv}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any

import benchkit
import numpy as np
from benchkit import median


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"256x8,128x8"`` -> [(256, 8), (128, 8)] (patch size, batch size)."""
    try:
        return [(int(a), int(b)) for a, b in (part.split("x") for part in text.split(",") if part)]
    except ValueError as err:
        raise SystemExit(f"--sizes must look like 256x8,128x8, got {text!r}") from err


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from nudiff.segmentation.batches import BatchStream, StepBatches
    from nudiff.segmentation.hovernet.train import HoVerNetTraining

    cfg = HoVerNetTraining()
    jitter = {k: getattr(cfg, k) for k in ("brightness", "contrast", "saturation", "hue", "affine", "blur_noise")}
    rgb, inst = benchkit.real_patches(spec["size"], images=spec["images"])
    batches = StepBatches(
        rgb, inst, np.arange(len(rgb)), batch_size=spec["batch"], seed=0, augment=cfg.augment, jitter=jitter
    )
    warmup, steps = spec["warmup"], spec["steps"]
    prep_cpu = []
    if spec["workers"] == 0:  # the preparation alone, in this process
        for k in range(1, warmup + steps + 1):
            start = time.process_time()
            batches[k]
            prep_cpu.append(time.process_time() - start)
        prep_cpu = prep_cpu[warmup:]

    cpu0, children0 = time.process_time(), children_cpu()
    waits, arrivals = [], []
    stream = BatchStream(batches, 1, warmup + steps, workers=spec["workers"])
    for k in range(1, warmup + steps + 1):
        start = time.perf_counter()
        batch = next(stream)
        arrivals.append(time.perf_counter())
        waits.append(arrivals[-1] - start)
        assert batch["step"] == k
        time.sleep(spec["step_seconds"])  # the GPU step: this process idles meanwhile
    for _ in stream:  # exhausted: the workers exit and are joined, so their CPU time is counted
        pass
    del stream
    cpu = time.process_time() - cpu0 + children_cpu() - children0
    intervals = np.diff(arrivals[warmup:]) if steps > 1 else np.array([])
    return {
        "patches": len(rgb),
        "wait_s": median(waits[warmup:]),
        "interval_s": median(intervals.tolist()),
        "batches_per_s": (steps - 1) / (arrivals[-1] - arrivals[warmup]) if steps > 1 else float("nan"),
        "cpu_s_per_batch": cpu / (warmup + steps),
        "prep_cpu_s": median(prep_cpu) if prep_cpu else None,
        "waits": waits,
    }


def diffusion_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from nudiff.diffusion.training import TrainingExamples

    rgb, inst = benchkit.real_patches(spec["size"], images=spec["images"])
    examples = TrainingExamples(rgb, inst, augment=True)
    generator = torch.Generator().manual_seed(0)
    cpu = []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.process_time()
        examples.draw(spec["batch"], generator)
        cpu.append(time.process_time() - start)
    return {"patches": len(rgb), "draw_cpu_s": median(cpu[spec["warmup"] :])}


def worker_main(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    task = diffusion_worker if spec.get("task") == "diffusion" else loader_worker
    benchkit.report_worker(task(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process (default 1)")
    parser.add_argument("--quick", action="store_true", help="128x8 only, workers 0 and 1, 1+4 batches")
    parser.add_argument("--sizes", default="256x8,128x8", help="patch size x batch size, comma-separated")
    parser.add_argument("--workers", default="0,1,2", help="loader workers to compare, comma-separated")
    parser.add_argument("--steps", default="3+30", help="warm-up + timed batches (default 3+30)")
    parser.add_argument("--step-seconds", type=float, default=0.06, help="simulated GPU step (default 0.06 s)")
    parser.add_argument("--diffusion", default="256x4,256x1", help="diffusion draws to time ('' = none)")
    parser.add_argument("--images", type=int, default=2, help="MoNuSeg training images cut into patches")
    parser.add_argument("--out-dir", type=Path, default=benchkit.OUT_DIR)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchkit.set_threads(args.threads)
    if args.worker:
        worker_main(json.loads(args.worker))
        return

    sizes, workers = parse_sizes(args.sizes), [int(w) for w in args.workers.split(",") if w]
    warmup, steps = benchkit.parse_steps(args.steps)
    if args.quick:
        sizes, workers, (warmup, steps) = [(128, 8)], [0, 1], (1, 4)
        args.diffusion = "128x4"
    benchkit.require_monuseg("train", "images")
    rows = []
    for size, batch in sizes:
        prep = None
        for n in workers:
            spec = {
                "size": size,
                "batch": batch,
                "workers": n,
                "warmup": warmup,
                "steps": steps,
                "step_seconds": args.step_seconds,
                "images": args.images,
            }
            result = benchkit.run_worker(Path(__file__), spec, args.threads)
            prep = result.get("prep_cpu_s") or prep
            row = {**spec, **{k: v for k, v in result.items() if k != "waits"}}
            row["workers_to_feed"] = math.ceil(prep / args.step_seconds) if prep else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    columns = [
        ("size", "patch px", ""),
        ("batch", "batch", ""),
        ("workers", "workers", ""),
        ("wait_s", "median wait (s)", ".3f"),
        ("interval_s", "median interval (s)", ".3f"),
        ("batches_per_s", "batches/s", ".2f"),
        ("cpu_s_per_batch", "CPU s/batch (all processes)", ".3f"),
        ("prep_cpu_s", "prep CPU s/batch (median, 0 workers)", ".3f"),
        ("workers_to_feed", f"workers for a {args.step_seconds} s step", ""),
        ("peak_rss_mib", "peak RSS MiB (training process)", ".0f"),
    ]
    diffusion = []
    for size, batch in parse_sizes(args.diffusion):
        spec = {"task": "diffusion", "size": size, "batch": batch, "warmup": warmup, "steps": steps}
        result = benchkit.run_worker(Path(__file__), {**spec, "images": args.images}, args.threads)
        diffusion.append({**spec, **result})
        print(json.dumps(diffusion[-1]), flush=True)
    diffusion_table = benchkit.md_table(
        diffusion,
        [
            ("size", "patch px", ""),
            ("batch", "batch", ""),
            ("draw_cpu_s", "CPU s per TrainingExamples.draw (median)", ".4f"),
        ],
    )
    note = (
        f"{warmup} warm-up + {steps} timed batches per row, real MoNuSeg patches ({args.images} training "
        f"image(s), non-overlapping), HoVer-Net's default augmentations; the training process sleeps "
        f"{args.step_seconds} s per batch in place of the GPU step. Wall-clock figures depend on the "
        "machine's load (stated above); CPU seconds do not."
    )
    benchkit.write_report(
        "bench_loader" + ("_quick" if args.quick else ""),
        title="Segmenter batch loader: DataLoader workers",
        sections=[
            note,
            benchkit.md_table(rows, columns),
            "Diffusion training batches (built in the training process):",
            diffusion_table,
        ],
        data={"rows": rows, "diffusion": diffusion},
        rows=rows,
        threads=args.threads,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
