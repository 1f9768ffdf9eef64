"""Median training step of the demo's diffusion U-Nets at batch 8 and 4, side by side (1 thread).

    python docs/records/2026-12-06-demo-ten-minutes/batch_step_time.py

The demo's fast path (bf16, channels-last, fused AdamW), steps built by
tests/benchmarks/bench_train_step.py; 2 warm-up then 10 timed steps per batch size,
interleaved. A measurement run on demand, not a test.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "benchmarks"))
import bench_train_step as bench  # noqa: E402

torch.set_num_threads(1)
for model in ("structure", "image"):
    net, size, _ = bench.preset("config", model)
    steppers = {batch: bench.make_stepper(net, size, batch, bench.VARIANTS["fast"]) for batch in (8, 4)}
    times = {batch: [] for batch in steppers}
    for i in range(12):
        for batch, step in steppers.items():
            seconds = step()
            if i >= 2:
                times[batch].append(seconds)
    print(model, {batch: round(float(np.median(t)), 4) for batch, t in times.items()})
