"""Round trip instance map -> nuclei structure -> instance map on the real MoNuSeg labels.

For every training label map this computes ``nuclei_structure`` and turns the structure
back into instances with ``nudiff.structure.instances_from_structure`` and with
MONAI's port of HoVer-Net's post-processing (the "HoVer-Net reference"). It reports the AJI
of each against the original map and the seconds each step took, prints a table and writes
one CSV row per image. It also runs nudiff with HoVer-Net's 5x5 marker opening
(``ours_opening5``) to show what the changed default (3) buys. ``--noise-std`` adds white
Gaussian noise in model range first, a crude stand-in for sampled structures.

The reference is MONAI's transform chain that ``HoVerNetInstanceMapPostProcessing`` runs
(``GenerateWatershedMask`` -> ``GenerateInstanceBorder`` -> ``GenerateDistanceMap`` ->
``GenerateWatershedMarkers`` -> ``Watershed``), without the per-nucleus contour and centroid
extraction that the wrapper adds and the round trip does not need. It is set to HoVer-Net's
values where MONAI exposes them (threshold 0.5 on the probability as given, minimum sizes 10,
Sobel kernel 21, marker threshold 0.4, opening disk of radius 2, 4-connected watershed);
the distance map is smoothed with MONAI's default ``GaussianSmooth()``.

Run on demand (a few minutes on 2 cores; timings on a shared machine are rough):

    python tests/benchmarks/structure_roundtrip.py [--labels DIR] [--out CSV] [--limit N] [--noise-std S]
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile

from nudiff.io.atomic import atomic_path
from nudiff.structure import (
    HORIZONTAL,
    SEMANTIC,
    VERTICAL,
    instances_from_structure,
    nuclei_structure,
    structure_from_model_range,
    structure_to_model_range,
)

REPO = Path(__file__).resolve().parents[2]  # tests/benchmarks/<this file>
MONUSEG = Path(os.environ.get("NUDIFF_MONUSEG", REPO.parent / "shared" / "data" / "monuseg"))
DEFAULT_LABELS = MONUSEG / "train" / "labels"
DEFAULT_OUT = REPO / "benchmarks" / "structure_roundtrip.csv"


def local_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI (Kumar et al. 2017) as HoVer-Net's get_fast_aji: each truth takes its best-IoU prediction.

    Used only when ``nudiff.metrics`` is not importable.
    """
    _, t = np.unique(true, return_inverse=True)  # 0 stays 0: background is the smallest id
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    t_area, p_area = np.bincount(t), np.bincount(p)
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(t[both] * p_area.size + p[both], return_counts=True)
    pair_t, pair_p = pairs // p_area.size, pairs % p_area.size
    iou = inter / (t_area[pair_t] + p_area[pair_p] - inter)
    order = np.lexsort((-iou, pair_t))  # by truth, best IoU first
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_t[order][1:] != pair_t[order][:-1]
    best = order[first]
    paired_t = np.zeros(t_area.size, dtype=bool)
    paired_t[pair_t[best]] = True
    paired_p = np.zeros(p_area.size, dtype=bool)
    paired_p[pair_p[best]] = True
    union = (t_area[pair_t[best]] + p_area[pair_p[best]] - inter[best]).sum()
    union += t_area[1:][~paired_t[1:]].sum() + p_area[1:][~paired_p[1:]].sum()
    return float(inter[best].sum() / union)


try:
    from nudiff.metrics import aji

    AJI_SOURCE = "nudiff.metrics.aji"
except ImportError:  # the metrics module is optional for this script
    aji = local_aji
    AJI_SOURCE = "local get_fast_aji equivalent"


def monai_reference():
    """MONAI's HoVer-Net post-processing chain, as a function structure -> instance map."""
    from monai.apps.pathology.transforms.post.array import (
        GenerateDistanceMap,
        GenerateInstanceBorder,
        GenerateWatershedMarkers,
        GenerateWatershedMask,
        Watershed,
    )

    # MONAI calls skimage's remove_small_objects with an argument skimage 0.26 deprecates
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    mask_fn = GenerateWatershedMask(activation=lambda x: x, threshold=0.5, min_object_size=10)
    border_fn = GenerateInstanceBorder(kernel_size=21)
    distance_fn = GenerateDistanceMap()
    markers_fn = GenerateWatershedMarkers(threshold=0.4, radius=2, min_object_size=10)
    watershed_fn = Watershed(connectivity=1)

    def run(structure: np.ndarray) -> np.ndarray:
        probability = structure[None, :, :, SEMANTIC]
        hover = np.stack([structure[..., HORIZONTAL], structure[..., VERTICAL]])
        mask = mask_fn(probability)
        border = border_fn(mask, hover)
        distance = distance_fn(mask, border)
        markers = markers_fn(mask, border)
        return np.asarray(watershed_fn(distance, mask, markers))[0]

    return run


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _add_noise(structure: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise of ``std`` on every channel in model range: a crude sampled structure."""
    if std == 0:
        return structure
    noise = rng.normal(0.0, std, structure.shape).astype(np.float32)
    return structure_from_model_range(structure_to_model_range(structure) + noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="folder of *.tif instance maps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to write")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--noise-std", type=float, default=0.0, help="white noise added in model range")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = parser.parse_args()

    paths = sorted(args.labels.glob("*.tif"))[: args.limit]
    if not paths:
        raise SystemExit(f"no *.tif label maps in {args.labels}")
    rng = np.random.default_rng(args.seed)
    methods = {
        "ours": instances_from_structure,
        # nudiff with every HoVer-Net value, including its 5x5 marker opening
        "ours_opening5": functools.partial(instances_from_structure, opening_size=5),
        "monai_hovernet": monai_reference(),
    }
    rows = []
    print(f"AJI from {AJI_SOURCE}; {len(paths)} images from {args.labels}; noise std {args.noise_std}")
    header = f"{'image':<24} {'nuclei':>6} {'s_struct':>8}" + "".join(f" {m:>15} {'s':>6}" for m in methods)
    print(header)
    for path in paths:
        inst = tifffile.imread(path)
        structure, t_structure = _timed(nuclei_structure, inst)
        structure = _add_noise(structure, args.noise_std, rng)
        nuclei = int(np.unique(inst[inst > 0]).size)
        row = {"image": path.stem, "nuclei": nuclei, "seconds_structure": t_structure}
        for name, method in methods.items():
            instances, seconds = _timed(method, structure)
            row[f"aji_{name}"] = aji(inst, instances)
            row[f"seconds_{name}"] = seconds
        rows.append(row)
        print(
            f"{row['image'][:24]:<24} {row['nuclei']:>6} {t_structure:>8.3f}"
            + "".join(f" {row[f'aji_{m}']:>15.4f} {row[f'seconds_{m}']:>6.3f}" for m in methods)
        )

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(
        f"{'mean AJI / median s':<24} {'':>6} {median('seconds_structure'):>8.3f}"
        + "".join(f" {mean(f'aji_{m}'):>15.4f} {median(f'seconds_{m}'):>6.3f}" for m in methods)
    )
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
