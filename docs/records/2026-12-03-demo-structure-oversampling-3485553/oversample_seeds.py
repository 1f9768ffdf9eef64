"""Hover-Net over seeds on the demo, structure oversampling k = 2 against k = 1.

    python oversample_seeds.py OUT.csv RUN_K2 RUN_K1

RUN_K2 is a finished demo run with ``diffusion.structure_oversample: 2``; RUN_K1 a copy of
it with ``structure_oversample: 1`` whose structures were re-sampled (``--forcerun
sample_structures``). The labelled arm is the same in both (RUN_K2's). Reads each run's
``segmentation/hovernet/<arm>/seed<s>/scores.csv`` (mean over the 4 test images), writes one
row per (k, subset, arm, seed) and prints mean +- sample std over seeds and the paired
difference augmented - labelled.
"""

import sys
from pathlib import Path

import pandas as pd

out, runs = sys.argv[1], {2: Path(sys.argv[2]), 1: Path(sys.argv[3])}
rows = []
for k, root in runs.items():
    for pct in (10, 100):
        for arm in ("labelled", "augmented"):
            base = runs[2] if arm == "labelled" else root
            for scores in sorted((base / f"results/demo/{pct}pct/segmentation/hovernet/{arm}").glob("seed*/scores.csv")):
                table = pd.read_csv(scores)
                seed = int(scores.parent.name.removeprefix("seed"))
                rows.append({"k": k, "subset": pct, "arm": arm, "seed": seed, "dice": table.dice.mean(), "aji": table.aji.mean()})
rows = pd.DataFrame(rows)
rows.to_csv(out, index=False)
for (k, pct), group in rows.groupby(["k", "subset"]):
    wide = group.pivot(index="seed", columns="arm", values="aji").dropna()
    diff = wide["augmented"] - wide["labelled"]
    print(
        f"k={k} {pct}%: {len(wide)} seeds; labelled AJI {wide.labelled.mean():.3f} +- {wide.labelled.std():.3f}, "
        f"augmented {wide.augmented.mean():.3f} +- {wide.augmented.std():.3f}, "
        f"paired {diff.mean():+.3f} +- {diff.std():.3f} (higher in {(diff > 0).sum()}/{len(diff)})"
    )
