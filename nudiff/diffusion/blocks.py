"""U-Net building blocks shared by both networks of the paper.

The blocks follow the paper's description and, where it is silent, the authors' code
base (guided-diffusion, Dhariwal & Nichol 2021, with SDM's SPADE blocks, Wang et al.
2022): timestep embedding injected by scale-shift normalisation, zero-initialised last
convolutions, up/down-sampling inside residual blocks, 64-channel attention heads.
A ``ResBlock`` normalises with GroupNorm (the encoder's ResBlock) or, when given
``condition_channels > 0``, with SPADE (the decoder's CondResBlock, "SPADE-SiLU-Conv").
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Resample = Literal["none", "up", "down"]


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it.

    Zeroing the last layer of each residual branch makes every block start as the
    identity (and the whole U-Net start by predicting eps = 0), as in guided-diffusion.
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of step indices ``t`` ``(B,)`` (Vaswani et al. 2017).

    The first half holds cosines, the second sines, at frequencies
    max_period^(-k / (dim/2)); an odd ``dim`` gets a trailing zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _low_precision_channels_last(x: torch.Tensor) -> bool:
    return (
        x.dtype in (torch.bfloat16, torch.float16)
        and x.ndim == 4
        and x.device.type == "cpu"
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


class GroupNorm(nn.GroupNorm):
    """GroupNorm with the norm call signature ``(x, cond)``; ``cond`` is ignored.

    A bf16/fp16 input in channels_last layout on the CPU (training with ``cpu_bf16`` and
    ``channels_last``) is normalised in float32: PyTorch's low-precision channels_last
    GroupNorm backward on the CPU is about 8x slower than its float32 one. Every other
    input (float32, or contiguous) takes the plain path, bit for bit.
    """

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if _low_precision_channels_last(x):
            x = x.float()
        return super().forward(x)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019).

    out = GroupNorm(x) * (1 + gamma(c)) + beta(c), where the GroupNorm has no affine
    parameters and gamma, beta ``(B, channels, h, w)`` come from a small conv net
    (3x3 conv - ReLU - two 3x3 convs) applied to the condition resized to x's size.

    Resizing is nearest-neighbour, as in SPADE and SDM: the structure's semantic channel
    is exactly -1 or +1, and nearest keeps it so at every level, whereas bilinear would
    blend nucleus borders into values near 0, the value of the null condition
    (``UNet.null_condition``), and blur the thin distance-map ridges between nuclei.
    """

    def __init__(self, channels: int, condition_channels: int, *, groups: int, hidden_channels: int) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(condition_channels, hidden_channels, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden_channels, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden_channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, channels, h, w)``, cond ``(B, K, H, W)`` -> ``(B, channels, h, w)``."""
        if cond is None:
            raise ValueError("SPADE needs a condition, got None")
        cond = F.interpolate(cond.to(x.dtype), size=x.shape[-2:], mode="nearest")
        hidden = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


def make_norm(
    channels: int, *, groups: int, condition_channels: int = 0, spade_hidden_channels: int = 128
) -> GroupNorm | SPADE:
    """GroupNorm when ``condition_channels == 0``, SPADE driven by the condition otherwise."""
    if condition_channels == 0:
        return GroupNorm(groups, channels)
    return SPADE(channels, condition_channels, groups=groups, hidden_channels=spade_hidden_channels)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, *, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv if ``use_conv``."""

    def __init__(self, channels: int, *, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-[resample]-Conv, then norm with timestep scale-shift,
    SiLU, dropout and a zero-initialised Conv, added to a skip path.

    The timestep embedding gives a per-channel (scale, shift) applied after the second
    norm: h = norm(h) * (1 + scale) + shift (guided-diffusion's use_scale_shift_norm).
    With ``condition_channels > 0`` both norms are SPADE (the paper's CondResBlock).
    ``resample`` up/down-samples inside the block (guided-diffusion's resblock_updown);
    the skip path is resampled alike and passes a 1x1 conv when channels change.
    """

    def __init__(
        self,
        in_channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        dropout: float = 0.0,
        groups: int = 32,
        condition_channels: int = 0,
        spade_hidden_channels: int = 128,
        resample: Resample = "none",
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if resample not in ("none", "up", "down"):
            raise ValueError(f"resample must be 'none', 'up' or 'down', got {resample!r}")
        norm_kw = dict(
            groups=groups,
            condition_channels=condition_channels,
            spade_hidden_channels=spade_hidden_channels,
        )
        self.in_norm = make_norm(in_channels, **norm_kw)
        self.resample: nn.Module = {
            "none": nn.Identity(),
            "up": Upsample(in_channels, use_conv=False),
            "down": Downsample(in_channels, use_conv=False),
        }[resample]
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.out_norm = make_norm(out_channels, **norm_kw)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip: nn.Module = nn.Identity()
        if out_channels != in_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, in, H, W)``, emb ``(B, emb_channels)``, cond ``(B, K, H0, W0)`` or None."""
        h = F.silu(self.in_norm(x, cond))
        h = self.in_conv(self.resample(h))
        x = self.resample(x)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h, cond) * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class CondResBlock(ResBlock):
    """The paper's CondResBlock: a ``ResBlock`` whose norms are SPADE (needs a condition)."""

    def __init__(
        self,
        in_channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        condition_channels: int,
        **kwargs: Any,
    ) -> None:
        if condition_channels < 1:
            raise ValueError(f"CondResBlock needs condition_channels >= 1, got {condition_channels}")
        kwargs["condition_channels"] = condition_channels
        super().__init__(in_channels, emb_channels, out_channels, **kwargs)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection.

    GroupNorm, a 1x1 conv to q, k, v, ``scaled_dot_product_attention`` with
    ``channels // head_channels`` heads, and a zero-initialised 1x1 output conv.
    """

    def __init__(self, channels: int, *, head_channels: int = 64, groups: int = 32) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"channels={channels} is not a multiple of head_channels={head_channels}")
        self.heads = channels // head_channels
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, height * width)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, head_channels)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, height, width))


class BlockSequence(nn.ModuleList):
    """Blocks applied in order: residual blocks get ``(h, emb, cond)``, the others ``h``."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        for block in self:
            h = block(h, emb, cond) if isinstance(block, ResBlock) else block(h)
        return h
