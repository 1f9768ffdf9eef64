"""Pair quality by nuclei density: is the pairs' gap to real patches a matter of density?

    python docs/records/2026-12-06-pair-quality-by-density/by_density.py <finished block> <out folder>

Reads a finished block's judge (the labelled Hover-Net, seed 0), its real validation patches
and its per-pair agreement file (``segment_synthetic_pairs``), and writes to ``<out folder>``:

* ``real_per_patch.csv``: the judge on each real validation patch (the rule keeps only the mean);
* ``by_density.csv``: mean Dice / AJI and nuclei counts (labelled, predicted) per bin of labelled
  nuclei per patch, for the real validation patches and the synthetic pairs;
* ``summary.csv``: the synthetic pairs' mean AJI as they are, and re-weighted to the real
  validation patches' distribution over the bins (post-stratification): the gap that is left
  once the pairs are as dense as real patches;
* ``by_density.png``: AJI against labelled nuclei per patch, one point per patch or pair;
* ``failures.csv`` and ``failures.png``: the pairs in which the judge finds (almost) nothing
  (AJI < 0.05), with each image's mean colour, beside the other pairs' and the real patches'.

Only validation patches and the pairs are read; never the test images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

SUBSET = Path("results/monuseg/10pct")
BINS = [0, 5, 10, 20, 30, 1000]
FAILED_AJI = 0.05
LABELS = ["1-5", "6-10", "11-20", "21-30", ">30"]


def judge_real(block: Path) -> pd.DataFrame:
    from nudiff.assessment.segmenter_agreement import judge_real_patches
    from nudiff.segmentation.hovernet.train import load_hovernet

    model, meta = load_hovernet(block / SUBSET / "segmentation/hovernet/labelled/seed0/model.pt", "cpu")
    return judge_real_patches(model, meta, block / SUBSET / "trainsets/validation.csv", watershed=None, device="cpu")


def binned(table: pd.DataFrame, name: str) -> pd.DataFrame:
    table = table[table["n_true"] > 0].assign(bin=lambda t: pd.cut(t["n_true"], BINS, labels=LABELS))
    out = table.groupby("bin", observed=False).agg(
        n=("aji", "size"),
        dice=("dice", "mean"),
        aji=("aji", "mean"),
        n_true=("n_true", "mean"),
        n_pred=("n_pred", "mean"),
    )
    return out.reset_index().assign(set=name)


def pair_images(block: Path) -> np.ndarray:
    """The pairs' images in the order of the per-pair file (shard by shard)."""
    from nudiff.diffusion.quality import read_shards

    shards = sorted((block / SUBSET / "synthetic").glob("pairs_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    return read_shards(shards, ("images",), "pair shards")["images"]


def mean_colour(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1, 3).astype(float).mean(axis=1)


def failures(real_images: np.ndarray, pairs: pd.DataFrame, images: np.ndarray, out: Path) -> pd.DataFrame:
    """Mean colour and agreement of the pairs the judge reads as empty, beside the rest."""
    colour = pd.DataFrame(mean_colour(images), columns=["r", "g", "b"])
    table = pd.concat([pairs, colour], axis=1).assign(failed=lambda t: t["aji"] < FAILED_AJI)
    table[table["failed"]].to_csv(out / "failures.csv", index=False)
    groups = [("real validation patches", pd.DataFrame(mean_colour(real_images), columns=["r", "g", "b"]))]
    groups += [
        ("pairs, judge finds nuclei", table[~table["failed"]]),
        ("pairs, judge finds none", table[table["failed"]]),
    ]
    rows = [{"group": name, "n": len(t), **{c: t[c].mean() for c in "rgb"}} for name, t in groups]
    rows[1]["aji_mean"] = table.loc[~table["failed"], "aji"].mean()
    rows[2]["aji_mean"] = table.loc[table["failed"], "aji"].mean()
    montage(images[table["failed"].to_numpy()], out / "failures.png")
    return pd.DataFrame(rows)


def montage(images: np.ndarray, png: Path, columns: int = 9) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.4, rows * 1.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image in zip(axes.ravel(), images):
        ax.imshow(image)
    fig.suptitle(f"pairs the judge reads as empty (AJI < {FAILED_AJI}): {len(images)}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(block: Path, out: Path) -> None:
    from nudiff.samples import SampleReader, read_sample_table

    out.mkdir(parents=True, exist_ok=True)
    real = judge_real(block)
    real.to_csv(out / "real_per_patch.csv", index=False)
    pairs = pd.read_csv(block / SUBSET / "synthetic/quality/segmenter_agreement_per_pair.csv")
    real_images, _ = SampleReader(read_sample_table(block / SUBSET / "trainsets/validation.csv")).load_all()
    colours = failures(np.asarray(real_images), pairs, pair_images(block), out)
    colours.to_csv(out / "colours.csv", index=False)
    print(colours.to_string(index=False))
    real_bins, pair_bins = binned(real, "real validation patches"), binned(pairs, "synthetic pairs")
    pd.concat([real_bins, pair_bins]).to_csv(out / "by_density.csv", index=False)

    # post-stratification: each bin's pair mean weighted by the real patches' share of that bin
    share = real_bins.set_index("bin")["n"] / real_bins["n"].sum()
    pair_means = pair_bins.set_index("bin")["aji"]
    covered = share[pair_means.notna() & (share > 0)]
    reweighted = float((pair_means[covered.index] * covered).sum() / covered.sum())
    summary = pd.DataFrame(
        [
            {"quantity": "real validation patches, mean AJI", "value": real["aji"].mean(), "n": len(real)},
            {"quantity": "synthetic pairs, mean AJI", "value": pairs["aji"].mean(), "n": len(pairs)},
            {"quantity": "synthetic pairs, AJI re-weighted to the real density", "value": reweighted, "n": len(pairs)},
            {"quantity": "real validation patches, median nuclei", "value": real["n_true"].median(), "n": len(real)},
            {"quantity": "synthetic pairs, median nuclei", "value": pairs["n_true"].median(), "n": len(pairs)},
        ]
    )
    summary.to_csv(out / "summary.csv", index=False)
    print(pd.concat([real_bins, pair_bins]).to_string(index=False))
    print(summary.to_string(index=False))
    plot(real, pairs, out / "by_density.png")


def plot(real: pd.DataFrame, pairs: pd.DataFrame, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter(pairs["n_true"], pairs["aji"], s=12, alpha=0.5, label=f"synthetic pairs (n={len(pairs)})")
    ax.scatter(real["n_true"], real["aji"], s=30, marker="s", color="black", label=f"real validation (n={len(real)})")
    ax.set_xlabel("labelled nuclei in the patch")
    ax.set_ylabel("AJI of the labelled Hover-Net against the labels")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("Pair quality by nuclei density (judge: labelled Hover-Net, seed 0)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
