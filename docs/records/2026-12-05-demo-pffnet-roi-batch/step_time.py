"""Median time of one training step of the demo's PFF-Net at several RoI batch sizes (bf16, 1 thread).

    python docs/records/2026-12-05-demo-pffnet-roi-batch/step_time.py

Batches of 4 random 64 px images, each with 7 disc-shaped nuclei; 5 warm-up steps, then the
median of 20. A benchmark run on demand, side by side in one process: not a test.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import yaml
from skimage.draw import disk

from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.network import PFFNet
from nudiff.segmentation.pffnet.train import instance_targets

REPO = Path(__file__).resolve().parents[3]


def batch(rng: np.random.Generator, size: int = 4) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    targets = []
    for _ in range(size):
        inst = np.zeros((64, 64), np.int32)
        for label in range(1, 8):
            rr, cc = disk(rng.integers(6, 58, 2), rng.integers(3, 9), shape=(64, 64))
            inst[rr, cc] = label
        targets.append(instance_targets(inst))
    return torch.rand(size, 3, 64, 64), targets


def main() -> None:
    torch.set_num_threads(1)
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["segmentation"]["pffnet"]["network"]
    rng = np.random.default_rng(0)
    for rois in (128, 64, 32):
        net = PFFNet(PFFNetConfig.from_dict({**demo, "roi_batch_per_image": rois}), seed=0).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        times = []
        for step in range(25):
            x, targets = batch(rng)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = sum(net(x, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 5:
                times.append(time.perf_counter() - start)
        print(f"roi_batch_per_image {rois:4d}: {np.median(times):.4f} s/step")


if __name__ == "__main__":
    main()
