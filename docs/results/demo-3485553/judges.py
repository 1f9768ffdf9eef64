"""Agreement of the pairs (k = 1: /tmp/fresh3, k = 2: /tmp/fresh2) with each labelled Hover-Net seed as judge.

    cd /tmp/fresh2 && python judges.py judges.csv
"""
import sys, logging
from pathlib import Path
import pandas as pd
from nudiff.assessment.segmenter_agreement import segment_synthetic_pairs
logging.basicConfig(level=logging.WARNING)
rows = []
runs = {1: Path("/tmp/fresh3"), 2: Path("/tmp/fresh2")}
for pct, seeds in ((100, range(3)), (10, range(6))):
    for k, root in runs.items():
        pairs = sorted((root / f"results/demo/{pct}pct/synthetic").glob("pairs_*.npz"))
        for s in seeds:
            judge = Path(f"/tmp/fresh2/results/demo/{pct}pct/segmentation/hovernet/labelled/seed{s}")
            out = Path(f"/tmp/judges/{pct}_{k}_{s}.csv"); out.parent.mkdir(exist_ok=True)
            t = segment_synthetic_pairs(judge / "model.pt", pairs, judge / "scores.csv", out_csv=out, out_per_pair_csv=out.with_suffix(".pairs.csv"))
            t = t.set_index("set")
            rows.append(dict(subset=pct, k=k, judge_seed=s, real_aji=t.loc["real test images", "aji_mean"], pairs_aji=t.loc["synthetic pairs", "aji_mean"], real_dice=t.loc["real test images", "dice_mean"], pairs_dice=t.loc["synthetic pairs", "dice_mean"]))
            print(rows[-1], flush=True)
df = pd.DataFrame(rows); df["gap"] = df.real_aji - df.pairs_aji
df.to_csv(sys.argv[1], index=False)
print(df.groupby(["subset", "k"])[["real_aji", "pairs_aji", "gap"]].agg(["mean", "std"]).round(3))
