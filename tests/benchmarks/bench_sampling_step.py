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
    benchkit.compare_variants(
        __doc__.split("\n")[0],
        VARIANTS,
        make_stepper,
        presets="config",
        models="image,structure",
        variants="bf16,bf16+cl",
        steps="2+8",
    )


if __name__ == "__main__":
    main()
