"""Benchmark of Hover-Net: training speed and memory, whole-image inference, post-processing, FLOPs.

Sizes: "demo" is the network of ``config/config.yaml`` (same padding, 64x64 patches, batch 8,
inference tiles of 64 with a quarter-tile margin); "paper" is ``HoVerNetConfig()`` (fast mode,
256 -> 164 valid tiles), batch ``--paper-batch`` (default 2).

* train: steps per second of forward + ``hovernet_loss`` + backward + Adam (lr 1e-4) on real
  MoNuSeg patches, and apart from it the CPU seconds per step of the batch (``augment_pair`` +
  ``nuclei_structure`` per sample), as ``train_segmenter`` does. Fresh subprocess per
  configuration, peak RSS reported by the worker itself.
* infer: ``predict_structure`` seconds per 1000x1000 real test image with the config's tiles
  (fresh subprocess, peak RSS), and post-processing (``instances_from_structure``) seconds apart:
  on the untrained network's output and on the exact structure of the image's XML label (what a
  well-trained network would give; watershed time depends on the content). With ``--quick`` the
  paper network runs on a crop of 2x2 tiles and the time is extrapolated to the whole image's
  tile count (stated in the table).
* flops: FLOPs per forward (and forward + backward) at both sizes on the meta device, the tiles
  per 1000x1000 image, and the bytes autograd saves for backward. Written to
  ``benchmarks/flops_segmentation.json`` for ``gpu_costs.py``.

Run on demand (not collected by pytest):

    python tests/benchmarks/bench_segmentation.py [--quick] [--threads N] [--parts train,infer,flops]

``--quick``: demo 1 + 2 training steps, paper 0 + 1 at batch 1, one test image (paper network on
a 2x2-tile crop). Output: ``benchmarks/bench_segmentation[_quick].{md,json,csv}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import benchkit
import numpy as np
import torch
from benchkit import median, timed

PARTS = ("flops", "train", "infer")
IMAGE_SIDE = 1000  # MoNuSeg images are 1000x1000


def settings(kind: str) -> dict[str, Any]:
    """Network, patch size, training batch and inference settings of one size."""
    if kind == "demo":
        config = benchkit.demo_config()
        hovernet = config["segmentation"]["hovernet"]
        inference = hovernet.get("inference", {})
        return {
            "network": hovernet["network"],
            "size": int(config["patches"]["size"]),
            "batch": int(hovernet["training"]["batch_size"]),
            "tile": inference.get("tile") or int(config["patches"]["size"]),
            "margin": inference.get("margin"),
            "infer_batch": int(inference.get("batch_size", 8)),
        }
    size = int(benchkit.schema_defaults("properties", "patches")["size"])
    return {"network": {}, "size": size, "batch": None, "tile": size, "margin": None, "infer_batch": 8}


def tiles_per_image(network: dict[str, Any], tile: int, margin: int | None, side: int = IMAGE_SIDE) -> int:
    from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig
    from nudiff.segmentation.hovernet.inference import tile_geometry

    with torch.device("meta"):
        model = HoVerNet(HoVerNetConfig.from_dict(network))
    _, keep = tile_geometry(model, tile, margin)
    return math.ceil(side / keep) ** 2


# ---- workers -------------------------------------------------------------------------------


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from nudiff.segmentation.augment import augment_pair
    from nudiff.segmentation.hovernet import (
        HoVerNet,
        HoVerNetConfig,
        hovernet_loss,
        structure_to_targets,
    )
    from nudiff.structure import nuclei_structure

    model = HoVerNet(HoVerNetConfig.from_dict(spec["network"]), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))
    rgb, inst = benchkit.real_patches(spec["size"])
    generator = torch.Generator().manual_seed(0)
    rss_built = benchkit.maxrss_mib()

    def draw() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.randint(0, len(rgb), (spec["batch"],), generator=generator).tolist()
        images, structures = [], []
        for i in idx:
            image, labels = augment_pair(rgb[i], inst[i], generator)
            images.append(image)
            structures.append(nuclei_structure(labels))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, structure_to_targets(torch.from_numpy(np.stack(structures)).permute(0, 3, 1, 2))

    data_s, net_s = [], []
    model.train()
    for step in range(spec["warmup"] + spec["steps"]):
        (x, targets), t_data = timed(draw)
        start = time.perf_counter()
        loss = hovernet_loss(model(x), targets)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t_net = time.perf_counter() - start
        if step >= spec["warmup"]:
            data_s.append(t_data)
            net_s.append(t_net)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "rss_after_build_mib": round(rss_built, 1),
        "median_step_seconds": median(net_s),
        "steps_per_second": 1.0 / median(net_s),
        "median_data_seconds": median(data_s),
        "step_seconds": net_s,
    }


def infer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from nudiff.io.images import read_image
    from nudiff.io.monuseg import read_monuseg_xml
    from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig
    from nudiff.segmentation.hovernet.inference import predict_structure, tile_geometry
    from nudiff.structure import instances_from_structure, nuclei_structure

    model = HoVerNet(HoVerNetConfig.from_dict(spec["network"]), generator=torch.Generator().manual_seed(0)).eval()
    _, keep = tile_geometry(model, spec["tile"], spec["margin"])
    rows = []
    for path in sorted(benchkit.require_monuseg("test").glob("*.tif"))[: spec["images"]]:
        rgb = read_image(path)
        label = read_monuseg_xml(path.with_suffix(".xml"), rgb.shape[:2])
        full_tiles = math.ceil(rgb.shape[0] / keep) * math.ceil(rgb.shape[1] / keep)
        crop = rgb if spec["crop_tiles"] is None else rgb[: spec["crop_tiles"] * keep, : spec["crop_tiles"] * keep]
        run_tiles = math.ceil(crop.shape[0] / keep) * math.ceil(crop.shape[1] / keep)
        structure, seconds = timed(
            predict_structure, model, crop, tile=spec["tile"], margin=spec["margin"], batch_size=spec["infer_batch"]
        )
        _, post_net = timed(instances_from_structure, structure)
        _, post_true = timed(instances_from_structure, nuclei_structure(label))
        rows.append(
            {
                "image": path.stem,
                "tiles_run": run_tiles,
                "tiles_per_image": full_tiles,
                "seconds_predict_structure": seconds * full_tiles / run_tiles,
                "seconds_post_untrained_output": post_net,
                "seconds_post_true_structure": post_true,
                "method": "measured" if run_tiles == full_tiles else f"extrapolated from {run_tiles} tiles",
            }
        )
    return {"images": rows}


def worker_main(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    task = {"train": train_worker, "infer": infer_worker}[spec["task"]]
    benchkit.report_worker(task(spec))


# ---- FLOPs (meta device) ---------------------------------------------------------------------


def flops_entry(kind: str) -> dict[str, Any]:
    from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig

    s = settings(kind)
    config = HoVerNetConfig.from_dict(s["network"])
    with torch.device("meta"):
        model = HoVerNet(config)
        x = torch.empty(1, 3, s["size"], s["size"])

    def loss() -> None:
        out = model(x)
        sum(v.float().pow(2).mean() for v in out.values()).backward()

    return {
        "params": sum(p.numel() for p in model.parameters()),
        "size": s["size"],
        "batch": 1,
        "output_size": config.output_size(s["size"]),
        "forward_flops": benchkit.count_flops(lambda: model(x)),
        "forward_backward_flops": benchkit.count_flops(loss),
        "saved_activation_bytes": benchkit.saved_activation_bytes(lambda: model(x)),
        "tile": s["tile"],
        "margin": s["margin"],
        "tiles_per_1000x1000_image": tiles_per_image(s["network"], s["tile"], s["margin"]),
    }


def flops_section(flops: dict[str, Any]) -> str:
    rows = [
        {
            "size": f"{kind} {e['size']}x{e['size']} -> {e['output_size']}",
            "params": e["params"] / 1e6,
            "fwd": e["forward_flops"] / 1e9,
            "fwdbwd": e["forward_backward_flops"] / 1e9,
            "ratio": e["forward_backward_flops"] / e["forward_flops"],
            "tiles": e["tiles_per_1000x1000_image"],
            "image": e["forward_flops"] * e["tiles_per_1000x1000_image"] / 1e12,
            "act": e["saved_activation_bytes"] / benchkit.MIB,
        }
        for kind, e in flops.items()
    ]
    return (
        "### FLOPs of Hover-Net (batch 1)\n\n"
        "`FlopCounterMode` on the meta device (convolutions and matrix products, 2 FLOPs per multiply-add). "
        "Per image: tiles x forward FLOPs. Activations: bytes autograd saves for backward, float32.\n\n"
        + benchkit.md_table(
            rows,
            [
                ("size", "size", ""),
                ("params", "params (M)", ".1f"),
                ("fwd", "forward GFLOP", ",.1f"),
                ("fwdbwd", "fwd+bwd GFLOP", ",.1f"),
                ("ratio", "fwd+bwd / fwd", ".2f"),
                ("tiles", "tiles / 1000x1000", ""),
                ("image", "TFLOP / image", ".2f"),
                ("act", "saved activations (MiB)", ",.0f"),
            ],
        )
    )


# ---- the parent ----------------------------------------------------------------------------


def bench_train(args, script: Path) -> list[dict[str, Any]]:
    rows = []
    for kind in ("demo", "paper"):
        s = settings(kind)
        default = ("1+2" if args.quick else "5+20") if kind == "demo" else ("0+1" if args.quick else "1+3")
        warmup, steps = benchkit.parse_steps(
            (args.demo_train_steps if kind == "demo" else args.paper_train_steps) or default
        )
        batch = s["batch"] if kind == "demo" else (args.paper_batch or (1 if args.quick else 2))
        spec = {
            "task": "train",
            "network": s["network"],
            "size": s["size"],
            "batch": batch,
            "warmup": warmup,
            "steps": steps,
        }
        print(f"  training {kind} ...", flush=True)
        result = benchkit.run_worker(script, spec, args.threads)
        rows.append(
            {
                "size": f"{kind} {s['size']}",
                "batch": batch,
                "timed_steps": steps,
                **result,
                "note": result.get("error", ""),
            }
        )
    return rows


def train_section(rows: list[dict[str, Any]]) -> str:
    return (
        "### Training steps (forward + `hovernet_loss` + backward + Adam)\n\n"
        "Median over the timed steps after warm-up; data seconds (augmentation + `nuclei_structure` of the "
        "batch on the CPU) measured apart. Peak RSS: the worker process's own maximum.\n\n"
        + benchkit.md_table(
            rows,
            [
                ("size", "size", ""),
                ("params", "params", ","),
                ("batch", "batch", ""),
                ("timed_steps", "timed steps", ""),
                ("median_step_seconds", "s / step", ".3f"),
                ("steps_per_second", "steps / s", ".3f"),
                ("median_data_seconds", "data s / step", ".4f"),
                ("peak_rss_mib", "peak RSS (MiB)", ",.0f"),
                ("note", "note", ""),
            ],
        )
    )


def bench_infer(args, script: Path) -> list[dict[str, Any]]:
    rows = []
    n_images = args.images or (1 if args.quick else 2)
    for kind in ("demo", "paper"):
        s = settings(kind)
        spec = {
            "task": "infer",
            "network": s["network"],
            "tile": s["tile"],
            "margin": s["margin"],
            "infer_batch": s["infer_batch"],
            "images": n_images,
            "crop_tiles": 2 if (args.quick and kind == "paper") else None,
        }
        print(f"  inference {kind} ...", flush=True)
        result = benchkit.run_worker(script, spec, args.threads)
        per_image = result.get("images", [])
        rows.append(
            {
                "size": kind,
                "tile": s["tile"],
                "margin": s["margin"],
                "infer_batch": s["infer_batch"],
                "images": len(per_image),
                "tiles_per_image": per_image[0]["tiles_per_image"] if per_image else None,
                **{
                    key: median([r[key] for r in per_image])
                    for key in (
                        "seconds_predict_structure",
                        "seconds_post_untrained_output",
                        "seconds_post_true_structure",
                    )
                },
                "method": per_image[0]["method"] if per_image else result.get("error"),
                "peak_rss_mib": result.get("peak_rss_mib"),
                "per_image": per_image,
            }
        )
    return rows


def infer_section(rows: list[dict[str, Any]]) -> str:
    return (
        "### Inference per 1000x1000 test image\n\n"
        "`predict_structure` with the configuration's tiles (median over images). Post-processing "
        "(`instances_from_structure`, default settings) apart: on the untrained network's output, and on the "
        "exact structure of the XML label (representative of a trained network).\n\n"
        + benchkit.md_table(
            rows,
            [
                ("size", "size", ""),
                ("tile", "tile", ""),
                ("infer_batch", "tiles / pass", ""),
                ("tiles_per_image", "tiles / image", ""),
                ("images", "images", ""),
                ("seconds_predict_structure", "predict_structure s", ",.2f"),
                ("seconds_post_untrained_output", "post s (untrained output)", ".3f"),
                ("seconds_post_true_structure", "post s (true structure)", ".3f"),
                ("peak_rss_mib", "peak RSS (MiB)", ",.0f"),
                ("method", "method", ""),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="a short check that the script works (see the doc)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--demo-train-steps", default=None, help="WARMUP+TIMED at demo size (default 5+20; quick 1+2)")
    parser.add_argument("--paper-train-steps", default=None, help="WARMUP+TIMED at paper size (default 1+3; quick 0+1)")
    parser.add_argument("--paper-batch", type=int, default=None, help="paper-size training batch (default 2; quick 1)")
    parser.add_argument("--images", type=int, default=None, help="test images for inference (default 2; quick 1)")
    parser.add_argument("--out-dir", type=Path, default=benchkit.OUT_DIR)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchkit.set_threads(args.threads)
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        raise SystemExit(f"--parts: unknown {unknown}; choose from {PARTS}")
    logging.basicConfig(level=logging.WARNING)
    script = Path(__file__).resolve()

    flops = {kind: flops_entry(kind) for kind in ("demo", "paper")}
    benchkit.write_json(
        args.out_dir / "flops_segmentation.json",
        {
            "what": "FLOPs (FlopCounterMode, meta device) per batch-1 forward of Hover-Net, tiles per 1000x1000 image",
            "networks": {"hovernet": flops},
        },
    )
    sections, rows, data = [], [], {"flops": flops}
    if "flops" in parts:
        sections.append(flops_section(flops))
    if "train" in parts:
        data["train"] = bench_train(args, script)
        rows += [{"part": "train", **{k: v for k, v in r.items() if k != "step_seconds"}} for r in data["train"]]
        sections.append(train_section(data["train"]))
    if "infer" in parts:
        data["infer"] = bench_infer(args, script)
        rows += [{"part": "infer", **{k: v for k, v in r.items() if k != "per_image"}} for r in data["infer"]]
        sections.append(infer_section(data["infer"]))
    name = "bench_segmentation_quick" if args.quick else "bench_segmentation"
    benchkit.write_report(
        name,
        title="Hover-Net: training, inference, FLOPs",
        sections=sections,
        data=data,
        rows=rows,
        threads=args.threads,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
