"""Instance maps and H&E-like images drawn by hand, shared by the quality tests."""

from __future__ import annotations

import numpy as np

PINK, PURPLE = (235, 170, 200), (80, 50, 140)  # eosin-like background, haematoxylin-like nuclei


def discs(centres, radius: int = 6, size: int = 64) -> np.ndarray:
    """Discs of ``radius`` around ``centres`` ``[(y, x), ...]``, ids 1..n in that order."""
    inst = np.zeros((size, size), np.int32)
    rows, cols = np.ogrid[:size, :size]
    for k, (y, x) in enumerate(centres, start=1):
        inst[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = k
    return inst


def painted(inst: np.ndarray) -> np.ndarray:
    """Purple nuclei on pink: the colour mask should be exactly the map's foreground."""
    rgb = np.empty(inst.shape + (3,), np.uint8)
    rgb[:] = PINK
    rgb[inst > 0] = PURPLE
    return rgb


def write_pairs(path, maps) -> str:
    """A pairs shard of painted maps (the format of synthesis.sample_images)."""
    maps = np.stack(maps)
    np.savez_compressed(
        path,
        sample_index=np.arange(len(maps)),
        structures=np.zeros(maps.shape + (3,), np.float32),
        instances=maps,
        images=np.stack([painted(m) for m in maps]),
    )
    return str(path)
