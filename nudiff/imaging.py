"""Image helpers both stages share: the symmetries of the square, the networks' value range and
the batch layout.

Kept apart from either stage so that the segmentation stage's augmentation does not import the
diffusion models (and the diffusion stage not the segmenter) to flip a patch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch


def dihedral(array: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 symmetries of the square on the first two axes: ``op`` in 0..7."""
    if not 0 <= op < 8:
        raise ValueError(f"op must be in 0..7, got {op}")
    out = np.rot90(array, k=op % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if op >= 4 else out)


def image_to_model_range(rgb: np.ndarray) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 -> float32 in [-1, 1]."""
    return rgb.astype(np.float32) / 127.5 - 1.0


def image_from_model_range(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`image_to_model_range`, clipped and rounded to uint8."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def channels_first(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """``N x (S, S, C)`` arrays -> one ``(N, C, S, S)`` tensor, as the networks take it."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def transfer_colour(rgb: np.ndarray, target_mean: Sequence[float], target_std: Sequence[float]) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer: the CIELAB channels of an ``(H, W, 3)`` uint8 image
    shifted and scaled to ``target_mean`` / ``target_std`` (L*, a*, b*); uint8 back, clipped to sRGB.

    A flat channel (std below 1e-3) takes the target mean and no spread.
    """
    from skimage.color import lab2rgb, rgb2lab  # keep skimage out of this module's import

    lab = rgb2lab(rgb)
    mean = lab.reshape(-1, 3).mean(axis=0)
    std = lab.reshape(-1, 3).std(axis=0)
    scale = np.where(std > 1e-3, np.asarray(target_std, float) / np.maximum(std, 1e-3), 0.0)
    moved = (lab - mean) * scale + np.asarray(target_mean, float)
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        out = lab2rgb(moved)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
