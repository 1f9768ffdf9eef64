"""Reverse-process samplers: the paper's DDPM ancestral sampler, and DDIM / DPM-Solver++.

DDPM runs ``NoiseSchedule.ddpm_step`` (paper eq. 5) over all T steps, or over fewer
evenly respaced steps (guided-diffusion's timestep respacing). DDIM (eta = 0;
Song et al. 2021) and DPM-Solver++ (2nd-order multistep; Lu et al. 2022) are diffusers'
schedulers configured from the same betas; both are deterministic given the initial noise.

Per-sample reproducibility: sample i's initial noise and every per-step noise it needs
are drawn from ``generators[i]`` alone (on that generator's device, then moved), so a
sample is the same whether it is drawn alone or in any batch. Across batch sizes the
network may still differ in the last float bits (batched kernels), nothing more.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from nudiff.diffusion.schedule import NoiseSchedule, VarianceType, extract

SamplerName = Literal["ddpm", "ddim", "dpmsolver++"]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_fn(x (B, C, H, W), t (B,) int64) -> eps (B, C, H, W)``, e.g. a ``guided_eps`` closure."""


@dataclass(frozen=True)
class SampleResult:
    """Samples ``x0`` ``(B, C, H, W)`` and ``n_evals``, the number of ``eps_fn`` calls.

    One call is one batched network pass; with classifier-free guidance that pass
    runs over the doubled batch (``guided_eps``), and still counts as one.
    """

    x0: torch.Tensor
    n_evals: int


def per_sample_noise(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device | str
) -> torch.Tensor:
    """One N(0, I) draw of ``shape[1:]`` per generator, stacked to ``(B, C, H, W)``."""
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generators]).to(device)


def clipped_eps_fn(eps_fn: EpsFn, schedule: NoiseSchedule) -> EpsFn:
    """``eps_fn`` whose implied clean sample x0 is clipped to [-1, 1].

    The prediction x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) is clamped and
    eps recomputed from it. For the DDPM step this is exactly the ``clip_denoised``
    of Ho et al.'s and guided-diffusion's samplers (the posterior mean of a clipped
    x0, written through eps); it applies unchanged to DDIM and DPM-Solver++. Near
    t = T, sqrt(abar_t) is about 0.006, so an eps that is off by a few percent
    would otherwise throw x0 far outside the data range.
    """

    def clipped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t)
        a = extract(schedule.sqrt_alphas_cumprod, t, x)
        s = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x)
        x0 = ((x - s * eps) / a).clamp(-1.0, 1.0)
        return (x - a * x0) / s

    return clipped


def respaced_schedule(schedule: NoiseSchedule, steps: int) -> tuple[NoiseSchedule, torch.Tensor]:
    """The schedule of ``steps`` evenly spaced timesteps of ``schedule``, and those timesteps.

    Ancestral (DDPM) sampling with fewer steps, as guided-diffusion's timestep
    respacing (Nichol & Dhariwal 2021): keep abar at the chosen timesteps
    t_1 < ... < t_S (always 0 and T-1) and set beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}}.
    With ``steps == T`` it is the original schedule, so the paper's 1000-step sampler
    is unchanged. The network is still fed the original timestep ``t_i``.
    """
    T = schedule.num_timesteps
    if steps == T:
        return schedule, torch.arange(T)
    kept = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique()
    if len(kept) != steps:
        raise ValueError(f"cannot space {steps} distinct steps over T={T}")
    abar = schedule.alphas_cumprod[kept]
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    return NoiseSchedule.from_betas(1 - abar / abar_prev), kept


def _diffusers_scheduler(sampler: SamplerName, schedule: NoiseSchedule):
    # imported here: diffusers pulls in torch._dynamo (about 1 s), which DDPM jobs never need
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    # "trailing" spacing starts at t = T-1, the step that pure noise stands for
    # (Lin et al. 2024, Table 2); the other defaults would start lower.
    common = dict(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.tolist(),
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="trailing",
    )
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")


def sample(
    eps_fn: EpsFn,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    sampler: SamplerName,
    steps: int,
    generators: Sequence[torch.Generator],
    device: torch.device | str,
    variance: VarianceType = "posterior",
    clip_denoised: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SampleResult:
    """Draw ``shape[0]`` samples by running the reverse process from pure noise.

    Args:
        eps_fn: the noise predictor (see ``EpsFn``); called without gradients.
        shape: ``(B, C, H, W)`` of the samples.
        schedule: the schedule the network was trained with.
        sampler: ``"ddpm"`` (paper eq. 5; with ``steps < T`` on a respaced schedule, see
            :func:`respaced_schedule`), ``"ddim"`` (eta = 0) or
            ``"dpmsolver++"`` (2nd-order multistep).
        steps: number of reverse steps, i.e. of ``eps_fn`` calls. For DDIM pick a divisor
            of T: diffusers steps back by T // steps, so otherwise the last step stops at
            index 0 (abar = 1 - 1e-4) instead of at the clean sample.
        generators: one ``torch.Generator`` per sample; sample i's randomness comes from
            ``generators[i]`` only.
        device: where ``eps_fn`` runs.
        variance: sigma_t^2 for DDPM: ``"posterior"`` (beta_tilde_t) or ``"beta"``.
        clip_denoised: clip the implied x0 to [-1, 1] at every step (see
            :func:`clipped_eps_fn`; on in the DDPM and authors' reference code).
        progress: called as ``progress(done, steps)`` after each step.
    Returns:
        ``SampleResult`` with the samples ``(B, C, H, W)`` and the number of evaluations.
    """
    if len(shape) != 4 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (B, C, H, W) with positive sizes, got {tuple(shape)}")
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} for batch {shape[0]}")
    if sampler not in ("ddpm", "ddim", "dpmsolver++"):
        raise ValueError(f"sampler must be 'ddpm', 'ddim' or 'dpmsolver++', got {sampler!r}")
    T = schedule.num_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")

    if clip_denoised:
        eps_fn = clipped_eps_fn(eps_fn, schedule)
    batch = shape[0]
    x = per_sample_noise(shape, generators, device)
    n_evals = 0
    with torch.no_grad():
        if sampler == "ddpm":
            steps_schedule, model_t = respaced_schedule(schedule, steps)
            for done, i in enumerate(range(steps - 1, -1, -1), start=1):
                index = torch.full((batch,), i, dtype=torch.long, device=device)
                eps = eps_fn(x, torch.full((batch,), int(model_t[i]), dtype=torch.long, device=device))
                n_evals += 1
                # index 0 adds no noise, so nothing is drawn for it
                noise = per_sample_noise(shape, generators, device) if i > 0 else None
                x = steps_schedule.ddpm_step(x, index, eps, noise, variance=variance)
                if progress is not None:
                    progress(done, steps)
        else:
            scheduler = _diffusers_scheduler(sampler, schedule)
            with warnings.catch_warnings():
                # diffusers' DPM-Solver calls np.array on a tensor the NumPy-2 way it warns about
                warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                scheduler.set_timesteps(steps)
            total = len(scheduler.timesteps)
            for done, step_t in enumerate(scheduler.timesteps, start=1):
                t = torch.full((batch,), int(step_t), dtype=torch.long, device=device)
                eps = eps_fn(x, t)
                n_evals += 1
                if sampler == "ddim":
                    x = scheduler.step(eps, int(step_t), x, eta=0.0).prev_sample
                else:
                    x = scheduler.step(eps, step_t, x).prev_sample
                if progress is not None:
                    progress(done, total)
    return SampleResult(x0=x, n_evals=n_evals)
