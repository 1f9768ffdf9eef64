"""Each arm's best validation score under each schedule, and the schedule validation prefers.

    python compare.py <schedule>=<folder with validation_<model>_<arm>_seed<k>.csv> ... [--seed k]
        [--model pffnet] [--out <folder>]

e.g. ``x1=../2026-12-05-monuseg-cpu-10pct-arms/block2 x2=block2-x2``. A run keeps the weights of
its best validation (mean of Dice and AJI on the held-out validation patches), so a schedule's
score is that best value; the test images play no part. Writes ``schedules.csv`` in ``--out``
(default: here), and ``curves.png``: each arm's validation score against the step, one line per
schedule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ARMS = ["labelled", "augmented", "pretrained", "pretrained-real", "shuffled"]


def best_of(log: Path) -> dict[str, float]:
    table = pd.read_csv(log)
    best = table.loc[table["score"].idxmax()]
    return {
        "best_score": float(best["score"]),
        "best_dice": float(best["dice"]),
        "best_aji": float(best["aji"]),
        "best_step": int(best["step"]),
        "last_step": int(table["step"].max()),
        "best_at_last": bool(best["step"] == table["step"].max()),
    }


def main(argv: list[str]) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("schedules", nargs="+", help="<schedule name>=<folder of validation logs>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="hovernet", choices=["hovernet", "pffnet"])
    parser.add_argument("--out", type=Path, default=HERE, help="where schedules.csv and curves.png go")
    args = parser.parse_args(argv)
    seed = args.seed
    rows, logs = [], {}
    for spec in args.schedules:
        schedule, folder = spec.split("=", 1)
        for arm in ARMS:
            log = Path(folder) / f"validation_{args.model}_{arm}_seed{seed}.csv"
            if log.is_file():
                logs[(arm, schedule)] = log
                rows.append({"arm": arm, "schedule": schedule, "seed": seed, **best_of(log)})
    table = pd.DataFrame(rows)
    chosen = table.loc[table.groupby("arm")["best_score"].idxmax(), ["arm", "schedule"]]
    table["chosen"] = [
        (arm, schedule) in set(map(tuple, chosen.to_numpy())) for arm, schedule in zip(table["arm"], table["schedule"])
    ]
    table.to_csv(args.out / "schedules.csv", index=False)
    plot_curves(logs, args.out / "curves.png")
    return table


def plot_curves(logs: dict[tuple[str, str], Path], out_png: Path) -> None:
    """One panel per arm: validation score against step, a line per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm in ARMS if any(a == arm for a, _ in logs)]
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3.0), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for (a, schedule), log in logs.items():
            if a == arm:
                table = pd.read_csv(log)
                ax.plot(table["step"], table["score"], label=schedule, lw=1.2)
        ax.set_title(arm, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation score (mean of Dice, AJI)")
    axes[0][0].legend(title="schedule", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    print(main(sys.argv[1:]).to_string(index=False))
