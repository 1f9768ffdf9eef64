"""Training augmentation for the segmenters, applied to an (image, instance map) pair.

It runs before the targets are computed: the instance map is transformed with the image and
the nuclei structure (semantic, horizontal and vertical maps; spec section 3) is then computed
from the transformed map, so the h/v targets follow HoVer-Net's definition exactly (a rotated
h map is not simply the old v map: HoVer-Net rounds each nucleus' centre of mass).

Two parts, every random draw from one ``torch.Generator``:

* geometry: one of the 8 flips/rotations of the square (:func:`nudiff.imaging.dihedral`),
  applied to image and map alike;
* colour (image only): brightness, contrast, saturation and hue shifts in a random order.
  The default ranges are HoVer-Net's training ranges (vqdang/hover_net ``dataloader/augs.py``
  and ``train_loader.py``): brightness +-26 of 255, contrast factor 0.75..1.25 around the
  per-channel mean, saturation factor 0.8..1.2 against the grey image, hue +-8 on OpenCV's
  0..180 hue scale (+-8/180 of the colour circle);
* HoVer-Net's shape and input augmentations (same files), each switchable: an affine warp of
  image and map (per-axis scale 0.8..1.2, translation +-1%, shear +-5 degrees, rotation
  +-179 degrees; the map by nearest neighbour, outside pixels black and background, as
  imgaug's ``Affine(order=0)``) and one of Gaussian blur, median blur (kernel 1, 3 or 5) or
  additive Gaussian noise (std up to 0.05 x 255, per channel for half the images).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2.functional import adjust_hue

from nudiff.imaging import dihedral

N_DIHEDRAL = 8
BRIGHTNESS = 26.0 / 255.0
CONTRAST = 0.25
SATURATION = 0.2
HUE = 8.0 / 180.0
# ITU-R BT.601 luma weights, as OpenCV's RGB2GRAY (HoVer-Net's saturation reference)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_N_COLOUR_OPS = 4
# HoVer-Net's shape augmentation ranges (imgaug Affine)
AFFINE_SCALE = (0.8, 1.2)
AFFINE_TRANSLATE = 0.01
AFFINE_SHEAR_DEG = 5.0
AFFINE_ROTATE_DEG = 179.0
NOISE_STD = 0.05 * 255.0
MAX_KERNEL_HALF = 2  # kernels 1, 3, 5


def _rand(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_affine(rgb: np.ndarray, inst: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HoVer-Net's affine warp of an (image, instance map) pair about the patch centre.

    The image is interpolated bilinearly, the map by nearest neighbour (ids stay ids);
    pixels from outside the patch are black and background. Draws 6 numbers.
    """
    sx, sy = _rand(generator, *AFFINE_SCALE), _rand(generator, *AFFINE_SCALE)
    tx, ty = (_rand(generator, -AFFINE_TRANSLATE, AFFINE_TRANSLATE) * n for n in inst.shape[::-1])
    shear = math.radians(_rand(generator, -AFFINE_SHEAR_DEG, AFFINE_SHEAR_DEG))
    angle = math.radians(_rand(generator, -AFFINE_ROTATE_DEG, AFFINE_ROTATE_DEG))
    # forward map in (row, col) = (y, x): rotate(shear(scale(p)))
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, sin], [-sin, cos]])
    shear_m = np.array([[1.0, 0.0], [math.tan(shear), 1.0]])
    forward = rotate @ shear_m @ np.diag([sy, sx])
    inverse = np.linalg.inv(forward)
    centre = (np.array(inst.shape, dtype=np.float64) - 1.0) / 2.0
    offset = centre - inverse @ (centre + np.array([ty, tx]))
    warped_inst = ndimage.affine_transform(inst, inverse, offset=offset, order=0, mode="constant", cval=0)
    warped_rgb = np.stack(
        [
            ndimage.affine_transform(rgb[..., c].astype(np.float32), inverse, offset=offset, order=1, cval=0.0)
            for c in range(rgb.shape[-1])
        ],
        axis=-1,
    )
    return np.clip(np.rint(warped_rgb), 0, 255).astype(np.uint8), warped_inst


