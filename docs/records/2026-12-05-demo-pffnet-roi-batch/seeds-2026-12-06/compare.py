"""The 100% subset's PFF-Nets at 32 and 128 sampled RoIs per patch, 3 seeds: best validation score.

    python docs/records/2026-12-05-demo-pffnet-roi-batch/seeds-2026-12-06/compare.py

Reads the ``validation_roi{32,128}_{arm}_seed{0,1,2}.csv`` beside it (the training runs'
validation logs, 98 patches); prints each run's best score (the weights it keeps) with its
step and AJI, and per arm the seed-by-seed difference 32 - 128 with a 95% t-interval.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)

for arm in ("labelled", "augmented"):
    best = {}
    for rois in (32, 128):
        for seed in SEEDS:
            log = pd.read_csv(HERE / f"validation_roi{rois}_{arm}_seed{seed}.csv")
            row = log.loc[log["score"].idxmax()]
            best[rois, seed] = row
            print(
                f"{arm:9s} {rois:4d} RoIs seed {seed}: score {row['score']:.3f} "
                f"at step {int(row['step'])}, AJI {row['aji']:.3f}"
            )
    for column in ("score", "aji"):
        diff = np.array([best[32, s][column] - best[128, s][column] for s in SEEDS])
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        means = {rois: np.mean([best[rois, s][column] for s in SEEDS]) for rois in (32, 128)}
        print(
            f"{arm:9s} {column:5s}: 32 {means[32]:.3f}, 128 {means[128]:.3f}; 32 - 128 {diff.mean():+.3f} "
            f"[{diff.mean() - half:+.3f}, {diff.mean() + half:+.3f}] ({', '.join(f'{d:+.3f}' for d in diff)})"
        )
