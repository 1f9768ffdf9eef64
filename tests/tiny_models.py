"""Tiny networks shared by the diffusion tests."""

from __future__ import annotations

import torch

from nudiff.diffusion.unet import UNet, UNetConfig

# Network settings (as in config) of the tiny models the training and synthesis tests train.
TRAINING_NET = {
    "channels": [8, 16],
    "res_blocks": 1,
    "attention_levels": [1],
    "head_channels": 8,
    "groups": 4,
    "spade_hidden_channels": 8,
}

TINY = dict(channels=(16, 32), res_blocks=1, attention_levels=(1,), head_channels=16, groups=8)


def tiny_unet(seed: int = 0, **overrides) -> UNet:
    """A tiny U-Net whose zero-initialised layers are perturbed, so its output is not 0 and
    every path matters."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(**{**TINY, "spade_hidden_channels": 8, **overrides}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()
