"""Classifier-free guidance (Ho & Salimans 2021), as the paper's eq. 6 writes it."""

from __future__ import annotations

import math

import torch

from nudiff.diffusion.loss import EpsModel


def guided_eps(
    model: EpsModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """eps' = (w + 1) eps(x, t, y) - w eps(x, t, null), with w = ``guidance_scale``.

    The conditional and unconditional predictions come from ONE forward pass over the
    doubled batch ``[x, x]`` with conditions ``[cond, model.null_condition(cond)]``.
    With w = 0 only the conditional pass runs, so the result is exactly ``model(x, t, cond)``.
    With ``cond=None`` (an unconditional model) the plain prediction ``model(x, t)`` is
    returned and w has no effect.

    Args:
        model: noise predictor with ``null_condition``.
        x: noisy samples ``(B, C, H, W)``.
        t: integer step indices ``(B,)``.
        cond: structures ``(B, K, H, W)`` or None.
        guidance_scale: w >= 0 (paper: 2).
    Returns:
        The guided noise prediction ``(B, C, H, W)``.
    """
    w = float(guidance_scale)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale}")
    if cond is None:
        return model(x, t, None)
    if w == 0.0:
        return model(x, t, cond)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, model.null_condition(cond)]))
    eps_cond, eps_null = both.chunk(2)
    return (w + 1.0) * eps_cond - w * eps_null
