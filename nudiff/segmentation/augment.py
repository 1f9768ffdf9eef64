"""Training augmentation for the segmenters, applied to an (image, instance map) pair.

It runs before the targets are computed: the instance map is transformed with the image and
the nuclei structure (semantic, horizontal and vertical maps; spec section 3) is then computed
from the transformed map, so the h/v targets follow HoVer-Net's definition exactly (a rotated
h map is not simply the old v map: HoVer-Net rounds each nucleus' centre of mass).

Two parts, every random draw from one ``torch.Generator``:

* geometry: one of the 8 flips/rotations of the square (:func:`nudiff.diffusion.training.dihedral`),
  applied to image and map alike;
* colour (image only): brightness, contrast, saturation and hue shifts in a random order.
  The default ranges are HoVer-Net's training ranges (vqdang/hover_net ``dataloader/augs.py``
  and ``train_loader.py``): brightness +-26 of 255, contrast factor 0.75..1.25 around the
  per-channel mean, saturation factor 0.8..1.2 against the grey image, hue +-8 on OpenCV's
  0..180 hue scale (+-8/180 of the colour circle). HoVer-Net's blur/noise and affine
  (scale, shear, free rotation) augmentations are not reproduced.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2.functional import adjust_hue

from nudiff.diffusion.training import dihedral

N_DIHEDRAL = 8
BRIGHTNESS = 26.0 / 255.0
CONTRAST = 0.25
SATURATION = 0.2
HUE = 8.0 / 180.0
# ITU-R BT.601 luma weights, as OpenCV's RGB2GRAY (HoVer-Net's saturation reference)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_N_COLOUR_OPS = 4


def _uniform(generator: torch.Generator, strength: float) -> float:
    """A draw from U(-strength, strength); always consumes one number, so the stream of draws
    does not depend on which strengths are zero."""
    return (2.0 * torch.rand((), generator=generator).item() - 1.0) * strength


def _check_strengths(brightness: float, contrast: float, saturation: float, hue: float) -> None:
    for name, value, high in (
        ("brightness", brightness, 1.0),
        ("contrast", contrast, 1.0),
        ("saturation", saturation, 1.0),
        ("hue", hue, 0.5),
    ):
        if not 0.0 <= value <= high:  # also rejects NaN
            raise ValueError(f"colour jitter {name} must be in [0, {high}], got {value!r}")
    if contrast >= 1.0 or saturation >= 1.0:
        raise ValueError(
            f"contrast ({contrast}) and saturation ({saturation}) must be below 1 "
            "(a factor of 1 - strength must stay positive)"
        )


def colour_jitter(
    rgb: np.ndarray,
    generator: torch.Generator,
    *,
    brightness: float = BRIGHTNESS,
    contrast: float = CONTRAST,
    saturation: float = SATURATION,
    hue: float = HUE,
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes, in a random order.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        generator: the source of every draw (4 values and the order).
        brightness: add U(-b, b) (fraction of 255) to every channel; default 26/255.
        contrast: scale each channel's deviation from its mean by U(1 - c, 1 + c); default 0.25.
        saturation: scale the deviation from the grey (luma) image by U(1 - s, 1 + s); default 0.2.
        hue: rotate the hue by U(-h, h) turns of the colour circle; default 8/180.
            Every strength 0 turns its operation off.

    Returns:
        ``(H, W, 3)`` uint8, clipped to [0, 255] after each operation as HoVer-Net does.
    """
    _check_strengths(brightness, contrast, saturation, hue)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    order = torch.randperm(_N_COLOUR_OPS, generator=generator).tolist()
    shifts = [_uniform(generator, s) for s in (brightness, contrast, saturation, hue)]
    x = rgb.astype(np.float32)
    for op in order:
        value = shifts[op]
        if value == 0.0:
            continue
        if op == 0:
            x = x + 255.0 * value
        elif op == 1:
            mean = x.mean(axis=(0, 1), keepdims=True)
            x = mean + (1.0 + value) * (x - mean)
        elif op == 2:
            grey = (x @ _LUMA)[..., None]
            x = grey + (1.0 + value) * (x - grey)
        else:
            # torchvision's hue rotation (faster than skimage's HSV round trip)
            image = torch.from_numpy(x / 255.0).permute(2, 0, 1)
            x = (adjust_hue(image, value).permute(1, 2, 0).numpy() * 255.0).astype(np.float32)
        x = np.clip(x, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def augment_pair(
    rgb: np.ndarray,
    inst: np.ndarray,
    generator: torch.Generator,
    *,
    flips: bool = True,
    brightness: float = BRIGHTNESS,
    contrast: float = CONTRAST,
    saturation: float = SATURATION,
    hue: float = HUE,
) -> tuple[np.ndarray, np.ndarray]:
    """One random flip/rotation of the pair, then :func:`colour_jitter` of the image.

    Args:
        rgb: ``(S, S, 3)`` uint8 image (square when ``flips``: rotations swap the axes).
        inst: ``(S, S)`` int instance map aligned with ``rgb``.
        generator: the source of every draw; same state in, same pair out.
        flips: draw one of the 8 symmetries of the square (else keep the geometry).
        brightness, contrast, saturation, hue: see :func:`colour_jitter`.

    Returns:
        ``(rgb, inst)``: ``(S, S, 3)`` uint8 and ``(S, S)`` with the input's dtype.
    """
    if rgb.shape[:2] != inst.shape or inst.ndim != 2:
        raise ValueError(f"rgb {rgb.shape} and inst {inst.shape} must be (H, W, 3) and (H, W)")
    if flips:
        op = int(torch.randint(0, N_DIHEDRAL, (), generator=generator))
        rgb, inst = dihedral(rgb, op), dihedral(inst, op)
    rgb = colour_jitter(rgb, generator, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    return rgb, inst
