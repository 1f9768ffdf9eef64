"""One diffusion training step, plain float32 against the fast path, side by side.

A step is what ``nudiff.training.loop.run_training`` does per iteration: ``l_simple`` forward
(under autocast when asked), zero_grad, backward, the loss's host sync, gradient clipping
(1.0), AdamW and the EMA update (warm-up EMA, as the presets train). Models, optimisers and
layouts are built by the training code itself (``prepare_for_training``, ``make_optimizer``,
``make_ema``). The batch is a fixed random one of the preset's batch size and patch size:
drawing it (flips + ``nuclei_structure``) costs the same on both paths and is left out.

Variants (``--variants``, the first is the baseline of the ratios):

* ``fp32``: the reference (contiguous float32, foreach AdamW).
* ``bf16``: ``cpu_bf16`` only (bf16 autocast on the CPU).
* ``cl``: ``channels_last`` only; ``fused``: ``fused_adamw`` only.
* ``fast``: ``cpu_bf16`` + ``channels_last`` + ``fused_adamw``.
* ``compile`` / ``compile+bf16``: the network under ``torch.compile`` (inductor, default
  mode), without / with ``cpu_bf16``; not a training option: measured to see whether it
  would be one (its compile time, tens of seconds, is in the warm-up and not timed).

All variants of one network are built first (same seed), then stepped round-robin
(ABAB...), so a load change on a shared machine hits every variant alike; the table gives
each variant's median seconds per step and the baseline's median over it.

    python tests/benchmarks/bench_train_step.py [--threads 1] [--steps 3+15] \
        [--presets config,monuseg-cpu] [--models structure,image] [--variants fp32,fast]

CPU only: on CUDA the loop always autocasts to bf16, and these options are unmeasured there.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import benchkit
import torch
import yaml

VARIANTS = {
    "fp32": {},
    "bf16": {"cpu_bf16": True},
    "cl": {"channels_last": True},
    "fused": {"fused_adamw": True},
    "bf16+cl": {"cpu_bf16": True, "channels_last": True},
    "fast": {"cpu_bf16": True, "channels_last": True, "fused_adamw": True},
    "compile": {"compile": True},
    "compile+bf16": {"compile": True, "cpu_bf16": True},
}


def preset(name: str, model: str) -> tuple[dict[str, Any], int, int]:
    """(network, patch size, batch size) of ``config/<name>.yaml``'s structure or image model."""
    with open(benchkit.REPO / "config" / f"{name}.yaml") as handle:
        config = yaml.safe_load(handle)
    diffusion = config["diffusion"]
    if model == "structure":
        net, training = diffusion["structure_model"]["network"], diffusion["structure_model"]["training"]
    else:
        net, training = diffusion["image_model"]["network"], diffusion["image_model"]["conditional"]
    net = {**net, "condition_channels": 3 if model == "image" else 0}
    return net, int(config["patches"]["size"]), int(training["batch_size"])


def make_stepper(net: dict[str, Any], size: int, batch: int, options: dict[str, bool]):
    from nudiff.diffusion import UNet, UNetConfig, l_simple, linear_schedule
    from nudiff.diffusion.training import DiffusionTraining, make_optimizer, prepare_for_training, to_layout
    from nudiff.training.loop import make_ema

    options = dict(options)
    compiled = options.pop("compile", False)
    training = DiffusionTraining(lr=2e-3, weight_decay=0.0, ema_decay=0.995, batch_size=batch, **options)
    torch.manual_seed(0)
    model = UNet(UNetConfig(**net))
    prepare_for_training(model, training, "cpu")
    model.train()
    optimizer = make_optimizer(model, training)
    ema = make_ema(model, training.ema_decay, warmup=training.ema_warmup)
    network = torch.compile(model) if compiled else model
    schedule = linear_schedule()
    data = torch.Generator().manual_seed(1)
    x0 = to_layout(torch.rand(batch, 3, size, size, generator=data) * 2 - 1, "cpu", training)
    cond = to_layout(torch.rand(batch, 3, size, size, generator=data) * 2 - 1, "cpu", training)
    generator = torch.Generator().manual_seed(0)
    conditional = net["condition_channels"] > 0

    def step() -> float:
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if training.cpu_bf16 else contextlib.nullcontext()
        with autocast:
            loss = l_simple(network, x0, schedule, generator=generator, cond=cond if conditional else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        optimizer.step()
        ema.update_parameters(model)
        return time.perf_counter() - start

    return step


def make_preset_stepper(name: str, model: str, options: dict[str, Any]):
    net, size, batch = preset(name, model)
    return make_stepper(net, size, batch, options), size, batch


def main() -> None:
    benchkit.compare_variants(
        __doc__.split("\n")[0],
        VARIANTS,
        make_preset_stepper,
        presets="config,monuseg-cpu",
        models="structure,image",
        variants="fp32,fast",
        steps="3+15",
    )


if __name__ == "__main__":
    main()
