"""The pre-trained augmented Hover-Net against a step-matched labelled control.

    python control_comparison.py    # from this folder: the 65-epoch control of pretrain/
    python control_comparison.py --runs ../preset-cut-2026-12-02/scores.csv \
        --control ../preset-cut-2026-12-02/control-45-epochs/scores_labelled_45_epochs_seed*.csv \
        --control-name "control (45 epochs)" --labelled-name "labelled 30"

Prints the control's Dice/AJI per seed with mean and sample std, the per-seed differences
(pre-trained augmented - control; control - the run's shorter labelled arm), and per (seed, test
image) how many differences are positive with the Wilcoxon signed-rank p-value.
"""

import argparse

import pandas as pd
from scipy import stats

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--runs", default="pretrain/metrics_per_image.csv", help="per-image scores of both arms")
parser.add_argument(
    "--control", nargs="+", default=["labelled-65-epochs/scores_labelled_65_epochs.csv"], help="control scores"
)
parser.add_argument("--control-name", default="control (65 epochs)")
parser.add_argument("--labelled-name", default="labelled 40")
args = parser.parse_args()

control = pd.concat([pd.read_csv(path) for path in args.control]).set_index(["seed", "name"])
runs = pd.read_csv(args.runs)
pretrained = runs[runs.trainset == "augmented"].set_index(["seed", "name"])
labelled = runs[runs.trainset == "labelled"].set_index(["seed", "name"])
scores = ["dice", "aji"]


def per_seed(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby(level="seed")[scores].mean()


print(f"{args.control_name} per seed:\n", per_seed(control).round(4).to_string())
print("mean", per_seed(control).mean().round(4).tolist(), "std", per_seed(control).std().round(4).tolist())
for name, a, b in (
    ("pre-trained - control", pretrained, control),
    (f"control - {args.labelled_name}", control, labelled),
):
    d = per_seed(a) - per_seed(b)
    mean, std = d.mean().round(4).tolist(), d.std().round(4).tolist()
    print(f"{name}: per seed {d.round(4).values.tolist()} mean {mean} std {std}")
for score in scores:
    d = pretrained[score] - control[score]
    print(
        f"{score} pre-trained - control per (seed, image): positive {int((d > 0).sum())}/{len(d)} "
        f"median {d.median():.4f} Wilcoxon p={stats.wilcoxon(d).pvalue:.2g}"
    )
