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


def train_tiny_segmenter(prepared_dir, out_dir, iterations=2, lr=1e-4):
    """A tiny Hover-Net trained for ``iterations`` steps on the 32 px patches of a prepared dataset; its file."""
    from nudiff.datasets.prepare import read_manifest
    from nudiff.patches import build_patch_index
    from nudiff.samples import real_samples, write_sample_table
    from nudiff.segmentation.hovernet import HoVerNetConfig
    from nudiff.segmentation.registry import train_segmenter

    manifest = read_manifest(prepared_dir / "manifest.csv")
    write_sample_table(real_samples(build_patch_index(manifest, size=32, stride=32), manifest), out_dir / "s.csv")
    config = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True, decoder_units=(2, 1))
    train_segmenter(
        out_dir / "s.csv",
        out_dir / "model.pt",
        network=config.to_dict(),
        checkpoint_dir=out_dir / "ckpt",
        training={
            "iterations": iterations,
            "batch_size": 2,
            "lr": lr,
            "val_fraction": 0.0,
            "watershed": {"min_object_size": 3},
        },
    )
    return out_dir / "model.pt"
