"""The training objective L_simple (paper eq. 4; Ho et al. 2020), with condition dropout."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from nudiff.diffusion.schedule import NoiseSchedule


class EpsModel(Protocol):
    """What the diffusion code needs from a network (``nudiff.diffusion.unet.UNet`` is one)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor: ...


def drop_conditions(
    model: EpsModel, cond: torch.Tensor, drop_rate: float, *, generator: torch.Generator
) -> torch.Tensor:
    """Replace each sample's condition ``(B, K, H, W)`` by the model's null condition with
    probability ``drop_rate`` (classifier-free training, Ho & Salimans 2021)."""
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate must lie in [0, 1], got {drop_rate}")
    if drop_rate == 0.0:
        return cond
    u = torch.rand(cond.shape[0], generator=generator, device=generator.device)
    drop = (u < drop_rate).to(cond.device).reshape(-1, *([1] * (cond.ndim - 1)))
    return torch.where(drop, model.null_condition(cond), cond)


def l_simple(
    model: EpsModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator,
    cond: torch.Tensor | None = None,
    drop_rate: float = 0.0,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """L_simple = mean || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, cond) ||^2.

    Per sample, t is drawn uniformly from 0..T-1 and eps ~ N(0, I); then, if
    ``drop_rate > 0``, whether its condition is replaced by the null condition. All
    three draws come from ``generator`` in that order (on the generator's device, then
    moved to ``x0``'s), so a seed fixes the whole loss.

    Args:
        model: noise predictor, called as ``model(x_t, t, cond)``.
        x0: clean training samples ``(B, C, H, W)`` (scaled to [-1, 1]).
        schedule: the noise schedule.
        generator: source of every random draw.
        cond: structure condition ``(B, K, H, W)`` or None for an unconditional model.
        drop_rate: probability of replacing a sample's condition by
            ``model.null_condition`` (paper: 0 first, 0.2 when fine-tuning).
        min_snr_gamma: if set, Min-SNR-gamma weighting (Hang et al., ICCV 2023): each
            sample's squared error is weighted by min(SNR_t, gamma) / SNR_t with
            SNR_t = abar_t / (1 - abar_t), so the nearly clean steps, whose gradients
            conflict with the rest, weigh less (the paper's loss: None).
    Returns:
        The scalar loss (mean over all elements, as Ho et al. do).
    """
    if x0.ndim != 4:
        raise ValueError(f"x0 must have shape (B, C, H, W), got {tuple(x0.shape)}")
    if cond is None and drop_rate != 0.0:
        raise ValueError(f"drop_rate={drop_rate} needs a condition, but cond is None")
    gen_device = generator.device
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=gen_device)
    eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype)
    t, eps = t.to(x0.device), eps.to(x0.device)
    if cond is not None:
        cond = drop_conditions(model, cond, drop_rate, generator=generator)
    x_t = schedule.q_sample(x0, t, eps)
    prediction = model(x_t, t, cond)
    if min_snr_gamma is None:
        return F.mse_loss(prediction, eps)
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
    abar = schedule.alphas_cumprod.to(x0.device)[t]
    snr = abar / (1.0 - abar)
    weight = (snr.clamp(max=min_snr_gamma) / snr).to(prediction.dtype)
    per_sample = (prediction.float() - eps.float()).pow(2).flatten(1).mean(dim=1)
    return (weight * per_sample).mean()
