"""How a segmenter's test predictions fail nucleus by nucleus: repeats, splits, misses, merges.

    python diagnose.py <demo workdir> <pct> <out folder> <name>=<segmentation run folder> ...

For each true nucleus of each test image, the predicted instances that *belong* to it (more
than half of the prediction's pixels lie inside it) are counted: two or more = the nucleus is
outlined several times or cut into pieces (``split``); none and no prediction covering half of
it = ``missed``. A prediction that covers half or more of two true nuclei or more is a
``merge``. Writes ``<out>/diagnosis.csv`` (one row per run and image) and
``<out>/overlays_<pct>pct.png`` (the first test images, true outlines beside each run's).
"""

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from nudiff.evaluation import read_test_images  # noqa: E402
from nudiff.io.images import read_image, read_instance_map  # noqa: E402
from nudiff.metrics import compute_all  # noqa: E402


def nucleus_failures(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Counts of split, missed and merged nuclei of one image (see the module docstring)."""
    t, p = true.ravel(), pred.ravel()
    n_true, n_pred = int(true.max()) + 1, int(pred.max()) + 1
    overlap = np.zeros((n_true, n_pred), np.int64)
    np.add.at(overlap, (t, p), 1)
    true_area, pred_area = overlap.sum(1), overlap.sum(0)
    ids_true = np.flatnonzero(true_area[1:]) + 1
    ids_pred = np.flatnonzero(pred_area[1:]) + 1
    owner = overlap[:, ids_pred].argmax(0)  # the true id holding most of each prediction
    belongs = (overlap[owner, ids_pred] * 2 > pred_area[ids_pred]) & (owner > 0)
    pieces = np.bincount(owner[belongs], minlength=n_true)[ids_true]
    covered = (overlap[ids_true][:, ids_pred] * 2 >= true_area[ids_true, None]).any(1)
    merges = ((overlap[1:][:, ids_pred] * 2 >= true_area[1:, None]).sum(0) >= 2).sum()
    return {
        "n_true": len(ids_true),
        "n_pred": len(ids_pred),
        "split": int((pieces >= 2).sum()),
        "missed": int(((pieces == 0) & ~covered).sum()),
        "merged_predictions": int(merges),
    }


def main(workdir: Path, pct: str, out: Path, runs: dict[str, Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prepared = workdir / "results/demo/prepared/test"
    test = read_test_images(prepared)
    rows = []
    for name, run in runs.items():
        for item in test.itertuples():
            true = read_instance_map(prepared / item.label)
            pred = read_instance_map(run / "predictions" / f"{item.name}.tif")
            scores = compute_all(true, pred)
            rows.append({"run": name, "image": item.name, "dice": scores["dice"], "aji": scores["aji"],
                         **nucleus_failures(true, pred)})
    table = pd.DataFrame(rows)
    table.to_csv(out / f"diagnosis_{pct}pct.csv", index=False)
    summary = table.groupby("run", sort=False).agg(
        dice=("dice", "mean"), aji=("aji", "mean"), n_true=("n_true", "sum"), n_pred=("n_pred", "sum"),
        split=("split", "sum"), missed=("missed", "sum"), merged=("merged_predictions", "sum"),
    )
    print(summary.round(3).to_string())

    shown = test.head(3)
    fig, axes = plt.subplots(len(shown), len(runs) + 1, figsize=(3.2 * (len(runs) + 1), 3.2 * len(shown)), squeeze=False)
    for r, item in enumerate(shown.itertuples()):
        rgb = read_image(prepared / item.image)
        maps = {"truth": read_instance_map(prepared / item.label)}
        maps |= {name: read_instance_map(run / "predictions" / f"{item.name}.tif") for name, run in runs.items()}
        for c, (name, inst) in enumerate(maps.items()):
            shown_rgb = rgb.copy()
            shown_rgb[find_boundaries(inst, mode="inner")] = (0, 255, 0)
            axes[r][c].imshow(shown_rgb)
            axes[r][c].set_title(f"{name} ({int(inst.max())})" if r == 0 else f"({int(inst.max())})", fontsize=9)
            axes[r][c].axis("off")
    fig.tight_layout()
    fig.savefig(out / f"overlays_{pct}pct.png", dpi=110)


if __name__ == "__main__":
    specs = dict(arg.split("=", 1) for arg in sys.argv[4:])
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), {k: Path(v) for k, v in specs.items()})
