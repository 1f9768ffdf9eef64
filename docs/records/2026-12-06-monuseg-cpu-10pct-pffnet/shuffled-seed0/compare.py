"""PFF-Net seed 0 on block 5's generator: the union on deranged pairs (shuffled) against the union
and labelled, from the per-image test scores copied here (one seed: no interval).

    python docs/records/2026-12-06-monuseg-cpu-10pct-pffnet/shuffled-seed0/compare.py
"""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    scores = {
        arm: pd.read_csv(HERE / f"scores_pffnet_{arm}_seed0.csv").set_index("name")
        for arm in ("labelled", "augmented", "shuffled")
    }
    for arm, table in scores.items():
        print(f"{arm}: Dice {table.dice.mean():.3f}, AJI {table.aji.mean():.3f}, nuclei {table.n_pred.sum()}")
    for control in ("augmented", "labelled"):
        difference = scores["shuffled"].aji - scores[control].aji
        higher = (difference > 0).sum()
        print(f"shuffled - {control}: AJI {difference.mean():+.3f}, higher on {higher} of {len(difference)} images")
