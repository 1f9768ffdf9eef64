"""Labelled vs augmented PFF-Net of the CPU real-data preset, paired by seed and (seed, test image).

    python compare.py [SCORES_CSV]    # from this folder; default scores.csv

SCORES_CSV: the ``scores.csv`` rows of every PFF-Net run (``score_predictions``' output,
concatenated). Prints each seed's mean Dice / AJI over the test images, mean and sample std
over seeds, the per-seed differences (augmented - labelled), and per (seed, test image) how
many differences are positive with the Wilcoxon signed-rank p-value.
"""

import sys

import pandas as pd
from scipy import stats

scores = pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "scores.csv")
by_seed = scores.pivot_table(index="seed", columns="trainset", values=["dice", "aji"])
print(by_seed.round(4).to_string())
for trainset in ("labelled", "augmented"):
    dice, aji = by_seed[("dice", trainset)], by_seed[("aji", trainset)]
    print(f"{trainset}: Dice {dice.mean():.4f} +- {dice.std(ddof=1):.4f}, AJI {aji.mean():.4f} +- {aji.std(ddof=1):.4f}")
for score in ("dice", "aji"):
    d = by_seed[(score, "augmented")] - by_seed[(score, "labelled")]
    print(f"{score}: per-seed difference {d.round(4).tolist()} mean {d.mean():.4f} std {d.std(ddof=1):.4f}")
paired = scores.pivot_table(index=["seed", "name"], columns="trainset", values=["dice", "aji"])
for score in ("dice", "aji"):
    d = paired[(score, "augmented")] - paired[(score, "labelled")]
    print(
        f"{score}: per (seed, image) n={len(d)} mean {d.mean():.4f} median {d.median():.4f} "
        f"positive {int((d > 0).sum())}/{len(d)} Wilcoxon p={stats.wilcoxon(d).pvalue:.2g}"
    )
