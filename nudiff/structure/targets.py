"""Nuclei structures from instance maps (the "targets" half of HoVer-Net's domain code).

A nuclei structure (paper section 3, SPEC.md section 3) is a float32 ``(H, W, 3)`` array:
channel ``SEMANTIC`` is 1 inside any nucleus and 0 outside; channels ``HORIZONTAL`` and
``VERTICAL`` hold, for every nucleus pixel, its horizontal (vertical) offset from the
nucleus centre of mass, scaled per nucleus into [-1, 1] (HoVer-Net, Graham et al. 2019).
The diffusion model works on the same structure mapped into [-1, 1] on every channel
(:func:`structure_to_model_range` and back with :func:`structure_from_model_range`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SEMANTIC = 0
"""Channel index of the nucleus/background map."""
HORIZONTAL = 1
"""Channel index of the horizontal (x, along the width) distance map."""
VERTICAL = 2
"""Channel index of the vertical (y, along the height) distance map."""
N_CHANNELS = 3
"""Number of channels of a nuclei structure."""


def _relabel_consecutive(inst_map: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary non-negative ids onto 1..n (0 stays background); return (labels, n)."""
    largest = int(inst_map.max())
    if largest <= max(inst_map.size, 1 << 16):  # a lookup table is cheaper than sorting
        small_ids = inst_map.astype(np.intp, copy=False)
        present = np.bincount(small_ids.ravel(), minlength=largest + 1) > 0
        present[0] = False
        lookup = np.cumsum(present) * present
        return lookup[small_ids], int(present.sum())
    ids, inverse = np.unique(inst_map, return_inverse=True)
    labels = inverse.reshape(inst_map.shape).astype(np.int64, copy=False)
    if ids[0] != 0:  # no background pixel: the smallest id became 0, shift all up
        return labels + 1, len(ids)
    return labels, len(ids) - 1


def _scale_offsets(offsets: np.ndarray) -> np.ndarray:
    """Scale negative offsets by their largest magnitude and positive ones by their maximum.

    HoVer-Net scales the two signs separately, so both ends of a nucleus reach -1 and +1
    even when the rounded centre is off-centre. Done in float32, as HoVer-Net does.
    """
    out = offsets.astype(np.float32)
    negative = out < 0
    positive = out > 0
    if negative.any():
        out[negative] /= -out[negative].min()
    if positive.any():
        out[positive] /= out[positive].max()
    return out


