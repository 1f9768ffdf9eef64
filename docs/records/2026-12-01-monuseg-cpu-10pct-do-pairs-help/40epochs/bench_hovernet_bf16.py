"""One Hover-Net training step of config/monuseg-cpu.yaml's network, float32 against CPU bf16
autocast, alternated (ABAB...) in one run; batch of 8 at 128 px, one thread, medians.

    python docs/records/2026-12-01-monuseg-cpu-10pct-do-pairs-help/40epochs/bench_hovernet_bf16.py

Gave, on a 2-core AMD EPYC with AVX512-BF16, idle: fp32 1.061 s, bf16 0.659 s, ratio 1.61.
"""

import statistics
import time

import torch
import yaml

from nudiff.segmentation.hovernet import HoVerNet
from nudiff.segmentation.hovernet_config import HoVerNetConfig
from nudiff.segmentation.losses import hovernet_loss, structure_to_targets

torch.set_num_threads(1)
network = yaml.safe_load(open("config/monuseg-cpu.yaml"))["segmentation"]["hovernet"]["network"]
torch.manual_seed(0)
model = HoVerNet(HoVerNetConfig.from_dict(network))
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
x = torch.rand(8, 3, 128, 128)
structure = torch.zeros(8, 3, 128, 128)
structure[:, 0, 32:64, 32:64] = 1  # one square nucleus per patch


def step(bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = hovernet_loss(model(x), structure_to_targets(structure))[0]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


times = {False: [], True: []}
for bf16 in (False, True):
    step(bf16)  # warm-up
for _ in range(5):
    for bf16 in (False, True):
        tic = time.perf_counter()
        for _ in range(3):
            step(bf16)
        times[bf16].append((time.perf_counter() - tic) / 3)
fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
print(f"fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, ratio {fp32 / bf16:.2f}")
