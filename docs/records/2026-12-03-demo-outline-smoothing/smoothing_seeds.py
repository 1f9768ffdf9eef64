"""Hover-Net over seeds on the demo: synthetic labels with their outlines smoothed
(``diffusion.cleanup.opening_radius: 2``) against unsmoothed ones (0).

    python smoothing_seeds.py OUT.csv RUN_R0 RUN_R2

RUN_R0 and RUN_R2 are demo runs that differ only in ``opening_radius`` (RUN_R2's structures
re-sampled with it, everything downstream re-run), each with the Hover-Net seeds asked for
as targets (``results/demo/<pct>pct/segmentation/hovernet/<arm>/seed<s>/scores.csv``). The
labelled arm does not depend on the pairs, so both radii share RUN_R0's. Writes one row per
(radius, subset, arm, seed), the mean over the 4 test images, and prints mean +- sample std
over seeds and the paired difference augmented - labelled.
"""

import sys
from pathlib import Path

import pandas as pd

out, runs = sys.argv[1], {0: Path(sys.argv[2]), 2: Path(sys.argv[3])}
rows = []
for radius, root in runs.items():
    for pct in (10, 100):
        for arm in ("labelled", "augmented"):
            base = runs[0] if arm == "labelled" else root
            for scores in sorted((base / f"results/demo/{pct}pct/segmentation/hovernet/{arm}").glob("seed*/scores.csv")):
                table = pd.read_csv(scores)
                seed = int(scores.parent.name.removeprefix("seed"))
                rows.append(
                    {"opening_radius": radius, "subset": pct, "arm": arm, "seed": seed,
                     "dice": table.dice.mean(), "aji": table.aji.mean()}
                )
rows = pd.DataFrame(rows)
rows.to_csv(out, index=False)
for (radius, pct), group in rows.groupby(["opening_radius", "subset"]):
    for metric in ("aji", "dice"):
        wide = group.pivot(index="seed", columns="arm", values=metric).dropna()
        diff = wide["augmented"] - wide["labelled"]
        print(
            f"r={radius} {pct}% {metric}: {len(wide)} seeds; labelled {wide.labelled.mean():.3f} +- "
            f"{wide.labelled.std():.3f}, augmented {wide.augmented.mean():.3f} +- {wide.augmented.std():.3f}, "
            f"paired {diff.mean():+.3f} +- {diff.std():.3f} (higher in {(diff > 0).sum()}/{len(diff)})"
        )
