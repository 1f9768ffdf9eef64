"""Read and write RGB images and integer instance maps (TIFF and PNG).

Readers turn every way a file can be wrong (missing, truncated, wrong channel
count, float labels) into an :class:`~nudiff.errors.InputDataError` that names
the file, instead of a traceback from deep inside tifffile or Pillow. Writers
go through :func:`~nudiff.io.atomic.atomic_path`.

MoNuSeg ships its images as LZW (training set) and PackBits (test set)
compressed TIFFs; tifffile decodes both with the imagecodecs package.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from nudiff.errors import InputDataError
from nudiff.io.atomic import atomic_path

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
IMAGE_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES

_INT32_MAX = int(np.iinfo(np.int32).max)
_RGB = 3
_RGBA = 4


def _check_readable(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputDataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {IMAGE_SUFFIXES}")
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise InputDataError(f"{path}: TIFF holds no image")
        # Only the first page: MoNuSeg TIFFs are single images, and a pyramid
        # or stack would otherwise be read as extra channels.
        page = tif.pages[0]
        array = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
    return array


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        if img.mode == "P":
            # A palette image is colour data stored indirectly; expand it.
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return np.asarray(img)


def _read_array(path: Path) -> np.ndarray:
    """Decode ``path`` into an array, wrapping every decoder failure."""
    _check_readable(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _read_tiff(path)
        return _read_png(path)
    except InputDataError:
        raise
    except Exception as exc:  # tifffile, imagecodecs and Pillow raise many types
        raise InputDataError(f"{path}: cannot be decoded (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image from a TIFF or PNG file.

    An alpha channel is dropped. Grey-level images and any other channel count
    are rejected, as are non-8-bit images (rescaling them would be a guess).

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        InputDataError: naming the file, when it is missing, undecodable, or
            not an 8-bit RGB(A) image.
    """
    path = Path(path)
    array = _read_array(path)
    if array.ndim != 3 or array.shape[-1] not in (_RGB, _RGBA):
        raise InputDataError(f"{path}: expected an RGB or RGBA image (H, W, 3|4), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise InputDataError(f"{path}: expected 8-bit (uint8) pixels, got {array.dtype}")
    return np.ascontiguousarray(array[..., :_RGB])


def read_instance_map(path: str | os.PathLike) -> np.ndarray:
    """Read a nuclei instance map (0 = background, k > 0 = nucleus k).

    Any unsigned or signed integer type is accepted as long as the values are
    non-negative and fit int32 (ids above 65535 are allowed).

    Returns:
        ``(H, W)`` int32 array.

    Raises:
        InputDataError: naming the file, when it is missing, undecodable, not
            a single-channel integer image, or holds negative or too-large ids.
    """
    path = Path(path)
    array = _read_array(path)
    if array.ndim != 2:
        raise InputDataError(f"{path}: expected a single-channel instance map (H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputDataError(f"{path}: instance map must hold integers, got {array.dtype}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise InputDataError(f"{path}: instance map has a negative id {low}")
        if high > _INT32_MAX:
            raise InputDataError(f"{path}: instance id {high} does not fit int32")
    return array.astype(np.int32, copy=False)


def _check_suffix(path: Path, allowed: tuple[str, ...]) -> None:
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{path}: suffix {path.suffix!r} not supported here; use one of {allowed}")


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB image as PNG, atomically."""
    path = Path(path)
    _check_suffix(path, PNG_SUFFIXES)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != _RGB or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def write_instance_map(path: str | os.PathLike, inst: np.ndarray) -> None:
    """Write an ``(H, W)`` instance map as a zlib-compressed int32 TIFF, atomically.

    Raises:
        ValueError: if ``inst`` is not 2-D, not integer, negative, or beyond int32.
    """
    path = Path(path)
    _check_suffix(path, TIFF_SUFFIXES)
    inst = np.asarray(inst)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"inst must be an (H, W) integer array, got {inst.shape} {inst.dtype}")
    if inst.size and (int(inst.min()) < 0 or int(inst.max()) > _INT32_MAX):
        raise ValueError(f"inst ids must lie in [0, {_INT32_MAX}], got [{int(inst.min())}, {int(inst.max())}]")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, inst.astype(np.int32, copy=False), compression="zlib")
