"""Labelled vs augmented Hover-Net of one run, paired by seed and by (seed, test image).

    python paired_comparison.py METRICS_CSV METRICS_PER_IMAGE_CSV
    # e.g. metrics_transfer.csv metrics_per_image_transfer.csv (this folder)

Prints each seed's Dice/AJI, the per-seed differences (augmented - labelled) with mean and
sample std, and per test image: how many differences are positive and the Wilcoxon
signed-rank p-value (over all (seed, image) pairs, and over images after averaging seeds).
"""

import sys

import pandas as pd
from scipy import stats


def compare(metrics: pd.DataFrame, per_image: pd.DataFrame) -> None:
    """Print the comparison of one run's per-seed ``metrics`` and ``per_image`` rows."""
    by_seed = metrics.pivot_table(index="seed", columns="trainset", values=["dice", "aji"])
    print(by_seed.round(4).to_string())
    for score in ("dice", "aji"):
        d = by_seed[(score, "augmented")] - by_seed[(score, "labelled")]
        print(f"{score}: per-seed difference {d.round(4).tolist()} mean {d.mean():.4f} std {d.std(ddof=1):.4f}")
    paired = per_image.pivot_table(index=["seed", "name"], columns="trainset", values=["dice", "aji"])
    for score in ("dice", "aji"):
        d = paired[(score, "augmented")] - paired[(score, "labelled")]
        print(
            f"{score}: per (seed, image) n={len(d)} mean {d.mean():.4f} median {d.median():.4f} "
            f"positive {int((d > 0).sum())}/{len(d)} Wilcoxon p={stats.wilcoxon(d).pvalue:.3g}"
        )
        over_seeds = d.groupby(level="name").mean()
        print(
            f"   per image, mean over seeds: positive {int((over_seeds > 0).sum())}/{len(over_seeds)} "
            f"Wilcoxon p={stats.wilcoxon(over_seeds).pvalue:.3g}"
        )


if __name__ == "__main__":
    compare(pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2]))
