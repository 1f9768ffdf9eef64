"""Hover-Net inference on whole images of any size by overlapping tiles (spec section 6).

Both network variants are run the same way: the image is padded by mirror reflection, cut into
``tile``-sized inputs whose *kept* centres of ``keep`` pixels abut exactly, and the kept centres
are stitched into the output. Each output pixel therefore comes from exactly one tile and no
blending is needed.

* valid padding (``same_padding=False``; "fast" 256 -> 164, "original" 270 -> 80): the network
  output is the kept centre, so ``keep = config.output_size(tile)`` and the image is padded by
  ``(tile - keep) // 2`` on the top/left: HoVer-Net's own tiling (vqdang/hover_net
  ``infer/tile.py``, ``_prepare_patching``: reflect padding, step = output size).
* same padding: the output has the tile's size, but pixels near a tile border saw zero padding
  instead of image context; only the centre ``tile - 2 * margin`` is kept (default margin a
  quarter tile), so every seam lies where both neighbouring tiles were ``margin`` pixels away
  from their borders. With ``margin`` at least the receptive-field radius and steps a multiple
  of the network's total stride (8), the stitched result equals one pass over the whole padded
  image (tested).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from nudiff.segmentation.hovernet.network import HoVerNet
from nudiff.structure import (
    HORIZONTAL,
    N_CHANNELS,
    SEMANTIC,
    VERTICAL,
    instances_from_structure,
)

NUCLEUS_CLASS = 1  # channel of the "np" logits that stands for nucleus pixels

logger = logging.getLogger(__name__)

# an image -> (its instance map, network seconds, post-processing seconds)
Predictor = Callable[[np.ndarray], tuple[np.ndarray, float, float]]


def tile_geometry(model: HoVerNet, tile: int, margin: int | None = None) -> tuple[int, int]:
    """``(offset, keep)``: where the kept centre starts inside a tile input, and its size.

    Args:
        model: the network (its config fixes the output size of a ``tile`` input).
        tile: input tile side in pixels (a size the network takes, e.g. a multiple of 8).
        margin: same-padding models only: pixels dropped on each side of a tile's output
            (default ``tile // 4``); valid-padding models fix it themselves (must be None).

    Raises:
        ValueError: the network cannot take ``tile``, or ``margin`` leaves nothing to keep.
    """
    config = model.config
    out = config.output_size(tile)  # raises ValueError naming a bad tile size
    if not config.same_padding:
        if margin is not None:
            raise ValueError(
                f"margin={margin}: a valid-padding Hover-Net fixes its own margin "
                f"((tile - output) / 2 = {(tile - out) / 2}); pass margin=None"
            )
        return (tile - out) // 2, out
    margin = tile // 4 if margin is None else margin
    if not isinstance(margin, int) or margin < 0 or tile - 2 * margin < 1:
        raise ValueError(f"margin must be an int in [0, {(tile - 1) // 2}] for tile {tile}, got {margin!r}")
    return margin, tile - 2 * margin


def _axis_layout(length: int, tile: int, offset: int, keep: int) -> tuple[int, int, list[int]]:
    """Padding before/after one image axis and the tile starts (in padded coordinates)."""
    n_tiles = math.ceil(length / keep)
    pad_after = n_tiles * keep + (tile - keep) - offset - length
    return offset, pad_after, [i * keep for i in range(n_tiles)]


def _forward_tiles(model: HoVerNet, tiles: np.ndarray, device: torch.device) -> np.ndarray:
    """``(B, T, T, 3)`` uint8 -> ``(B, T', T', 3)`` float32 structure (nucleus probability, h, v)."""
    x = torch.from_numpy(tiles).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    out = model(x)
    prob = out["np"].float().softmax(dim=1)[:, NUCLEUS_CLASS]
    hv = out["hv"].float()
    structure = torch.empty((*prob.shape, N_CHANNELS), dtype=torch.float32, device=prob.device)
    structure[..., SEMANTIC] = prob
    structure[..., HORIZONTAL] = hv[:, 0]
    structure[..., VERTICAL] = hv[:, 1]
    return structure.cpu().numpy()


def predict_structure(
    model: HoVerNet,
    rgb: np.ndarray,
    *,
    tile: int,
    margin: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Nuclei structure of a whole image by tiled inference.

    The model runs in eval mode without gradients; its train/eval mode is restored afterwards.

    Args:
        model: a :class:`HoVerNet` (on ``device``).
        rgb: ``(H, W, 3)`` uint8 image of any size.
        tile: input tile side; see :func:`tile_geometry`.
        margin: same-padding models: pixels dropped at each tile side (default ``tile // 4``).
        batch_size: tiles per forward pass.
        device: where tiles are sent; default the model's device.

    Returns:
        ``(H, W, 3)`` float32: channel ``SEMANTIC`` the nucleus probability (softmax of the
        ``np`` logits), ``HORIZONTAL`` and ``VERTICAL`` the ``hv`` maps.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    offset, keep = tile_geometry(model, tile, margin)
    crop = 0 if not model.config.same_padding else offset  # where the kept centre starts in an output
    height, width = rgb.shape[:2]
    top, bottom, ys = _axis_layout(height, tile, offset, keep)
    left, right, xs = _axis_layout(width, tile, offset, keep)
    padded = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    out = np.empty((len(ys) * keep, len(xs) * keep, N_CHANNELS), dtype=np.float32)
    corners = [(y, x) for y in ys for x in xs]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(corners), batch_size):
                batch = corners[start : start + batch_size]
                tiles = np.stack([padded[y : y + tile, x : x + tile] for y, x in batch])
                pred = _forward_tiles(model, tiles, device)[:, crop : crop + keep, crop : crop + keep]
                for (y, x), piece in zip(batch, pred):
                    out[y : y + keep, x : x + keep] = piece
    finally:
        model.train(was_training)
    return out[:height, :width]


def predict_instances(
    model: HoVerNet,
    rgb: np.ndarray,
    *,
    tile: int,
    watershed: Mapping[str, Any] | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Instance map of a whole image: :func:`predict_structure`, then HoVer-Net's
    marker-controlled watershed (:func:`nudiff.structure.instances_from_structure`).

    Args:
        watershed: keyword arguments of ``instances_from_structure`` (its defaults when None).
        model, rgb, tile, margin, batch_size, device: as :func:`predict_structure`.

    Returns:
        ``(H, W)`` int32, 0 = background, nuclei 1..n.
    """
    structure = predict_structure(model, rgb, tile=tile, margin=margin, batch_size=batch_size, device=device)
    return instances_from_structure(structure, **dict(watershed or {}))


def hovernet_predictor(
    model: HoVerNet,
    meta: Mapping[str, Any],
    *,
    tile: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    watershed: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> Predictor:
    """Hover-Net on whole images by overlapping tiles, then the marker-controlled watershed.

    Args:
        meta: the model file's entries (:func:`nudiff.segmentation.hovernet.train.load_hovernet`).
        tile: inference tile side (default: the model's training patch size); margin: see
            :func:`predict_structure`; batch_size: tiles per pass.
        watershed: ``instances_from_structure`` arguments; default those the model was validated with.
    """
    tile = int(meta["input_size"]) if tile is None else tile
    watershed = dict(meta["training"].get("watershed", {}) if watershed is None else watershed)
    logger.info("Hover-Net on tiles of %d px", tile)

    def predict(rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        tic = time.perf_counter()
        structure = predict_structure(model, rgb, tile=tile, margin=margin, batch_size=batch_size, device=device)
        toc = time.perf_counter()
        inst = instances_from_structure(structure, **watershed)
        return inst, toc - tic, time.perf_counter() - toc

    return predict
