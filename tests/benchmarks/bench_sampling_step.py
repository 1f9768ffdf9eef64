"""One guided (image model) or plain (structure model) sampling step, layouts side by side.

A step is one network evaluation of ``nudiff.diffusion.synthesis``'s reverse process at the
preset's sampling batch size: for the image model the doubled batch ``[x, x]`` of
``guided_eps`` (w = 1), for the structure model the plain prediction. The network is built
from the preset's config with random weights (the speed of a step does not depend on them)
and run through the same ``SamplingSettings`` the workflow uses.

Variants (``--variants``, the first is the baseline of the ratios): ``fp32``, ``bf16``
(``cpu_bf16``), ``bf16+cl`` (``cpu_bf16`` + ``channels_last``). Variants are stepped
round-robin, so a load change on a shared machine hits all alike; the table gives the
median seconds per step and the baseline's median over it.

    python tests/benchmarks/bench_sampling_step.py [--threads 1] [--steps 2+8] \
        [--presets config] [--models image,structure] [--variants bf16,bf16+cl]
"""

from __future__ import annotations

import argparse
import statistics
import time

import benchkit
import torch
import yaml

VARIANTS = {
    "fp32": {},
    "bf16": {"cpu_bf16": True},
    "bf16+cl": {"cpu_bf16": True, "channels_last": True},
    "cl": {"channels_last": True},
}


def make_stepper(name: str, model_kind: str, options: dict[str, bool]):
    from nudiff.diffusion import UNet, UNetConfig, guided_eps
    from nudiff.diffusion.synthesis import SamplingSettings, _network_precision, _sampling_layout

    with open(benchkit.REPO / "config" / f"{name}.yaml") as handle:
        config = yaml.safe_load(handle)
    diffusion = config["diffusion"]
    size, batch = int(config["patches"]["size"]), int(diffusion["sampling"]["batch_size"])
    conditional = model_kind == "image"
    net = diffusion[f"{model_kind}_model"]["network"]
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{**net, "condition_channels": 3 if conditional else 0})).eval()
    sampling = SamplingSettings(**options)
    model = _sampling_layout(model, sampling)
    data = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, size, size, generator=data) * 2 - 1
    cond = _sampling_layout(torch.rand(batch, 3, size, size, generator=data) * 2 - 1, sampling)
    t = torch.full((batch,), 500)

    def step() -> float:
        start = time.perf_counter()
        with torch.no_grad(), _network_precision("cpu", sampling):
            xs = _sampling_layout(x, sampling)
            out = guided_eps(model, xs, t, cond, 1.0) if conditional else model(xs, t)
            out.float().contiguous()
        return time.perf_counter() - start

    return step, size, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", default="2+8", help="WARMUP+TIMED steps per variant")
    parser.add_argument("--presets", default="config")
    parser.add_argument("--models", default="image,structure")
    parser.add_argument("--variants", default="bf16,bf16+cl")
    args = parser.parse_args()
    benchkit.set_threads(args.threads)
    warmup, timed = benchkit.parse_steps(args.steps)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    env = benchkit.environment(args.threads)
    print(f"# {benchkit.command()}")
    print(f"# torch {env['torch']}, {env['cpu']}, {args.threads} thread(s), load {env['load_average']}")
    print(f"# {warmup} warm-up + {timed} timed steps per variant, interleaved; ratio = {variants[0]} / variant")
    print(f"{'preset':12s} {'model':10s} {'size':>5s} {'batch':>5s} {'variant':8s} {'median s':>9s} {'ratio':>6s}")
    for name in args.presets.split(","):
        for kind in args.models.split(","):
            steppers = {v: make_stepper(name, kind, VARIANTS[v]) for v in variants}
            times: dict[str, list[float]] = {v: [] for v in variants}
            for i in range(warmup + timed):
                for v in variants:
                    seconds = steppers[v][0]()
                    if i >= warmup:
                        times[v].append(seconds)
            base = statistics.median(times[variants[0]])
            for v in variants:
                _, size, batch = steppers[v]
                med = statistics.median(times[v])
                print(f"{name:12s} {kind:10s} {size:5d} {batch:5d} {v:8s} {med:9.3f} {base / med:6.2f}", flush=True)


if __name__ == "__main__":
    main()
