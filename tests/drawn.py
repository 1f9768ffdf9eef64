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


def write_real_samples(folder, maps) -> str:
    """A sample table of real patches: each map and its painted image as a prepared image pair
    (the format of a subset's validation.csv)."""
    from pathlib import Path

    import pandas as pd

    from nudiff.io.images import write_image, write_instance_map
    from nudiff.samples import SAMPLE_COLUMNS, write_sample_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, inst in enumerate(maps):
        write_image(folder / f"real{i}.png", painted(inst))
        write_instance_map(folder / f"real{i}.tif", inst.astype(np.int32))
        rows.append(
            (f"real{i}", "real", str(folder / f"real{i}.png"), str(folder / f"real{i}.tif"), -1, 0, 0, inst.shape[0])
        )
    table = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    write_sample_table(table, folder / "validation.csv")
    return str(folder / "validation.csv")
