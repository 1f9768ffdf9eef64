"""The pre-trained augmented Hover-Net against the step-matched labelled control (65 epochs).

    python control_comparison.py    # from this folder

Prints the control's Dice/AJI per seed with mean and sample std, the per-seed differences
(pre-trained augmented - control; control - 40-epoch labelled), and per (seed, test image)
how many differences are positive with the Wilcoxon signed-rank p-value.
"""

import pandas as pd
from scipy import stats

control = pd.read_csv("labelled-65-epochs/scores_labelled_65_epochs.csv").set_index(["seed", "name"])
runs = pd.read_csv("pretrain/metrics_per_image.csv")
pretrained = runs[runs.trainset == "augmented"].set_index(["seed", "name"])
labelled_40 = runs[runs.trainset == "labelled"].set_index(["seed", "name"])
scores = ["dice", "aji"]


def per_seed(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby(level="seed")[scores].mean()


print("control (65 epochs) per seed:\n", per_seed(control).round(4).to_string())
print("mean", per_seed(control).mean().round(4).tolist(), "std", per_seed(control).std().round(4).tolist())
for name, a, b in (("pre-trained - control", pretrained, control), ("control - labelled 40", control, labelled_40)):
    d = per_seed(a) - per_seed(b)
    mean, std = d.mean().round(4).tolist(), d.std().round(4).tolist()
    print(f"{name}: per seed {d.round(4).values.tolist()} mean {mean} std {std}")
for score in scores:
    d = pretrained[score] - control[score]
    print(
        f"{score} pre-trained - control per (seed, image): positive {int((d > 0).sum())}/{len(d)} "
        f"median {d.median():.4f} Wilcoxon p={stats.wilcoxon(d).pvalue:.2g}"
    )