def nuclei_structure(inst_map: np.ndarray) -> np.ndarray:
    """Turn an instance map into a 3-channel nuclei structure (SPEC.md section 3).

    Follows HoVer-Net's ``gen_instance_hv_map`` (vqdang/hover_net,
    ``models/hovernet/targets.py``) exactly, nucleus by nucleus:

    - the centre of mass of the nucleus mask is rounded half up to a pixel ``(cy, cx)``
      (``int(com + 0.5)``);
    - a pixel in column ``x`` gets the horizontal offset ``x + 1 - cx`` and in row ``y``
      the vertical offset ``y + 1 - cy``. HoVer-Net builds its coordinate range from 1
      (``np.arange(1, n + 1)``) but subtracts a 0-based centre, so its origin sits one
      pixel left of (above) the rounded centre: the centre pixel itself gets +1 before
      scaling. For a 5-pixel-wide row the offsets are -1, 0, 1, 2, 3, scaled to
      -1, 0, 1/3, 2/3, 1. This quirk is kept on purpose: the spec asks for HoVer-Net's
      exact convention, and networks trained on HoVer-Net targets expect it. (MONAI's
      ``ComputeHoVerMaps`` differs: it uses the unrounded centroid and no shift.);
    - negative offsets are divided by the largest negative magnitude, positive offsets by
      the largest positive one (each sign separately per nucleus and per axis), so they
      span [-1, 0) and (0, 1]; offsets that are exactly 0 stay 0;
    - pixels outside every nucleus are 0 in both maps.

    HoVer-Net expands each bounding box by 2 pixels (valid only because its training
    patches are padded); offsets are measured relative to the box on both sides, so
    the tight box used here gives identical values and never leaves the image.
    HoVer-Net's training-time extras are not applied: ``fix_mirror_padding`` and the
    centre crop belong to its patch loader (patches here are cut without mirror padding),
    and its ``remove_small_objects(min_size=30)`` leaves small nuclei with semantic 1 but
    zero distance maps, which would teach the structure model inconsistent structures.

    Every distinct id is one nucleus, even if its pixels are not connected (as in
    HoVer-Net). Ids need not be consecutive and may exceed 65535.

    Args:
        inst_map: ``(H, W)`` integer instance map, 0 = background, any non-negative ids.

    Returns:
        ``(H, W, 3)`` float32 structure: ``[..., SEMANTIC]`` in {0, 1},
        ``[..., HORIZONTAL]`` and ``[..., VERTICAL]`` in [-1, 1].

    Raises:
        ValueError: if ``inst_map`` is not 2-D, not of an integer or boolean dtype, or
            holds negative ids.
    """
    inst_map = np.asarray(inst_map)
    if inst_map.ndim != 2:
        raise ValueError(f"inst_map must be a 2-D (H, W) array, got shape {inst_map.shape}")
    if inst_map.dtype == bool:
        inst_map = inst_map.astype(np.uint8)
    if not np.issubdtype(inst_map.dtype, np.integer):
        raise ValueError(f"inst_map must hold integer ids, got dtype {inst_map.dtype}")
    structure = np.zeros(inst_map.shape + (N_CHANNELS,), dtype=np.float32)
    if inst_map.size == 0:
        return structure
    if np.issubdtype(inst_map.dtype, np.signedinteger) and inst_map.min() < 0:
        raise ValueError(f"inst_map must hold non-negative ids, found {inst_map.min()}")

    labels, n_nuclei = _relabel_consecutive(inst_map)
    structure[..., SEMANTIC] = labels > 0
    for label, box in enumerate(ndimage.find_objects(labels, max_label=n_nuclei), start=1):
        if box is None:  # cannot happen after relabelling; kept for safety
            continue
        rows, cols = np.nonzero(labels[box] == label)
        # int(com + 0.5) in HoVer-Net; com >= 0 inside the box, so floor(com + 0.5) is equal
        centre_row = int(np.floor(rows.mean() + 0.5))
        centre_col = int(np.floor(cols.mean() + 0.5))
        image_rows = rows + box[0].start
        image_cols = cols + box[1].start
        structure[image_rows, image_cols, HORIZONTAL] = _scale_offsets(cols + 1 - centre_col)
        structure[image_rows, image_cols, VERTICAL] = _scale_offsets(rows + 1 - centre_row)
    return structure


def _check_channels_last(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 3 or x.shape[-1] != N_CHANNELS:
        raise ValueError(f"{name} must have shape (..., H, W, {N_CHANNELS}) with channels last, got {x.shape}")
    return x


def structure_to_model_range(structure: np.ndarray) -> np.ndarray:
    """Map a structure into the diffusion model's range [-1, 1] (SPEC.md section 3, last line).

    The semantic channel goes from {0, 1} (or a probability in [0, 1]) to [-1, 1] by
    ``2 s - 1``; the distance maps are already in [-1, 1] and are copied unchanged.

    Args:
        structure: ``(H, W, 3)`` or batched ``(N, H, W, 3)`` structure, channels last.

    Returns:
        float32 array of the same shape with every channel in [-1, 1].
    """
    structure = _check_channels_last(structure, "structure")
    out = structure.astype(np.float32, copy=True)
    out[..., SEMANTIC] = 2.0 * out[..., SEMANTIC] - 1.0
    return out


def structure_from_model_range(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`structure_to_model_range` for (possibly noisy) model outputs.

    Every channel is first clipped to [-1, 1] (a sampled structure can overshoot); the
    semantic channel then becomes a probability ``(x + 1) / 2`` in [0, 1], which is what
    :func:`nudiff.structure.instances_from_structure` thresholds at 0.5.

    Args:
        x: ``(H, W, 3)`` or batched ``(N, H, W, 3)`` array in model range, channels last.

    Returns:
        float32 structure of the same shape: semantic in [0, 1], distance maps in [-1, 1].

    Raises:
        ValueError: if the last axis is not 3 channels or ``x`` holds NaN or inf.
    """
    x = _check_channels_last(x, "x")
    if not np.isfinite(x).all():
        raise ValueError("x must be finite (found NaN or inf)")
    out = np.clip(x.astype(np.float32, copy=True), -1.0, 1.0)
    out[..., SEMANTIC] = (out[..., SEMANTIC] + 1.0) / 2.0
    return out
