"""DDPM noise schedule, forward process and the paper's ancestral sampling step.

Time convention: the paper (eqs. 1-5, after Ho et al. 2020) numbers diffusion steps
t = 1..T. This module stores every per-step quantity in a tensor indexed 0..T-1, so
index ``i`` holds the paper's step ``t = i + 1``: ``betas[0]`` is beta_1 and
``alphas_cumprod[i]`` is abar_{i+1}. The network is fed the index ``i`` (as
guided-diffusion and diffusers do), and ``ddpm_step`` at index 0 is the paper's last
step y_1 -> y_0, which adds no noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

VarianceType = Literal["posterior", "beta"]


def _check_t(t: torch.Tensor, batch: int, num_timesteps: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"t must be an integer tensor of shape ({batch},), got {t!r}")
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    if bool((t < 0).any()) or bool((t >= num_timesteps).any()):
        raise ValueError(f"t must lie in 0..{num_timesteps - 1}, got min {int(t.min())} max {int(t.max())}")
    return t.long()


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped ``(B, 1, 1, ...)`` to broadcast over ``like``, in its dtype/device."""
    out = values.to(like.device)[t.to(like.device)]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-step quantities of a DDPM, all float64 tensors of shape ``(T,)``.

    ``alphas_cumprod_prev[i]`` is abar at index i-1, with abar = 1 before the first
    step. ``posterior_variance`` is beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    (Ho et al. 2020, eq. 7); it is 0 at index 0. Build one with ``linear_schedule`` or
    ``NoiseSchedule.from_betas``; ``q_sample`` and ``ddpm_step`` use it.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        """Derive every quantity from ``betas`` (shape ``(T,)``, each in (0, 1))."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1), got min {betas.min()} max {betas.max()}")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
            posterior_variance=betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        )

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process y_t = sqrt(abar_t) y_0 + sqrt(1 - abar_t) eps (paper, inside eq. 4).

        Args:
            x0: clean samples ``(B, C, H, W)``.
            t: integer step indices ``(B,)`` in 0..T-1 (index i is the paper's t = i + 1).
            noise: eps ~ N(0, I), same shape as ``x0``.
        Returns:
            The noised samples ``(B, C, H, W)``.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and x0 {tuple(x0.shape)} differ in shape")
        t = _check_t(t, x0.shape[0], self.num_timesteps)
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def ddpm_step(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        variance: VarianceType = "posterior",
    ) -> torch.Tensor:
        """One ancestral sampling step, the paper's eq. 5 (Ho et al. 2020, Algorithm 2).

        y_{t-1} = (y_t - (1 - alpha_t) / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sigma_t z.

        Args:
            x_t: current samples ``(B, C, H, W)``.
            t: integer step indices ``(B,)`` in 0..T-1; index 0 (the paper's t = 1) adds no noise.
            eps: predicted noise eps_theta(x_t, t), same shape as ``x_t``.
            noise: z ~ N(0, I), same shape as ``x_t``; may be None only when every t is 0.
            variance: sigma_t^2 = beta_tilde_t (``"posterior"``, the default; Ho et al.'s
                lower bound, diffusers' "fixed_small") or beta_t (``"beta"``, the upper bound).
        Returns:
            x_{t-1}, shape ``(B, C, H, W)``.
        """
        if eps.shape != x_t.shape:
            raise ValueError(f"eps shape {tuple(eps.shape)} differs from x_t's {tuple(x_t.shape)}")
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
        t = _check_t(t, x_t.shape[0], self.num_timesteps)
        # coefficients combined in float64, then cast once to the samples' dtype
        eps_coef = extract(self.betas / self.sqrt_one_minus_alphas_cumprod, t, x_t)
        inv_sqrt_alpha = extract(self.alphas.rsqrt(), t, x_t)
        mean = (x_t - eps_coef * eps) * inv_sqrt_alpha
        if not bool((t > 0).any()):
            return mean
        if noise is None or noise.shape != x_t.shape:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"noise of shape {tuple(x_t.shape)} is needed when t > 0, got {got}")
        var = (self.posterior_variance if variance == "posterior" else self.betas).clone()
        var[0] = 0.0  # no noise at index 0 (the paper's t = 1): that step returns the mean
        return mean + extract(var.sqrt(), t, x_t) * noise


def linear_schedule(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """The linear beta schedule of Ho et al. (2020), used by the paper with T = 1000.

    betas are evenly spaced from ``beta_start`` to ``beta_end`` inclusive, in float64.
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start=}, {beta_end=}")
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return NoiseSchedule.from_betas(betas)
