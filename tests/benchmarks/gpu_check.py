"""A GPU check a user runs in minutes: the tiny workflow on CUDA, and paper-size speed, memory and MFU.

    make gpu-check
    python tests/benchmarks/gpu_check.py [--device cuda|cpu] [--parts workflow,train,sample,infer]

Parts (each bounded by step counts chosen to finish the whole check in under 8 minutes on one
H100/H200; the tiny workflow takes most of it):

* workflow: ``config/tiny.yaml`` with ``device: cuda`` for every stage (``features``,
  ``diffusion``, ``segmentation``), run by Snakemake in a temporary directory; every torch job's
  log must name the GPU.
* train: a few training steps of each paper-size network at the paper's batch size (structure
  U-Net batch 4, image U-Net with SPADE batch 1, Hover-Net 256 px batch 8), through nudiff's own
  training loop (``run_training``: bf16 autocast on CUDA, AdamW/Adam, gradient clipping, EMA,
  as the workflow trains) on a few fixed batches of demo data already on the device, so the
  CPU's batch preparation is left out: steps/s, peak CUDA memory
  (``torch.cuda.max_memory_allocated``) and model FLOP utilisation (MFU).
* sample: the workflow's sampling batches at paper size (``synthesis.structure_batch`` and the
  guided ``synthesis.image_batch``, classifier-free guidance as one network pass over the
  doubled batch), in float32 as the workflow samples. A 1-step and a k-step run are timed; their
  difference gives the seconds per reverse step, extrapolated to the configured 1000 steps:
  images/s.
* infer: Hover-Net tile inference of a 1000x1000 image (``predict_structure`` with the preset's
  tiles), float32: seconds per image.

MFU = FLOPs (``FlopCounterMode`` on the meta device: convolutions, matrix products, attention,
2 per multiply-add; see ``benchkit.count_flops``) / seconds / the GPU's dense bf16 peak from
``PEAK_BF16_TFLOPS`` (n/a for a GPU not in it; ``--peak-tflops`` sets it). The float32 parts
are reported against the same bf16 peak, so their MFU is a lower bound of what a bf16 run gets.

Sizes: ``paper`` is ``config/monuseg.yaml`` with the schema's defaults (the paper's settings);
``tiny`` is ``config/tiny.yaml``. Without a GPU the check prints why it skipped and exits 0;
``--device cpu`` runs every part on the CPU at the tiny size with fewer steps (the code paths,
not the figures). Output: ``results/gpu_check/gpu_check.{md,json,csv}`` (``gpu_check_cpu.*``
with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchkit
import numpy as np
import torch
import yaml
from benchkit import timed

PARTS = ("workflow", "train", "sample", "infer")
OUT_DIR = benchkit.REPO / "results" / "gpu_check"
SKIP_MESSAGE = (
    "gpu-check: SKIPPED, no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was "
    "measured. Run it on a machine with a GPU, or `python tests/benchmarks/gpu_check.py --device cpu` "
    "to exercise the same code paths on the CPU at tiny sizes."
)
TARGET_SECONDS = 480  # the whole check on one H100/H200
WORKFLOW_STAGES = ("features", "diffusion", "segmentation")  # the config sections with a device key

# Dense (no sparsity) bf16 tensor-core peak per GPU, TFLOP/s, from the vendor's datasheets.
# Matched in order against torch.cuda.get_device_name(); the first pattern that matches wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H200 NVL", 835.5),
    (r"H200", 989.4),  # SXM; also GH200
    (r"H100 NVL", 835.5),
    (r"H100 PCIe", 756.5),
    (r"H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"A100", 312.0),
    (r"L40S", 362.1),
    (r"\bL4\b", 121.0),
)


def peak_bf16_tflops(name: str | None) -> float | None:
    """The dense bf16 peak of the GPU called ``name``, or None when it is not in the table."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if name and re.search(pattern, name, flags=re.IGNORECASE):
            return tflops
    return None


# ---- settings ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
    """Step counts of one run: what bounds each part's time."""

    train_warmup: int
    train_steps: int
    sample_steps: int
    infer_warmup: int
    infer_repeats: int
    image_side: int
    workflow_timeout: int


