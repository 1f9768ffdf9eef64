"""Labelled vs augmented PFF-Net of the CPU real-data preset, paired by seed and (seed, test image).

    python compare.py [SCORES_CSV]    # from this folder; default scores.csv

SCORES_CSV: the ``scores.csv`` rows of every PFF-Net run (``score_predictions``' output,
concatenated). Prints each arm's mean Dice / AJI with the sample std over seeds, then
``../colour/paired_comparison.py``'s per-seed and per (seed, test image) comparison.
"""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "colour"))
from paired_comparison import compare  # noqa: E402

scores = pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "scores.csv")
by_seed = scores.groupby(["seed", "trainset"], as_index=False)[["dice", "aji"]].mean()
for trainset, arm in by_seed.groupby("trainset", sort=False):
    dice, aji = arm["dice"], arm["aji"]
    print(
        f"{trainset}: Dice {dice.mean():.4f} +- {dice.std(ddof=1):.4f}, "
        f"AJI {aji.mean():.4f} +- {aji.std(ddof=1):.4f}"
    )
compare(by_seed, scores)
