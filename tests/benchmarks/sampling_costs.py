"""Sampling-cost measurement of ``bench_diffusion.py``: the worker and its summary table.

Kept apart so each file stays short; see ``bench_diffusion.py`` for what is measured and how.
"""

from __future__ import annotations

import time
from typing import Any

import benchkit
import numpy as np
import torch
from benchkit import median, timed

SAMPLERS = (
    ("DDPM-1000", "ddpm", 1000),
    ("DDPM-100 (respaced)", "ddpm", 100),
    ("DDIM-50", "ddim", 50),
    ("DPM-Solver++-20", "dpmsolver++", 20),
)
GUIDANCE = 2.0  # the paper's w


def _randomise_zero_parameters(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Untrained U-Nets start with zeroed output convs (eps = 0); give them values for timing."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 1e-2)


def sample_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from nudiff.diffusion import UNet, UNetConfig, guided_eps, linear_schedule, sample
    from nudiff.structure import nuclei_structure, structure_to_model_range

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = UNet(UNetConfig(**spec["network"])).eval()
    _randomise_zero_parameters(model, generator)
    schedule = linear_schedule()
    batch, size = spec["batch"], spec["size"]
    shape = (batch, 3, size, size)
    cond = None
    if spec["model"] == "image":
        _, inst = benchkit.real_patches(size)
        structures = [structure_to_model_range(nuclei_structure(inst[i % len(inst)])) for i in range(batch)]
        cond = torch.from_numpy(np.stack(structures)).permute(0, 3, 1, 2).contiguous()
    eval_seconds: list[float] = []

    def make_eps(w: float | None):
        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = model(x, t) if cond is None else guided_eps(model, x, t, cond, w)
            eval_seconds.append(time.perf_counter() - start)
            return out

        return eps_fn

    guidance = [None] if cond is None else spec["guidance"]
    per_eval_cache: dict[Any, float] = {}

    def per_eval(w: float | None) -> float:
        """Median seconds of ``spec['evals']`` evaluations at the last step index (after warm-up ones)."""
        if w not in per_eval_cache:
            eps_fn = make_eps(w)
            x = torch.randn(shape, generator=generator)
            t = torch.full((batch,), schedule.num_timesteps - 1, dtype=torch.long)
            del eval_seconds[:]
            with torch.no_grad():
                for _ in range(spec.get("warmup_evals", 0) + spec["evals"]):
                    eps_fn(x, t)
            per_eval_cache[w] = median(eval_seconds[spec.get("warmup_evals", 0) :])
        return per_eval_cache[w]

    runs = []
    for repeat in range(spec["repeats"]):  # interleaved: every sampler sees the same machine state
        for w in guidance:
            for label, sampler, steps in spec["samplers"]:
                real = spec["max_real_evals"] is None or steps <= spec["max_real_evals"]
                if real:
                    del eval_seconds[:]
                    generators = [torch.Generator().manual_seed(1000 * repeat + i) for i in range(batch)]
                    result, total = timed(
                        sample,
                        make_eps(w),
                        shape,
                        schedule,
                        sampler=sampler,
                        steps=steps,
                        generators=generators,
                        device="cpu",
                    )
                    n_evals, s_eval = result.n_evals, median(eval_seconds)
                    overhead = total - sum(eval_seconds)
                elif repeat == 0:
                    s_eval = per_eval(w)
                    n_evals, total, overhead = steps, s_eval * steps, None  # sample() makes one call per step
                else:
                    continue
                runs.append(
                    {
                        "repeat": repeat,
                        "guidance": w,
                        "sampler": label,
                        "steps": steps,
                        "n_evals": n_evals,
                        "seconds_per_eval": s_eval,
                        "seconds_total": total,
                        "sampler_overhead_seconds": overhead,
                        "method": "measured" if real else f"extrapolated from {spec['evals']} eval(s)",
                    }
                )
    return {"runs": runs}


def summarise_sampling(spec: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    runs = result.get("runs", [])
    rows = []
    for w in sorted({r["guidance"] for r in runs}, key=lambda v: -1 if v is None else v):
        for label, _, _steps in spec["samplers"]:
            mine = [r for r in runs if r["guidance"] == w and r["sampler"] == label]
            if not mine:
                continue
            total = median([r["seconds_total"] for r in mine])
            rows.append(
                {
                    "size": f"{spec['kind']} {spec['size']}",
                    "model": spec["model"],
                    "batch": spec["batch"],
                    "guidance": "-" if w is None else w,
                    "sampler": label,
                    "n_evals": mine[0]["n_evals"],
                    "net_batch": spec["batch"] * (2 if w else 1),
                    "seconds_per_eval": median([r["seconds_per_eval"] for r in mine]),
                    "seconds_total": total,
                    "seconds_per_sample": total / spec["batch"],
                    "repeats": len(mine),
                    "sampler_overhead_seconds": median(
                        [r["sampler_overhead_seconds"] for r in mine if r["sampler_overhead_seconds"] is not None]
                    )
                    if mine[0]["sampler_overhead_seconds"] is not None
                    else None,
                    "method": mine[0]["method"],
                    "peak_rss_mib": result.get("peak_rss_mib"),
                }
            )
    for row in rows:  # ratios within one worker: same model, batch and machine state
        base = next((r for r in rows if r["guidance"] == row["guidance"] and r["sampler"] == "DDPM-1000"), None)
        row["ratio_to_ddpm1000"] = row["seconds_total"] / base["seconds_total"] if base else None
        plain = next((r for r in rows if r["guidance"] == 0.0 and r["sampler"] == row["sampler"]), None)
        row["ratio_guided_to_unguided"] = (
            row["seconds_total"] / plain["seconds_total"] if plain and row["guidance"] not in ("-", 0.0) else None
        )
    return rows


def sample_section(rows: list[dict[str, Any]]) -> str:
    return (
        "### Sampling cost per sampler (same model, batch and size)\n\n"
        "`n_evals`: network calls (one per step for all four samplers); with guidance each call runs on the "
        'doubled batch (`net batch`). "measured": a real `sample` run (median over repeats, interleaved); '
        '"extrapolated": seconds per evaluation x evaluations, the sampler\'s own arithmetic left out. '
        "Overhead: a real run's seconds outside the network (scheduler steps, noise, clipping). Ratios are "
        "within one worker process.\n\n"
        + benchkit.md_table(
            rows,
            [
                ("size", "size", ""),
                ("model", "model", ""),
                ("batch", "batch", ""),
                ("guidance", "w", ""),
                ("sampler", "sampler", ""),
                ("n_evals", "n_evals", ""),
                ("net_batch", "net batch", ""),
                ("seconds_per_eval", "s / eval", ".4f"),
                ("seconds_per_sample", "s / sample", ",.2f"),
                ("ratio_to_ddpm1000", "vs DDPM-1000", ".3f"),
                ("ratio_guided_to_unguided", "w=2 / w=0", ".2f"),
                ("sampler_overhead_seconds", "overhead s", ".3f"),
                ("method", "method", ""),
            ],
        )
    )