def blur_or_noise(rgb: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """One of HoVer-Net's input augmentations, chosen uniformly: Gaussian blur or median blur
    with a kernel of 1, 3 or 5 pixels (OpenCV's sigma for that kernel), or additive Gaussian
    noise with std U(0, 0.05 x 255), the same on every channel or (half the time) per channel.
    Draws 4 numbers plus the noise itself."""
    choice = int(torch.randint(0, 3, (), generator=generator))
    k_y, k_x = (2 * int(torch.randint(0, MAX_KERNEL_HALF + 1, (), generator=generator)) + 1 for _ in range(2))
    std = _rand(generator, 0.0, NOISE_STD)
    per_channel = bool(torch.rand((), generator=generator).item() < 0.5)
    x = rgb.astype(np.float32)
    if choice == 0:
        sigmas = [0.3 * ((k - 1) * 0.5 - 1) + 0.8 if k > 1 else 0.0 for k in (k_y, k_x)]
        x = ndimage.gaussian_filter(x, sigma=(*sigmas, 0.0), truncate=2.0)
    elif choice == 1:
        x = ndimage.median_filter(x, size=(k_x, k_x, 1), mode="reflect")
    else:
        shape = rgb.shape if per_channel else (*rgb.shape[:2], 1)
        noise = torch.randn(shape, generator=generator).numpy() * std
        x = x + noise
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


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
    flips: bool | str = True,
    affine: bool = False,
    blur_noise: bool = False,
    brightness: float = BRIGHTNESS,
    contrast: float = CONTRAST,
    saturation: float = SATURATION,
    hue: float = HUE,
) -> tuple[np.ndarray, np.ndarray]:
    """HoVer-Net's augmentation of a pair: optional affine warp (:func:`random_affine`), a
    random flip/rotation, optional blur or noise (:func:`blur_or_noise`), then
    :func:`colour_jitter` of the image.

    Args:
        rgb: ``(S, S, 3)`` uint8 image (square when ``flips``: rotations swap the axes).
        inst: ``(S, S)`` int instance map aligned with ``rgb``.
        generator: the source of every draw; same state in, same pair out.
        flips: ``True`` or ``"dihedral"``: one of the 8 symmetries of the square (HoVer-Net);
            ``"hv"``: a horizontal and a vertical flip, each with probability 0.5 (PFF-Net's
            reference, maskrcnn-benchmark's two ``RandomFlip`` transforms); ``False``: none.
        affine: warp image and map by HoVer-Net's random affine transform first.
        blur_noise: blur or add noise to the image (HoVer-Net's input augmentation).
        brightness, contrast, saturation, hue: see :func:`colour_jitter`.

    Returns:
        ``(rgb, inst)``: ``(S, S, 3)`` uint8 and ``(S, S)`` with the input's dtype.
    """
    if rgb.shape[:2] != inst.shape or inst.ndim != 2:
        raise ValueError(f"rgb {rgb.shape} and inst {inst.shape} must be (H, W, 3) and (H, W)")
    if affine:
        rgb, inst = random_affine(rgb, inst, generator)
    if flips == "hv":
        horizontal, vertical = (torch.rand(2, generator=generator) < 0.5).tolist()
        if horizontal:
            rgb, inst = rgb[:, ::-1], inst[:, ::-1]
        if vertical:
            rgb, inst = rgb[::-1], inst[::-1]
        rgb, inst = np.ascontiguousarray(rgb), np.ascontiguousarray(inst)
    elif flips in (True, "dihedral"):
        op = int(torch.randint(0, N_DIHEDRAL, (), generator=generator))
        rgb, inst = dihedral(rgb, op), dihedral(inst, op)
    elif flips is not False:
        raise ValueError(f"flips must be True, False, 'dihedral' or 'hv', got {flips!r}")
    if blur_noise:
        rgb = blur_or_noise(rgb, generator)
    rgb = colour_jitter(rgb, generator, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    return rgb, inst
