"""Benchmark of the two diffusion U-Nets: training speed and memory, sampling cost, FLOPs.

Sizes: "demo" is ``config/config.yaml`` (its networks, 64x64 patches, batch 8); "paper" is the
schema defaults (channels 256..1024, 256x256), timed at batch ``--paper-batch`` (default 1).

* train: steps per second of forward + backward + AdamW (lr 1e-4, weight decay 0.05, gradient
  clipping 1.0) + EMA update, with ``l_simple`` on real MoNuSeg patches, with gradient
  checkpointing off and/or on (``--checkpointing``), and the seconds per step the CPU spends
  drawing the batch (``TrainingExamples.draw``: flips + ``nuclei_structure``), measured apart.
  Each configuration runs in a fresh subprocess that reports its own peak RSS. Training needs
  ~20 bytes per parameter (weights, gradients, AdamW's two moments, EMA) plus the saved
  activations (see flops); with ``--paper-train auto`` a paper-size configuration is skipped
  when that much memory is not available.
* sample: network evaluations and seconds per sample of DDPM-1000, respaced DDPM-100, DDIM-50 and
  DPM-Solver++-20 with the same model, batch and size (untrained weights: the cost does not
  depend on them), with and without classifier-free guidance (w = 2 doubles the batch of every
  evaluation) for the image model. Demo size: real ``sample`` runs, interleaved across repeats.
  Paper size (and any sampler above ``--max-real-evals``): a few network evaluations are timed
  and the time is extrapolated by the evaluation count (stated in the table).
* flops: FLOPs per forward pass (and forward + backward) of each network at both sizes with
  ``FlopCounterMode`` on the meta device, and the bytes autograd saves for backward
  (activations), without and with gradient checkpointing (estimated, see
  ``checkpointed_activation_bytes``). Written to ``benchmarks/flops_diffusion.json`` for
  ``gpu_costs.py``.

Run on demand (not collected by pytest):

    python tests/benchmarks/bench_diffusion.py [--quick] [--threads N] [--parts train,sample,flops]

``--quick`` (a check that it works): demo training 1 + 2 steps, no paper-size training, demo
sampling at batch 2 with DDPM-1000 extrapolated, paper sampling 1 evaluation of the structure
model. Output: ``benchmarks/bench_diffusion[_quick].{md,json,csv}`` and ``flops_diffusion.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import benchkit
import torch
from benchkit import median, timed
from sampling_costs import (
    GUIDANCE,
    SAMPLERS,
    sample_section,
    sample_worker,
    summarise_sampling,
)

PARTS = ("flops", "train", "sample")
MODELS = ("structure", "image")


def network(size_kind: str, model: str) -> dict[str, Any]:
    """UNetConfig fields of one network: demo from config.yaml, paper from the schema."""
    if size_kind == "demo":
        diffusion = benchkit.demo_config()["diffusion"]
        net = dict(diffusion["structure_model" if model == "structure" else "image_model"]["network"])
    else:
        net = benchkit.schema_defaults("$defs", "unet")
    return {**net, "condition_channels": 3 if model == "image" else 0}


def patch_size(size_kind: str) -> int:
    if size_kind == "demo":
        return int(benchkit.demo_config()["patches"]["size"])
    return int(benchkit.schema_defaults("properties", "patches")["size"])


def demo_train_batch(model: str) -> int:
    diffusion = benchkit.demo_config()["diffusion"]
    training = (
        diffusion["structure_model"]["training"] if model == "structure" else diffusion["image_model"]["conditional"]
    )
    return int(training["batch_size"])


# ---- workers (each in a fresh process) --------------------------------------------------


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from nudiff.diffusion import (
        UNet,
        UNetConfig,
        count_parameters,
        l_simple,
        linear_schedule,
    )
    from nudiff.diffusion.training import TrainingExamples
    from nudiff.training.loop import make_ema

    torch.manual_seed(0)
    model = UNet(UNetConfig(**spec["network"])).train().set_gradient_checkpointing(spec["checkpointing"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    ema = make_ema(model, 0.9999)
    rgb, inst = benchkit.real_patches(spec["size"])
    examples = TrainingExamples(rgb, inst, augment=True)
    schedule = linear_schedule()
    generator = torch.Generator().manual_seed(0)
    rss_built = benchkit.maxrss_mib()
    data_s, net_s = [], []
    for step in range(spec["warmup"] + spec["steps"]):
        (images, structures), t_data = timed(examples.draw, spec["batch"], generator)
        start = time.perf_counter()
        if spec["model"] == "structure":
            loss = l_simple(model, structures, schedule, generator=generator)
        else:
            loss = l_simple(model, images, schedule, generator=generator, cond=structures)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update_parameters(model)
        t_net = time.perf_counter() - start
        if step >= spec["warmup"]:
            data_s.append(t_data)
            net_s.append(t_net)
    return {
        "params": count_parameters(model),
        "rss_after_build_mib": round(rss_built, 1),
        "median_step_seconds": median(net_s),
        "steps_per_second": 1.0 / median(net_s),
        "median_data_seconds": median(data_s),
        "step_seconds": net_s,
    }


def worker_main(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    task = {"train": train_worker, "sample": sample_worker}[spec["task"]]
    benchkit.report_worker(task(spec))


# ---- FLOPs (meta device, in this process) ------------------------------------------------


def checkpointed_activation_bytes(model, run) -> int:
    """Activation bytes of ``run()`` (a forward of ``model``) if the U-Net checkpointed its blocks.

    An estimate from one plain forward (works on the meta device): with
    ``UNet.set_gradient_checkpointing`` autograd keeps the tensors saved outside the blocks
    (time embedding, head) and each block's inputs (for the recomputation); a block's own
    saved tensors exist only while backward recomputes that block, so the largest of them
    is added once. Storages are counted once.
    """
    kept: dict[int, int] = {}  # storage -> bytes, so a tensor saved twice counts once
    per_block: list[int] = []

    def note(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        kept[storage._cdata] = storage.nbytes()
        return tensor

    def counting(forward):
        def wrapper(*args):
            for arg in args:
                if isinstance(arg, torch.Tensor):
                    note(arg)
            # the innermost saved-tensor hooks win: inside a block only the block's own count
            out = []
            per_block.append(benchkit.saved_activation_bytes(lambda: out.append(forward(*args))))
            return out[0]

        return wrapper

    blocks = [*model.encoder, model.middle, *model.decoder]
    for block in blocks:
        block.forward = counting(block.forward)
    try:
        with torch.autograd.graph.saved_tensors_hooks(note, lambda tensor: tensor):
            run()
    finally:
        for block in blocks:
            del block.forward  # back to the class's method
    return sum(kept.values()) + max(per_block)


def flops_entry(net: dict[str, Any], size: int) -> dict[str, Any]:
    from nudiff.diffusion import UNet, UNetConfig, count_parameters, guided_eps

    with torch.device("meta"):
        model = UNet(UNetConfig(**net))
        x = torch.empty(1, 3, size, size)
        t = torch.zeros(1, dtype=torch.long)
        cond = torch.empty(1, 3, size, size) if net["condition_channels"] else None
    forward = benchkit.count_flops(lambda: model(x, t, cond))
    both = benchkit.count_flops(lambda: model(x, t, cond).pow(2).mean().backward())
    entry = {
        "params": count_parameters(model),
        "size": size,
        "batch": 1,
        "forward_flops": forward,
        "forward_backward_flops": both,
        "saved_activation_bytes": benchkit.saved_activation_bytes(lambda: model(x, t, cond)),
        "saved_activation_bytes_checkpointed": checkpointed_activation_bytes(model, lambda: model(x, t, cond)),
    }
    if cond is not None:
        with torch.no_grad():
            entry["guided_eval_flops"] = benchkit.count_flops(lambda: guided_eps(model, x, t, cond, GUIDANCE))
    return entry


def bench_flops() -> dict[str, Any]:
    return {
        model: {kind: flops_entry(network(kind, model), patch_size(kind)) for kind in ("demo", "paper")}
        for model in MODELS
    }


def flops_section(flops: dict[str, Any]) -> str:
    rows = []
    for model, by_size in flops.items():
        for kind, e in by_size.items():
            rows.append(
                {
                    "net": model,
                    "size": f"{kind} {e['size']}x{e['size']}",
                    "params": e["params"] / 1e6,
                    "fwd": e["forward_flops"] / 1e9,
                    "fwdbwd": e["forward_backward_flops"] / 1e9,
                    "ratio": e["forward_backward_flops"] / e["forward_flops"],
                    "guided": e.get("guided_eval_flops", 0) / 1e9 or None,
                    "act": e["saved_activation_bytes"] / benchkit.MIB,
                    "act_ckpt": e["saved_activation_bytes_checkpointed"] / benchkit.MIB,
                }
            )
    return (
        "### FLOPs per network evaluation (batch 1)\n\n"
        "`FlopCounterMode` on the meta device: convolutions, matrix products and attention, 2 FLOPs per "
        "multiply-add; norms and element-wise ops are not counted. Activations: bytes autograd saves for "
        "backward in one float32 forward pass; with gradient checkpointing, the estimate of "
        "`checkpointed_activation_bytes` (block inputs + what is saved outside the blocks + the largest "
        "block's own activations).\n\n"
        + benchkit.md_table(
            rows,
            [
                ("net", "network", ""),
                ("size", "size", ""),
                ("params", "params (M)", ".1f"),
                ("fwd", "forward GFLOP", ",.1f"),
                ("fwdbwd", "fwd+bwd GFLOP", ",.1f"),
                ("ratio", "fwd+bwd / fwd", ".2f"),
                ("guided", "guided eval (w=2) GFLOP", ",.1f"),
                ("act", "saved activations (MiB)", ",.0f"),
                ("act_ckpt", "with checkpointing (MiB)", ",.0f"),
            ],
        )
    )


# ---- the parent --------------------------------------------------------------------------


def paper_train_fits(flops: dict[str, Any], model: str, batch: int, checkpointing: bool) -> tuple[bool, str]:
    entry = flops[model]["paper"]
    act = entry["saved_activation_bytes_checkpointed" if checkpointing else "saved_activation_bytes"]
    # weights, gradients, AdamW's two moments and the EMA copy: 5 float32 per parameter
    need = 20 * entry["params"] + batch * act + 1.5 * benchkit.GIB
    available = benchkit.mem_available()
    note = f"needs ~{need / benchkit.GIB:.1f} GiB, {available / benchkit.GIB:.1f} GiB available"
    return need < available, note  # need has a 1.5 GiB margin for Python, torch and the batch


def bench_train(args, flops: dict[str, Any], script: Path) -> list[dict[str, Any]]:
    demo_steps = benchkit.parse_steps(args.demo_train_steps or ("1+2" if args.quick else "5+20"))
    paper_steps = benchkit.parse_steps(args.paper_train_steps)
    paper_train = args.paper_train or ("no" if args.quick else "auto")
    settings = {"off": False, "on": True}
    checkpointing = [c for c in args.checkpointing.split(",") if c]
    if unknown := sorted(set(checkpointing) - set(settings)):
        raise SystemExit(f"--checkpointing: unknown {unknown}; choose from off,on")
    rows = []
    for kind, model, ckpt in itertools.product(("demo", "paper"), MODELS, checkpointing):
        batch = demo_train_batch(model) if kind == "demo" else args.paper_batch
        warmup, steps = demo_steps if kind == "demo" else paper_steps
        row = {
            "size": f"{kind} {patch_size(kind)}",
            "model": model,
            "checkpointing": ckpt,
            "batch": batch,
            "timed_steps": steps,
        }
        if kind == "paper" and model not in args.paper_train_models.split(","):
            rows.append({**row, "note": "not run (--paper-train-models)"})
            continue
        if kind == "paper" and paper_train != "yes":
            fits, note = paper_train_fits(flops, model, batch, settings[ckpt])
            if paper_train == "no" or not fits:
                rows.append({**row, "note": f"skipped (--paper-train {paper_train}; {note})"})
                continue
        spec = {
            "task": "train",
            "model": model,
            "network": network(kind, model),
            "checkpointing": settings[ckpt],
            "size": patch_size(kind),
            "batch": batch,
            "warmup": warmup,
            "steps": steps,
        }
        print(f"  training {kind} {model} (gradient checkpointing {ckpt}) ...", flush=True)
        result = benchkit.run_worker(script, spec, args.threads)
        rows.append({**row, **result, "note": result.get("error", "")})
    return rows


def train_section(rows: list[dict[str, Any]]) -> str:
    return (
        "### Training steps (forward + backward + AdamW + EMA, `l_simple`)\n\n"
        "Network seconds per step are the median over the timed steps (after warm-up); data seconds are "
        "the CPU's batch drawing (flips + `nuclei_structure` per sample), measured apart. Peak RSS is the "
        "worker process's own maximum (Python + torch included).\n\n"
        + benchkit.md_table(
            rows,
            [
                ("size", "size", ""),
                ("model", "model", ""),
                ("checkpointing", "grad. checkpointing", ""),
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


def sample_specs(args) -> list[dict[str, Any]]:
    specs = []
    demo_batch = args.sample_batch or (2 if args.quick else 8)
    max_real = args.max_real_evals if args.max_real_evals is not None else (100 if args.quick else None)
    for model in MODELS:
        specs.append(
            {
                "task": "sample",
                "kind": "demo",
                "model": model,
                "network": network("demo", model),
                "size": patch_size("demo"),
                "batch": demo_batch,
                "samplers": SAMPLERS,
                "guidance": [0.0, GUIDANCE],
                "repeats": args.sample_repeats,
                "max_real_evals": max_real,
                "evals": 10,
                "warmup_evals": 1,
            }
        )
    paper_models = args.paper_sample_models or ("structure" if args.quick else ",".join(MODELS))
    for model in [m for m in paper_models.split(",") if m and m != "none"]:
        specs.append(
            {
                "task": "sample",
                "kind": "paper",
                "model": model,
                "network": network("paper", model),
                "size": patch_size("paper"),
                "batch": args.paper_batch,
                "samplers": SAMPLERS,
                "guidance": [0.0, GUIDANCE],
                "repeats": 1,
                "max_real_evals": 0,
                "evals": args.paper_evals or (1 if args.quick else 3),
                "warmup_evals": 0,
            }
        )
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="a short check that the script works (see the doc)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--demo-train-steps", default=None, help="WARMUP+TIMED at demo size (default 5+20; quick 1+2)")
    parser.add_argument("--paper-train-steps", default="2+3", help="WARMUP+TIMED at paper size (default 2+3)")
    parser.add_argument(
        "--paper-train",
        choices=("auto", "yes", "no"),
        default=None,
        help="paper-size training: auto = when memory allows (default; quick: no)",
    )
    parser.add_argument(
        "--checkpointing",
        default="off,on",
        help="gradient checkpointing settings to train with: off, on or off,on (default both)",
    )
    parser.add_argument("--paper-batch", type=int, default=1, help="paper-size batch for training and sampling")
    parser.add_argument("--sample-batch", type=int, default=None, help="demo sampling batch (default 8; quick 2)")
    parser.add_argument("--sample-repeats", type=int, default=1, help="real sampling runs per sampler at demo size")
    parser.add_argument(
        "--max-real-evals",
        type=int,
        default=None,
        help="demo samplers with more steps are extrapolated (default none; quick 100)",
    )
    parser.add_argument(
        "--paper-evals", type=int, default=None, help="timed evaluations at paper size (default 3; quick 1)"
    )
    parser.add_argument(
        "--paper-train-models",
        default=",".join(MODELS),
        help="paper-size training of these models (default structure,image)",
    )
    parser.add_argument(
        "--paper-sample-models",
        default=None,
        help="paper-size sampling of these models, or none (default structure,image; quick structure)",
    )
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

    print("  counting FLOPs on the meta device ...", flush=True)
    flops = bench_flops()  # always: cheap, and the paper-train memory check needs it
    benchkit.write_json(
        args.out_dir / "flops_diffusion.json",
        {
            "what": "FLOPs (FlopCounterMode, meta device) per batch-1 evaluation of the diffusion U-Nets",
            "networks": flops,
            "guidance_scale": GUIDANCE,
        },
    )
    sections, rows, data = [], [], {"flops": flops}
    if "flops" in parts:
        sections.append(flops_section(flops))
    if "train" in parts:
        data["train"] = bench_train(args, flops, script)
        rows += [{"part": "train", **{k: v for k, v in r.items() if k != "step_seconds"}} for r in data["train"]]
        sections.append(train_section(data["train"]))
    if "sample" in parts:
        sampling = []
        for spec in sample_specs(args):
            print(f"  sampling {spec['kind']} {spec['model']} ...", flush=True)
            sampling += summarise_sampling(spec, benchkit.run_worker(script, spec, args.threads))
        data["sample"] = sampling
        rows += [{"part": "sample", **r} for r in sampling]
        sections.append(sample_section(sampling))
    name = "bench_diffusion_quick" if args.quick else "bench_diffusion"
    benchkit.write_report(
        name,
        title="Diffusion U-Nets: training, sampling, FLOPs",
        sections=sections,
        data=data,
        rows=rows,
        threads=args.threads,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
