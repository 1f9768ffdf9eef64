"""Pair quality with the pairs' colours moved to the training part's (``diffusion.colour_transfer``).

    python docs/records/2026-12-06-pair-quality-by-density/colour_transfer.py <block> <out> <sampling seed> [judge seed]

Applies :func:`nudiff.diffusion.colour_transfer.transfer_colours` (the function ``sample_images``
applies with ``diffusion.colour_transfer: true``: each image takes the CIELAB mean and std of a
real patch of the subset's training part of similar nuclear fraction) to a finished block's
pairs as sampled, and asks the block's judge (the labelled Hover-Net, seed 0) to segment them,
as ``segment_synthetic_pairs`` does. Writes ``transfer_per_pair.csv``, ``transfer_summary.csv``
(pairs as sampled against transferred) and ``transfer_samples.png`` (8 pairs, as sampled above,
transferred below). With a judge seed other than 0 (another labelled Hover-Net of the block),
that judge reads the real validation patches, the pairs as sampled and the transferred ones,
into ``transfer_summary_judge<seed>.csv``. Never reads the test images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

SUBSET = Path("results/monuseg/10pct")


def main(block: Path, out: Path, seed: int, judge: int = 0) -> None:
    from nudiff.assessment.segmenter_agreement import judge_images, judge_real_patches
    from nudiff.diffusion.colour_transfer import real_colours, transfer_colours
    from nudiff.diffusion.quality import read_shards
    from nudiff.segmentation.hovernet.train import load_hovernet

    shards = sorted((block / SUBSET / "synthetic").glob("pairs_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    pairs = read_shards(shards, ("images", "instances", "sample_index"), "pair shards")
    images, instances, indices = pairs["images"], pairs["instances"], pairs["sample_index"]
    reference = real_colours(block / SUBSET / "trainsets/labelled_train.csv")
    transferred, _ = transfer_colours(images, instances, indices, reference, seed)

    model, meta = load_hovernet(block / SUBSET / f"segmentation/hovernet/labelled/seed{judge}/model.pt", "cpu")
    per_pair = judge_images(model, meta, transferred, list(instances), watershed=None, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    sets = []
    if judge == 0:
        per_pair.to_csv(out / "transfer_per_pair.csv", index=False)
        sampled = pd.read_csv(block / SUBSET / "synthetic/quality/segmenter_agreement_per_pair.csv")
    else:
        sampled = judge_images(model, meta, images, list(instances), watershed=None, device="cpu")
        validation = block / SUBSET / "trainsets/validation.csv"
        real = judge_real_patches(model, meta, validation, watershed=None, device="cpu")
        sets.append(("real validation patches", real))
    sets += [("pairs as sampled", sampled), ("pairs, colours transferred", per_pair)]
    rows = []
    for name, table in sets:
        rows.append(
            {
                "set": name,
                "n": len(table),
                "dice_mean": table["dice"].mean(),
                "aji_mean": table["aji"].mean(),
                "aji_median": table["aji"].median(),
                "judge_finds_none": int((table["aji"] < 0.05).sum()),
            }
        )
    summary = pd.DataFrame(rows)
    summary.to_csv(out / ("transfer_summary.csv" if judge == 0 else f"transfer_summary_judge{judge}.csv"), index=False)
    print(summary.to_string(index=False))
    if judge == 0:
        strip(images[:8], transferred[:8], out / "transfer_samples.png")


def strip(before: np.ndarray, after: np.ndarray, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(before), figsize=(1.5 * len(before), 3.2), squeeze=False)
    for ax, image in zip(axes.ravel(), [*before, *after]):
        ax.imshow(image)
        ax.axis("off")
    axes[0, 0].set_title("as sampled", fontsize=8, loc="left")
    axes[1, 0].set_title("colours transferred", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), *(int(a) for a in sys.argv[4:]))
