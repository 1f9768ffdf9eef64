"""The paper's noise-prediction U-Net, unconditional (step 1) or structure-conditioned (step 2).

Layout (guided-diffusion, the authors' code base): input conv; per level ``res_blocks``
ResBlocks (+ AttentionBlock at attention levels), then a down-sampling ResBlock except at
the last level; middle Res-Attn-Res; the decoder mirrors it with ``res_blocks + 1``
blocks per level, each consuming one encoder skip (the extra one is the skip taken after
the input conv or a down-sampling block), up-sampling after each level but the first;
GroupNorm-SiLU-zero conv head. With ``condition_channels > 0`` (paper section 2.2) every
middle and decoder residual block is a CondResBlock (SPADE norms driven by the structure),
while the encoder is exactly the unconditional one and never sees the structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nudiff.config import from_mapping
from nudiff.diffusion.blocks import (
    AttentionBlock,
    BlockSequence,
    CondResBlock,
    Downsample,
    GroupNorm,
    Resample,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_,
)
from nudiff.errors import ConfigError


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of ``UNet``; the defaults are the paper's structure model (step 1).

    Attributes:
        in_channels: channels of the noisy input (3: structure or RGB image).
        out_channels: channels of the predicted noise (3).
        channels: feature channels per level (paper: 256, 256, 512, 512, 1024, 1024).
        res_blocks: ResBlocks per encoder level (paper: 2; the decoder has one more).
        attention_levels: level indices (0-based) with self-attention (paper: the last 3,
            i.e. 32x32, 16x16, 8x8 for 256x256 inputs).
        head_channels: channels per attention head (64).
        dropout: dropout rate inside residual blocks (0.0).
        condition_channels: 0 for the unconditional model, 3 for the structure-conditioned one.
        spade_hidden_channels: hidden channels of SPADE's conv net (128, as in SPADE/SDM).
        groups: GroupNorm groups; must divide every level's channels (32).
        resblock_updown: resample inside ResBlocks (True, ref code) or with conv layers.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (256, 256, 512, 512, 1024, 1024)
    res_blocks: int = 2
    attention_levels: tuple[int, ...] = (3, 4, 5)
    head_channels: int = 64
    dropout: float = 0.0
    condition_channels: int = 0
    spade_hidden_channels: int = 128
    groups: int = 32
    resblock_updown: bool = True

    def __post_init__(self) -> None:
        for name in ("channels", "attention_levels"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"UNetConfig.{name} must be a sequence of ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        minimums = {
            "in_channels": 1,
            "out_channels": 1,
            "res_blocks": 1,
            "head_channels": 1,
            "condition_channels": 0,
            "spade_hidden_channels": 1,
            "groups": 1,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not _is_int(value, minimum):
                raise ConfigError(f"UNetConfig.{name} must be an int >= {minimum}, got {value!r}")
        if not self.channels or not all(_is_int(c, 1) for c in self.channels):
            raise ConfigError(f"UNetConfig.channels must be positive ints, got {self.channels!r}")
        if any(c % self.groups for c in self.channels):
            raise ConfigError(f"UNetConfig.channels {self.channels} must be multiples of groups={self.groups}")
        levels = range(len(self.channels))
        if len(set(self.attention_levels)) != len(self.attention_levels) or not all(
            _is_int(a, 0) and a in levels for a in self.attention_levels
        ):
            raise ConfigError(
                "UNetConfig.attention_levels must be distinct level indices in "
                f"0..{len(levels) - 1}, got {self.attention_levels!r}"
            )
        # the middle block always attends, at the last level's channels
        for level in (*self.attention_levels, len(self.channels) - 1):
            if self.channels[level] % self.head_channels:
                raise ConfigError(
                    f"UNetConfig.head_channels={self.head_channels} must divide the channels "
                    f"{self.channels[level]} of attention level {level}"
                )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"UNetConfig.dropout must lie in [0, 1), got {self.dropout!r}")
        if not isinstance(self.resblock_updown, bool):
            raise ConfigError(f"UNetConfig.resblock_updown must be a bool, got {self.resblock_updown!r}")

    @property
    def downsampling_factor(self) -> int:
        """Input height and width must be multiples of this (2 ** (levels - 1))."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists), for storing in a checkpoint."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError`` naming them."""
        return from_mapping(cls, data, "UNetConfig")


class UNet(nn.Module):
    """eps_theta(x_t, t[, structure]) of the paper; see the module docstring for the layout."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        # Recompute each block's activations in backward instead of keeping them
        # (``set_gradient_checkpointing``); a training-time setting, not a hyper-parameter.
        self.gradient_checkpointing = False
        c = config
        emb = 4 * c.channels[0]
        self.time_embed = nn.Sequential(nn.Linear(c.channels[0], emb), nn.SiLU(), nn.Linear(emb, emb))

        def res(cin: int, cout: int, *, cond: bool, resample: Resample = "none") -> ResBlock:
            # cond: a middle/decoder block, a CondResBlock when the model is conditional
            block = CondResBlock if cond and c.condition_channels else ResBlock
            kwargs: dict[str, Any] = dict(dropout=c.dropout, groups=c.groups, resample=resample)
            if block is CondResBlock:
                kwargs["condition_channels"] = c.condition_channels
                kwargs["spade_hidden_channels"] = c.spade_hidden_channels
            return block(cin, emb, cout, **kwargs)

        def down(ch: int) -> nn.Module:
            if c.resblock_updown:
                return res(ch, ch, cond=False, resample="down")
            return Downsample(ch, use_conv=True)

        def up(ch: int) -> nn.Module:
            if c.resblock_updown:
                return res(ch, ch, cond=True, resample="up")
            return Upsample(ch, use_conv=True)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, head_channels=c.head_channels, groups=c.groups)

        last = len(c.channels) - 1
        stem = nn.Conv2d(c.in_channels, c.channels[0], 3, padding=1)
        self.encoder = nn.ModuleList([BlockSequence([stem])])
        skips, cur = [c.channels[0]], c.channels[0]
        for level, ch in enumerate(c.channels):
            for _ in range(c.res_blocks):
                layers: list[nn.Module] = [res(cur, ch, cond=False)]
                cur = ch
                if level in c.attention_levels:
                    layers.append(attn(cur))
                self.encoder.append(BlockSequence(layers))
                skips.append(cur)
            if level != last:
                self.encoder.append(BlockSequence([down(cur)]))
                skips.append(cur)

        self.middle = BlockSequence([res(cur, cur, cond=True), attn(cur), res(cur, cur, cond=True)])

        self.decoder = nn.ModuleList()
        for level in reversed(range(len(c.channels))):
            ch = c.channels[level]
            for i in range(c.res_blocks + 1):
                layers = [res(cur + skips.pop(), ch, cond=True)]
                cur = ch
                if level in c.attention_levels:
                    layers.append(attn(cur))
                if level != 0 and i == c.res_blocks:
                    layers.append(up(cur))
                self.decoder.append(BlockSequence(layers))

        head = zero_(nn.Conv2d(cur, c.out_channels, 3, padding=1))
        self.out = nn.Sequential(GroupNorm(c.groups, cur), nn.SiLU(), head)

    def set_gradient_checkpointing(self, enabled: bool = True) -> UNet:
        """Trade compute for memory in training: keep only each block's input for backward.

        Every encoder, middle and decoder block then runs under
        ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved, so dropout draws
        the same mask when recomputed): the gradients are those of the plain forward,
        the activations saved for backward shrink to the block boundaries, and each
        block's forward runs twice (about a third more compute per step). It has no
        effect in eval mode or under ``torch.no_grad`` (sampling).
        """
        self.gradient_checkpointing = bool(enabled)
        return self

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, cond, use_reentrant=False)
        return block(h, emb, cond)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition y = empty of classifier-free guidance: zeros like ``cond`` (B, K, H, W).

        Zeros cannot be mistaken for a real structure: structures are scaled to [-1, 1],
        so a real structure's semantic channel is exactly -1 (background) or +1 (nucleus)
        at every pixel, never 0; SPADE resizes by nearest neighbour, which keeps that true
        at every level. The network therefore sees a distinct input when it is trained
        with dropped conditions (``drop_rate``) and learns the unconditional branch there.
        """
        if self.config.condition_channels == 0:
            raise ValueError("null_condition: this UNet is unconditional (condition_channels=0)")
        return torch.zeros_like(cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: noisy samples ``(B, in_channels, H, W)``; H, W multiples of ``downsampling_factor``.
            t: step indices ``(B,)`` in 0..T-1.
            cond: structures ``(B, condition_channels, H, W)`` (or ``null_condition``) for a
                conditional model; None for an unconditional one.
        Returns:
            eps ``(B, out_channels, H, W)``.
        """
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must have shape (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        f = c.downsampling_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"x height and width must be multiples of {f}, got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        if c.condition_channels == 0 and cond is not None:
            raise ValueError("this UNet is unconditional (condition_channels=0) but got cond")
        if c.condition_channels > 0:
            want = (x.shape[0], c.condition_channels, *x.shape[-2:])
            if cond is None or tuple(cond.shape) != want:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"cond must have shape {want}, got {got}")
        emb = self.time_embed(timestep_embedding(t, c.channels[0]).to(x.dtype))
        h, skips = x, []
        for block in self.encoder:
            h = self._run(block, h, emb, None)  # the encoder never sees the condition
            skips.append(h)
        h = self._run(self.middle, h, emb, cond)
        for block in self.decoder:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, cond)
        return self.out(h)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (works on meta-device models too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