BUDGETS = {
    "cuda": Budget(
        train_warmup=3,
        train_steps=10,
        sample_steps=8,
        infer_warmup=1,
        infer_repeats=3,
        image_side=1000,
        workflow_timeout=420,
    ),
    "cpu": Budget(
        train_warmup=1,
        train_steps=2,
        sample_steps=2,
        infer_warmup=0,
        infer_repeats=1,
        image_side=128,
        workflow_timeout=3600,
    ),
}
PRESETS = {"paper": "config/monuseg.yaml", "tiny": "config/tiny.yaml"}


def load_preset(size: str) -> dict[str, Any]:
    """The preset's config with every default of ``config/schema.yaml`` filled in."""
    from snakemake.utils import validate

    with open(benchkit.REPO / PRESETS[size]) as handle:
        config = yaml.safe_load(handle)
    validate(config, str(benchkit.REPO / "config" / "schema.yaml"))
    return config


def demo_patches(size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic H&E patches ``(n, S, S, 3)`` uint8 and their instance maps (no download)."""
    from nudiff.datasets.demo import STYLES, generate_demo_tile

    rng = np.random.default_rng(seed)
    side = max(size, 64)  # the generator's smallest tile
    tiles = [generate_demo_tile(rng, side, STYLES[i % len(STYLES)]) for i in range(n)]
    return np.stack([t[0][:size, :size] for t in tiles]), np.stack([t[1][:size, :size] for t in tiles])


# ---- measuring -----------------------------------------------------------------------


class Device:
    """The device under test: synchronising, peak memory, and the FLOP/s it is measured against."""

    def __init__(self, kind: str, peak_tflops: float | None) -> None:
        self.kind = kind
        self.type = torch.device(kind)
        self.name = torch.cuda.get_device_name(0) if kind == "cuda" else benchkit.environment(1)["cpu"]
        self.peak_tflops = (
            peak_tflops if peak_tflops is not None else peak_bf16_tflops(self.name if kind == "cuda" else None)
        )

    def reset_memory(self) -> None:
        """Free what earlier parts left and start a new peak."""
        gc.collect()
        if self.kind == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / benchkit.GIB if self.kind == "cuda" else None

    def rates(self, flops: float, seconds: float) -> dict[str, Any]:
        achieved = flops / seconds / 1e12
        return {
            "gflop": flops / 1e9,
            "achieved_tflops": achieved,
            "mfu": achieved / self.peak_tflops if self.peak_tflops else None,
        }


def meta_flops(build, run) -> int:
    """FLOPs of ``run(model)`` with ``model = build()``, all on the meta device (tensors too)."""
    with torch.device("meta"):
        model = build()
        return benchkit.count_flops(lambda: run(model))


def training_flops(build, inputs) -> int:
    """FLOPs of one training step's forward + backward (``model(*inputs())``) on the meta device."""

    def run(model):
        out = model(*inputs())
        outs = out.values() if isinstance(out, dict) else [out]
        sum(o.float().pow(2).mean() for o in outs).backward()

    return meta_flops(build, run)


def time_training(model, optimizer, step_fn, settings, device: Device, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed step of ``run_training`` (nudiff's loop; no checkpoint is written)."""
    from nudiff.training.checkpoint import CheckpointStore
    from nudiff.training.loop import run_training

    total = warmup + steps
    settings = dataclasses.replace(
        settings, iterations=total, checkpoint_every=total, log_every=total, snapshot_every=None
    )
    with tempfile.TemporaryDirectory(prefix="nudiff_gpu_check_") as tmp:
        result = run_training(
            model,
            optimizer,
            step_fn,
            settings,
            generator=torch.Generator().manual_seed(0),
            store=CheckpointStore(tmp),
            fingerprint={"gpu_check": True},
            device=device.type,
        )
    # the loop calls loss.item() every step, so each step's time includes its GPU work
    return result.history["seconds"].tolist()[warmup:]


def train_row(
    name: str, params: int, batch: int, size: int, seconds: list[float], flops: int, device: Device
) -> dict[str, Any]:
    step = statistics.median(seconds)
    return {
        "part": "train",
        "network": name,
        "params_m": params / 1e6,
        "size": size,
        "batch": batch,
        "precision": "bf16 autocast" if device.kind == "cuda" else "float32",
        "timed": len(seconds),
        "seconds": step,
        "steps_per_second": 1.0 / step,
        "peak_memory_gib": device.peak_memory_gib(),
        **device.rates(flops, step),
    }


def bench_train(config: dict[str, Any], device: Device, budget: Budget) -> list[dict[str, Any]]:
    from nudiff.diffusion import UNet, UNetConfig, count_parameters, l_simple
    from nudiff.diffusion.training import DiffusionTraining, ScheduleConfig, TrainingExamples
    from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig, hovernet_loss, structure_to_targets
    from nudiff.segmentation.hovernet.train import HoVerNetTraining
    from nudiff.structure import nuclei_structure

    size = int(config["patches"]["size"])
    diffusion, hovernet = config["diffusion"], config["segmentation"]["hovernet"]
    schedule = ScheduleConfig(**diffusion["schedule"]).build()
    rows = []
    n_batches = 2  # fixed batches cycled through; drawn once, on the CPU, before timing
    for model_kind, training in (
        ("structure", diffusion["structure_model"]["training"]),
        ("image", diffusion["image_model"]["conditional"]),
    ):
        cfg = DiffusionTraining(**training)
        net = UNetConfig(
            **{**diffusion[f"{model_kind}_model"]["network"], "condition_channels": 3 if model_kind == "image" else 0}
        )
        rgb, inst = demo_patches(size, cfg.batch_size * n_batches)
        examples = TrainingExamples(rgb, inst, augment=True)
        generator = torch.Generator().manual_seed(0)
        batches = [[t.to(device.type) for t in examples.draw(cfg.batch_size, generator)] for _ in range(n_batches)]
        device.reset_memory()
        torch.manual_seed(cfg.seed)
        with torch.device(device.type):
            model = UNet(net).set_gradient_checkpointing(cfg.gradient_checkpointing)  # as the preset trains
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        calls = [0]

        def step(model, generator, kind=model_kind, batches=batches, calls=calls):
            images, structures = batches[calls[0] % n_batches]
            calls[0] += 1
            if kind == "structure":
                return l_simple(model, structures, schedule, generator=generator)
            return l_simple(model, images, schedule, generator=generator, cond=structures)

        print(
            f"  training the {model_kind} U-Net ({count_parameters(model) / 1e6:.0f} M parameters, "
            f"batch {cfg.batch_size}) ...",
            flush=True,
        )
        seconds = time_training(
            model, optimizer, step, cfg.loop_settings(), device, budget.train_warmup, budget.train_steps
        )
        x = (cfg.batch_size, 3, size, size)
        flops = training_flops(
            lambda net=net: UNet(net),
            lambda net=net, x=x: (
                torch.empty(x),
                torch.zeros(x[0], dtype=torch.long),
                torch.empty(x) if net.condition_channels else None,
            ),
        )
        label = "structure U-Net" if model_kind == "structure" else "image U-Net (SPADE)"
        rows.append(train_row(label, count_parameters(model), cfg.batch_size, size, seconds, flops, device))
        rows[-1]["gradient_checkpointing"] = cfg.gradient_checkpointing
        del model, optimizer, batches, step

    seg = HoVerNetTraining(**hovernet["training"])  # phase 2 of HoVer-Net (the encoder trains too)
    net = HoVerNetConfig.from_dict(hovernet["network"])
    rgb, inst = demo_patches(size, seg.batch_size * n_batches)
    batches = []
    for b in range(n_batches):
        rows_ = slice(b * seg.batch_size, (b + 1) * seg.batch_size)
        x = torch.from_numpy(rgb[rows_]).permute(0, 3, 1, 2).float().div_(255.0).to(device.type)
        st = torch.from_numpy(np.stack([nuclei_structure(i) for i in inst[rows_]])).permute(0, 3, 1, 2)
        batches.append((x, structure_to_targets(st.to(device.type))))
    device.reset_memory()
    model = HoVerNet(net, generator=torch.Generator().manual_seed(seg.seed)).to(device.type)
    optimizer = torch.optim.Adam(model.parameters(), lr=seg.lr, betas=(0.9, 0.999))
    calls = [0]

    def seg_step(model, generator):
        x, targets = batches[calls[0] % n_batches]
        calls[0] += 1
        return hovernet_loss(model(x), targets)[0]

    params = sum(p.numel() for p in model.parameters())
    print(f"  training Hover-Net ({params / 1e6:.0f} M parameters, batch {seg.batch_size}) ...", flush=True)
    seconds = time_training(
        model, optimizer, seg_step, seg.loop_settings(), device, budget.train_warmup, budget.train_steps
    )
    shape = (seg.batch_size, 3, size, size)
    flops = training_flops(lambda: HoVerNet(net), lambda: (torch.empty(shape),))
    rows.append(train_row("Hover-Net", params, seg.batch_size, size, seconds, flops, device))
    return rows


def bench_sample(config: dict[str, Any], device: Device, budget: Budget) -> list[dict[str, Any]]:
    from nudiff.diffusion import UNet, UNetConfig, count_parameters, guided_eps
    from nudiff.diffusion.synthesis import CleanupSettings, image_batch, sampling_settings, structure_batch
    from nudiff.diffusion.training import ScheduleConfig

    size = int(config["patches"]["size"])
    diffusion = config["diffusion"]
    configured = sampling_settings(diffusion["sampling"])
    schedule = ScheduleConfig(**diffusion["schedule"]).build()
    batch = configured.batch_size
    _, inst = demo_patches(size, min(batch, 4), seed=1)
    instances = inst[np.arange(batch) % len(inst)]
    indices = np.arange(batch)
    k = max(2, budget.sample_steps)
    rows = []
    for model_kind in ("structure", "image"):
        net = UNetConfig(
            **{**diffusion[f"{model_kind}_model"]["network"], "condition_channels": 3 if model_kind == "image" else 0}
        )
        device.reset_memory()
        torch.manual_seed(0)
        with torch.device(device.type):
            model = UNet(net).eval()

        def run(steps: int, kind=model_kind, model=model) -> float:
            sampling = dataclasses.replace(configured, steps=steps)
            if kind == "structure":
                call = lambda: structure_batch(  # noqa: E731
                    model,
                    schedule,
                    size,
                    indices,
                    sampling,
                    watershed=config.get("watershed", {}),
                    cleanup=CleanupSettings(**diffusion.get("cleanup", {})),
                    device=device.kind,
                )
            else:
                call = lambda: image_batch(model, schedule, instances, indices, sampling, device=device.kind)  # noqa: E731
            return timed(call)[1]  # returns NumPy arrays: the device work is done

        guided = model_kind == "image" and configured.guidance_scale > 0
        print(
            f"  sampling {batch} {model_kind}s at {size} px ({k} steps{', guided' if guided else ''}) ...", flush=True
        )
        run(1)  # warm-up (kernels, allocator)
        one, many = run(1), run(k)
        per_step = max(many - one, 1e-9) / (k - 1)
        cond_shape = (batch, 3, size, size)
        flops = meta_flops(
            lambda net=net: UNet(net),
            lambda m, kind=model_kind, cond_shape=cond_shape: guided_eps(
                m,
                torch.empty(cond_shape),
                torch.zeros(batch, dtype=torch.long),
                torch.empty(cond_shape) if kind == "image" else None,
                configured.guidance_scale,
            ),
        )
        seconds_per_image = per_step * configured.steps / batch
        rows.append(
            {
                "part": "sample",
                "network": "image U-Net (SPADE)" if model_kind == "image" else "structure U-Net",
                "params_m": count_parameters(model) / 1e6,
                "size": size,
                "batch": batch,
                "net_batch": batch * (2 if guided else 1),
                "guidance_scale": configured.guidance_scale if model_kind == "image" else None,
                "precision": "float32",
                "sampler": configured.sampler,
                "configured_steps": configured.steps,
                "timed": k,
                "seconds": per_step,
                "steps_per_second": 1.0 / per_step,
                "seconds_per_image": seconds_per_image,
                "images_per_second": 1.0 / seconds_per_image,
                "seconds_fixed_per_batch": max(one - per_step, 0.0),
                "peak_memory_gib": device.peak_memory_gib(),
                **device.rates(flops, per_step),
            }
        )
        del model, run  # run() holds the model: free it before the next one is measured
    return rows


def bench_infer(config: dict[str, Any], device: Device, budget: Budget) -> list[dict[str, Any]]:
    from bench_segmentation import tiles_per_image

    from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig
    from nudiff.segmentation.hovernet.inference import predict_structure

    size = int(config["patches"]["size"])
    hovernet = config["segmentation"]["hovernet"]
    inference = hovernet["inference"]
    tile, margin, tiles_per_pass = inference["tile"] or size, inference["margin"], inference["batch_size"]
    net = HoVerNetConfig.from_dict(hovernet["network"])
    side = budget.image_side
    rgb, _ = demo_patches(min(side, 256), 1, seed=2)
    reps = -(-side // rgb.shape[1])
    image = np.ascontiguousarray(np.tile(rgb[0], (reps, reps, 1))[:side, :side])
    device.reset_memory()
    model = HoVerNet(net, generator=torch.Generator().manual_seed(0)).to(device.type).eval()
    tiles = tiles_per_image(hovernet["network"], tile, margin, side)
    print(f"  Hover-Net inference of a {side}x{side} image ({tiles} tiles of {tile} px) ...", flush=True)
    run = lambda: timed(predict_structure, model, image, tile=tile, margin=margin, batch_size=tiles_per_pass)[1]  # noqa: E731
    for _ in range(budget.infer_warmup):
        run()
    seconds = statistics.median([run() for _ in range(budget.infer_repeats)])
    flops = tiles * meta_flops(lambda: HoVerNet(net), lambda m: m(torch.empty(1, 3, tile, tile)))
    return [
        {
            "part": "infer",
            "network": "Hover-Net",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "size": tile,
            "batch": tiles_per_pass,
            "image_side": side,
            "tiles": tiles,
            "precision": "float32",
            "timed": budget.infer_repeats,
            "seconds": seconds,
            "images_per_second": 1.0 / seconds,
            "peak_memory_gib": device.peak_memory_gib(),
            **device.rates(flops, seconds),
        }
    ]


# ---- the tiny workflow ------------------------------------------------------------------


def workflow_config(device: str) -> dict[str, Any]:
    """``config/tiny.yaml`` with every stage on ``device``."""
    with open(benchkit.REPO / PRESETS["tiny"]) as handle:
        config = yaml.safe_load(handle)
    for stage in WORKFLOW_STAGES:
        config.setdefault(stage, {})["device"] = device
    return config


def job_devices(log_dir: Path) -> dict[str, int]:
    """How many job logs say they ran with a GPU visible and how many without (``nudiff.runtime.start_job``)."""
    counts = {"gpu": 0, "no_gpu": 0, "gpu_names": []}
    for log in sorted(log_dir.rglob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            match = re.search(r"job on .* thread\(s\)(, GPU (.+)|, no GPU)?$", line)
            if match and match.group(1):
                if match.group(2):
                    counts["gpu"] += 1
                    counts["gpu_names"] = sorted({*counts["gpu_names"], match.group(2)})
                else:
                    counts["no_gpu"] += 1
    return counts


def run_workflow(device: Device, budget: Budget, cores: int, keep: Path | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="nudiff_gpu_check_workflow_")) if keep is None else keep
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "gpu_check.yaml"
    config_file.write_text(yaml.safe_dump(workflow_config(device.kind)))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(benchkit.REPO / "Snakefile"),
        "--cores",
        str(cores),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_file),
    ]
    print(
        f"  the tiny workflow with device: {device.kind} for {', '.join(WORKFLOW_STAGES)} in {workdir} ...", flush=True
    )
    start = time.perf_counter()
    log = workdir / "snakemake.log"
    with open(log, "w") as handle:
        # its own process group, so a timeout stops Snakemake's jobs too
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget.workflow_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            code = None
    stderr = log.read_text(errors="replace")
    seconds = time.perf_counter() - start
    steps = re.findall(r"(\d+) of (\d+) steps \((\d+)%\) done", stderr)
    jobs = job_devices(workdir / "logs")
    ok = code == 0 and (device.kind != "cuda" or (jobs["gpu"] > 0 and jobs["no_gpu"] == 0))
    result = {
        "part": "workflow",
        "network": "config/tiny.yaml, every stage on " + device.kind,
        "ok": ok,
        "exit_code": code,
        "seconds": seconds,
        "jobs_done": int(steps[-1][0]) if steps else 0,
        "jobs_total": int(steps[-1][1]) if steps else None,
        "torch_jobs_with_gpu": jobs["gpu"],
        "torch_jobs_without_gpu": jobs["no_gpu"],
        "gpu_names_in_logs": jobs["gpu_names"],
        "workdir": str(workdir) if keep is not None or not ok else None,
    }
    if code != 0:
        result["stderr_tail"] = ("timed out\n" if code is None else "") + stderr[-3000:]
        print(
            f"  workflow FAILED (exit {code}); kept in {workdir}; last lines:\n{result['stderr_tail']}", file=sys.stderr
        )
    elif keep is None and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---- the report ---------------------------------------------------------------------------


def markdown_sections(device: Device, size: str, data: dict[str, Any]) -> list[str]:
    peak = f"{device.peak_tflops:g} TFLOP/s dense bf16" if device.peak_tflops else "unknown (MFU n/a)"
    intro = (
        f"Device: **{device.name}** ({device.kind}); peak used for MFU: {peak}. Sizes: `{size}` "
        f"(`{PRESETS[size]}` with the schema's defaults). Every figure below is **measured** on this device "
        f"in this run (FLOPs are counted, not timed). Total time {data['seconds_total']:.0f} s."
    )
    sections = [intro]
    shown = lambda rows: [{**r, "mfu": "n/a" if r.get("mfu") is None else r["mfu"]} for r in rows]  # noqa: E731
    if "workflow" in data:
        w = data["workflow"]
        sections.append(
            "### The tiny workflow\n\n"
            + benchkit.md_table(
                [w],
                [
                    ("network", "run", ""),
                    ("ok", "ok", ""),
                    ("jobs_done", "jobs done", ""),
                    ("jobs_total", "of", ""),
                    ("torch_jobs_with_gpu", "torch jobs with GPU", ""),
                    ("torch_jobs_without_gpu", "without", ""),
                    ("seconds", "seconds", ".0f"),
                ],
            )
        )
    common = [
        ("network", "network", ""),
        ("params_m", "params (M)", ".1f"),
        ("size", "px", ""),
        ("batch", "batch", ""),
        ("precision", "precision", ""),
        ("timed", "timed", ""),
    ]
    rates = [
        ("peak_memory_gib", "peak CUDA memory GiB", ".2f"),
        ("gflop", "GFLOP", ",.1f"),
        ("achieved_tflops", "TFLOP/s", ".3g"),
        ("mfu", "MFU", ".1%"),
    ]
    if data.get("train"):
        sections.append(
            "### Training steps (nudiff's loop: autocast, optimiser, clipping, EMA; fixed batches on the device)\n\n"
            + benchkit.md_table(
                shown(data["train"]),
                [*common, ("seconds", "s / step", ".4f"), ("steps_per_second", "steps / s", ".2f"), *rates],
            )
        )
    if data.get("sample"):
        sections.append(
            "### Sampling (the workflow's sampling batches; s / step from a 1-step and a k-step run)\n\n"
            "`net batch`: the batch of each network pass (classifier-free guidance doubles it). "
            "Images / s: at the configured number of steps.\n\n"
            + benchkit.md_table(
                shown(data["sample"]),
                [
                    *common,
                    ("net_batch", "net batch", ""),
                    ("guidance_scale", "w", ""),
                    ("sampler", "sampler", ""),
                    ("configured_steps", "steps", ""),
                    ("seconds", "s / step", ".4f"),
                    ("images_per_second", "images / s", ".3f"),
                    *rates,
                ],
            )
        )
    if data.get("infer"):
        sections.append(
            "### Hover-Net inference of a whole image by tiles (`predict_structure`)\n\n"
            + benchkit.md_table(
                shown(data["infer"]),
                [
                    *common,
                    ("image_side", "image side", ""),
                    ("tiles", "tiles", ""),
                    ("seconds", "s / image", ".3f"),
                    *rates,
                ],
            )
        )
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default cuda (skips without one)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--size", choices=tuple(PRESETS), default=None, help="default paper on cuda, tiny on cpu")
    parser.add_argument("--train-steps", default=None, help="WARMUP+TIMED training steps (cuda 3+10, cpu 1+2)")
    parser.add_argument("--sample-steps", type=int, default=None, help="reverse steps of the timed run (cuda 8)")
    parser.add_argument("--image-side", type=int, default=None, help="inference image side (cuda 1000, cpu 128)")
    parser.add_argument("--cores", type=int, default=min(os.cpu_count() or 1, 8), help="Snakemake's --cores")
    parser.add_argument("--workflow-timeout", type=int, default=None, help="seconds (cuda 420)")
    parser.add_argument("--keep-workdir", type=Path, default=None, help="run the workflow here and keep it")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, overrides the table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (cpu: 1)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        raise SystemExit(f"--parts: unknown {unknown}; choose from {PARTS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(SKIP_MESSAGE, flush=True)
        return 0
    threads = args.threads or (1 if args.device == "cpu" else min(os.cpu_count() or 1, 8))
    benchkit.set_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    size = args.size or ("paper" if args.device == "cuda" else "tiny")
    budget = BUDGETS[args.device]
    warmup, steps = benchkit.parse_steps(args.train_steps) if args.train_steps else (None, None)
    budget = dataclasses.replace(
        budget,
        **{
            k: v
            for k, v in {
                "train_warmup": warmup,
                "train_steps": steps,
                "sample_steps": args.sample_steps,
                "image_side": args.image_side,
                "workflow_timeout": args.workflow_timeout,
            }.items()
            if v is not None
        },
    )
    device = Device(args.device, args.peak_tflops)
    config = load_preset(size)
    print(f"gpu-check on {device.name} ({args.device}), {size} sizes, parts {','.join(parts)}", flush=True)

    start = time.perf_counter()
    data: dict[str, Any] = {
        "device": {"type": device.kind, "name": device.name, "peak_bf16_tflops": device.peak_tflops},
        "size": size,
        "preset": PRESETS[size],
        "budget": dataclasses.asdict(budget),
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
    }
    failed = []
    benches = {"train": bench_train, "sample": bench_sample, "infer": bench_infer}
    for part in [p for p in PARTS if p in parts]:
        tic = time.perf_counter()
        if part == "workflow":
            data["workflow"] = run_workflow(device, budget, args.cores, args.keep_workdir)
            if not data["workflow"]["ok"]:
                failed.append(part)
        else:
            data[part] = benches[part](config, device, budget)
        data.setdefault("part_seconds", {})[part] = time.perf_counter() - tic
        print(f"  {part}: {data['part_seconds'][part]:.0f} s", flush=True)
    data["seconds_total"] = time.perf_counter() - start
    data["failed"] = failed
    rows = [r for part in ("train", "sample", "infer") for r in data.get(part, [])]
    if "workflow" in data:
        rows.insert(0, {k: v for k, v in data["workflow"].items() if k != "stderr_tail"})
    name = "gpu_check" if args.device == "cuda" else "gpu_check_cpu"
    benchkit.write_report(
        name,
        title="GPU check" if args.device == "cuda" else "GPU check, CPU mode (code paths only)",
        sections=markdown_sections(device, size, data),
        data=data,
        rows=rows,
        threads=threads,
        out_dir=args.out_dir,
    )
    if failed:
        print(f"gpu-check: FAILED parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.device == "cuda" and data["seconds_total"] > TARGET_SECONDS:
        print(f"gpu-check: took longer than the {TARGET_SECONDS // 60} minutes it aims at", file=sys.stderr)
    print(f"gpu-check: done in {data['seconds_total']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
