"""Agreement of the pairs (k = 1: RUN_K1, k = 2: RUN_K2) with each labelled Hover-Net seed as judge.

    python judges.py judges.csv RUN_K1 RUN_K2

RUN_K2 is the finished k = 2 demo run, RUN_K1 its k = 1 copy (see README.md); the labelled
Hover-Nets of RUN_K2 judge both. Per-judge tables go to a folder named after the output file.
"""
import sys, logging
from pathlib import Path
import pandas as pd
from nudiff.assessment.segmenter_agreement import segment_synthetic_pairs
logging.basicConfig(level=logging.WARNING)
rows = []
runs = {1: Path(sys.argv[2]), 2: Path(sys.argv[3])}
scratch = Path(sys.argv[1]).with_suffix("")
for pct, seeds in ((100, range(3)), (10, range(6))):
    for k, root in runs.items():
        pairs = sorted((root / f"results/demo/{pct}pct/synthetic").glob("pairs_*.npz"))
        for s in seeds:
            judge = runs[2] / f"results/demo/{pct}pct/segmentation/hovernet/labelled/seed{s}"
            out = scratch / f"{pct}_{k}_{s}.csv"; out.parent.mkdir(parents=True, exist_ok=True)
            t = segment_synthetic_pairs(judge / "model.pt", pairs, judge / "scores.csv", out_csv=out, out_per_pair_csv=out.with_suffix(".pairs.csv"))
            t = t.set_index("set")
            rows.append(dict(subset=pct, k=k, judge_seed=s, real_aji=t.loc["real test images", "aji_mean"], pairs_aji=t.loc["synthetic pairs", "aji_mean"], real_dice=t.loc["real test images", "dice_mean"], pairs_dice=t.loc["synthetic pairs", "dice_mean"]))
            print(rows[-1], flush=True)
df = pd.DataFrame(rows); df["gap"] = df.real_aji - df.pairs_aji
df.to_csv(sys.argv[1], index=False)
print(df.groupby(["subset", "k"])[["real_aji", "pairs_aji", "gap"]].agg(["mean", "std"]).round(3))
