"""Figures people look at: loss curves, patch grids, overlays.

Everything renders off-screen (matplotlib's Agg backend) and is written
atomically, so a figure either exists whole or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from nudiff.io.atomic import atomic_path  # noqa: E402
from nudiff.structure import HORIZONTAL, SEMANTIC, VERTICAL  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, *, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_loss_curve(history: pd.DataFrame, path: str | Path, *, title: str) -> None:
    """Per-step loss (faint) with a moving average over ~1% of the run (bold), log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    window = max(1, len(history) // 100)
    ax.plot(history["step"], history["loss"], lw=0.5, alpha=0.35, color="tab:blue", label="per step")
    ax.plot(
        history["step"],
        history["loss"].rolling(window, min_periods=1).mean(),
        color="tab:blue",
        label=f"mean of {window}",
    )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(frameon=False)
    save_figure(fig, path)


def render_structure(structure: np.ndarray) -> np.ndarray:
    """A structure ``(H, W, 3)`` (semantic in [0, 1], maps in [-1, 1]) as an RGB image.

    Red and green show the horizontal and vertical maps mapped to [0, 1]; blue
    is the semantic channel; background stays black.
    """
    fg = np.clip(structure[..., SEMANTIC], 0, 1)
    rgb = np.stack([(structure[..., HORIZONTAL] + 1) / 2 * fg, (structure[..., VERTICAL] + 1) / 2 * fg, fg], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def overlay_instances(rgb: np.ndarray, inst: np.ndarray, *, color: Sequence[int] = (0, 255, 0)) -> np.ndarray:
    """The image with every instance's outline drawn in ``color``."""
    out = rgb.copy()
    out[find_boundaries(inst, mode="inner")] = color
    return out


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str],
    path: str | Path,
    *,
    tile_inches: float = 1.6,
    title: str | None = None,
) -> None:
    """Rows of same-sized RGB tiles, one title per row."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(tile_inches * n_cols, tile_inches * n_rows + 0.3), squeeze=False)
    for r, (tiles, name) in enumerate(zip(rows, row_titles)):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(tiles):
                ax.imshow(tiles[c], interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
