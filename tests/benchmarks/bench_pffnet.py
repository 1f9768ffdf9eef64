"""Benchmark of PFF-Net: a training step and whole-image inference, demo and paper size.

Sizes: "demo" is the network of ``config/config.yaml`` (its batch of 64 px patches); "paper" is
``PFFNetConfig()`` (GroupNorm ResNet-101 FPN, the authors' heads) with PFF-Net's batch of one
256 px patch. Real MoNuSeg data (``../shared/data/monuseg`` or ``$NUDIFF_MONUSEG``).

* train: seconds per step of forward (all nine losses) + backward + SGD, as ``train_pffnet``
  runs it, in float32 and under CPU bf16 autocast, stepped alternately (ABAB...) so a load
  change on a shared machine hits both alike; medians and their ratio. Building the targets
  (``instance_targets``) is done once, outside the timing. The FLOPs of one forward +
  backward (``FlopCounterMode``: convolutions and matrix products; the RoI sampling draws
  from torch's RNG, so the count is of one draw) feed the GPU cost estimate in docs/cluster.md.
* infer: one 1000 x 1000 MoNuSeg test image through ``predict_pffnet_instances`` (one pass, as
  PFF-Net's ``tcga_infer.py``): network seconds, post-processing seconds (ranking, pasting,
  overlap removal), detections kept. The paper network is untrained here, so its detection
  count (up to ``detections_per_image``) and thus the mask-head cost are the worst case.

Run on demand (not collected by pytest):

    python tests/benchmarks/bench_pffnet.py [--threads 1] [--sizes demo,paper] [--steps 1+3]
        [--parts train,infer] [--device cpu]

Output: ``benchmarks/bench_pffnet.{md,json,csv}``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

import benchkit
import numpy as np
import torch
from benchkit import median

from nudiff.io.images import read_image
from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.inference import predict_pffnet_instances
from nudiff.segmentation.pffnet.network import PFFNet
from nudiff.segmentation.pffnet.train import PFFNetTraining, instance_targets, sgd_with_bias_groups


def settings(kind: str) -> dict[str, Any]:
    """Network config, patch size and batch of one size."""
    if kind == "demo":
        config = benchkit.demo_config()
        pffnet = config["segmentation"]["pffnet"]
        return {
            "config": PFFNetConfig.from_dict(pffnet["network"]),
            "size": int(config["patches"]["size"]),
            "batch": int(pffnet["training"]["batch_size"]),
        }
    return {"config": PFFNetConfig(), "size": 256, "batch": PFFNetTraining().batch_size}


def bench_train(kind: str, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    spec = settings(kind)
    rgb, inst = benchkit.real_patches(spec["size"], images=1)
    pick = np.argsort([-len(np.unique(i)) for i in inst])[: spec["batch"]]  # the most crowded patches
    x = torch.from_numpy(rgb[pick]).permute(0, 3, 1, 2).float().div(255).to(device)
    targets = [{k: v.to(device) for k, v in instance_targets(i).items()} for i in inst[pick]]
    nets = {mode: PFFNet(spec["config"], seed=0).to(device).train() for mode in ("fp32", "bf16")}
    optimizers = {mode: sgd_with_bias_groups(net, PFFNetTraining()) for mode, net in nets.items()}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    torch.manual_seed(0)
    for k in range(warmup + steps):
        for mode, net in nets.items():
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if mode == "bf16" and device.type == "cpu"
                else contextlib.nullcontext()
            )
            tic = time.perf_counter()
            with autocast:
                loss = sum(net(x, targets).values())
            optimizers[mode].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[mode].step()
            loss.item()  # host sync, as the loop's loss log
            if k >= warmup:
                times[mode].append(time.perf_counter() - tic)
    fp32, bf16 = median(times["fp32"]), median(times["bf16"])
    n_params = sum(p.numel() for p in nets["fp32"].parameters())

    def step() -> None:  # one more fp32 step, counted (no CPU attention here, so the CPU count holds)
        sum(nets["fp32"](x, targets).values()).backward()

    flops = benchkit.count_flops(step)
    return {
        "part": "train",
        "size": kind,
        "params_m": n_params / 1e6,
        "input": f"{spec['batch']} x {spec['size']} px",
        "nuclei": int(sum(len(t["labels"]) for t in targets)),
        "fp32_s": fp32,
        "bf16_s": bf16,
        "ratio": fp32 / bf16,
        "step_gflop": flops / 1e9,
        "steps": steps,
        "maxrss_mib": benchkit.maxrss_mib(),
    }


def bench_infer(kind: str, device: torch.device) -> dict[str, Any]:
    spec = settings(kind)
    path = sorted(benchkit.require_monuseg("test").glob("*.tif"))[0]
    rgb = read_image(path)
    net = PFFNet(spec["config"], seed=0).to(device).eval()
    timing: dict[str, float] = {}
    inst = predict_pffnet_instances(net, rgb, score_threshold=0.0, device=device, timing=timing)
    return {
        "part": "infer",
        "size": kind,
        "input": f"{rgb.shape[0]} x {rgb.shape[1]} px ({path.name})",
        "network_s": timing["network_s"],
        "postprocess_s": timing["postprocess_s"],
        "instances": int(inst.max()),
        "maxrss_mib": benchkit.maxrss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--sizes", default="demo,paper", help="demo, paper or both (default)")
    parser.add_argument("--parts", default="train,infer", help="train, infer or both (default)")
    parser.add_argument("--steps", default="1+3", help="warm-up + timed steps per precision (default 1+3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", type=Path, default=benchkit.OUT_DIR)
    args = parser.parse_args()
    benchkit.set_threads(args.threads)
    warmup, steps = benchkit.parse_steps(args.steps)
    device = torch.device(args.device)
    rows = []
    for kind in args.sizes.split(","):
        if "train" in args.parts:
            rows.append(bench_train(kind, warmup, steps, device))
            print(rows[-1], flush=True)
        if "infer" in args.parts:
            rows.append(bench_infer(kind, device))
            print(rows[-1], flush=True)
    train = [r for r in rows if r["part"] == "train"]
    infer = [r for r in rows if r["part"] == "infer"]
    sections = []
    if train:
        sections.append(
            "### Training step (forward, 9 losses, backward, SGD), medians\n\n"
            + benchkit.md_table(
                train,
                [
                    ("size", "network", ""),
                    ("params_m", "params (M)", ".2f"),
                    ("input", "batch", ""),
                    ("nuclei", "nuclei", "d"),
                    ("fp32_s", "fp32 s/step", ".3f"),
                    ("bf16_s", "bf16 s/step", ".3f"),
                    ("ratio", "fp32 / bf16", ".2f"),
                    ("step_gflop", "GFLOP per step", ".1f"),
                    ("maxrss_mib", "peak RSS (MiB)", ".0f"),
                ],
            )
        )
    if infer:
        sections.append(
            "### Whole-image inference (untrained weights, score threshold 0: every detection)\n\n"
            + benchkit.md_table(
                infer,
                [
                    ("size", "network", ""),
                    ("input", "image", ""),
                    ("network_s", "network s", ".2f"),
                    ("postprocess_s", "post-processing s", ".2f"),
                    ("instances", "instances", "d"),
                    ("maxrss_mib", "peak RSS (MiB)", ".0f"),
                ],
            )
        )
    benchkit.write_report(
        "bench_pffnet",
        title="PFF-Net: training step and whole-image inference",
        sections=sections,
        data={"rows": rows},
        rows=rows,
        threads=args.threads,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
