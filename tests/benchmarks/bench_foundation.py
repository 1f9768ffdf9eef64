"""Benchmark of nudiff's data-side hot paths on the real MoNuSeg images.

(a) metrics per 1000x1000 image: each test image's XML label (``read_monuseg_xml``) against a
    perturbed copy (seeded: shifted 2 px, 5% of nuclei dropped, a few touching pairs merged,
    relabelled with random ids > 65535); ``compute_all`` and each of dice / aji / aji_plus / pq,
    timed side by side in the same loop (median over repeats per image, then over images);
(b) ``nuclei_structure`` and ``instances_from_structure`` per 1000x1000 training label, and
    ``nuclei_structure`` per 256x256 patch (what every training step computes per sample);
(c) ``prepare_dataset`` of the training images into a temporary folder, ``build_patch_index``
    (256 px, stride 128) and ResNet50 features (weights "none", resize 256, crop 224, batch 32)
    of every patch through ``compute_features``: total seconds and patches per second.

Run on demand (not collected by pytest):

    python tests/benchmarks/bench_foundation.py [--quick] [--threads N] [--repeats R] [--images N]

``--quick`` uses 3 images and 1 repeat. Output: ``benchmarks/bench_foundation[_quick].{md,json,csv}``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import benchkit
import numpy as np
import pandas as pd
import tifffile
from benchkit import median, timed

PARTS = ("metrics", "structure", "patches")


# ---- (a) metrics ----------------------------------------------------------------------


def touching_pairs(label: np.ndarray) -> np.ndarray:
    """``(k, 2)`` distinct pairs ``(a, b)``, ``a < b``, of instances that share a 4-neighbour edge."""
    pairs = []
    for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1, :], label[1:, :])):
        touch = (a > 0) & (b > 0) & (a != b)
        pairs.append(np.stack([np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def perturb(
    label: np.ndarray, rng: np.random.Generator, *, shift: int = 2, drop: float = 0.05, merges: int = 10
) -> tuple[np.ndarray, dict[str, int]]:
    """A plausible "prediction" from a true ``(H, W)`` label map.

    Shift down-right by ``shift`` px (zero fill), set a ``drop`` share of the nuclei to
    background, merge up to ``merges`` disjoint touching pairs, then give every instance a
    random distinct id in [65536, 2**31) (int64), so the metrics' sorting path is exercised.
    """
    out = np.zeros_like(label)
    out[shift:, shift:] = label[:-shift, :-shift]
    ids = np.unique(out[out > 0])
    dropped = rng.choice(ids, size=round(drop * ids.size), replace=False)
    out[np.isin(out, dropped)] = 0
    pairs = touching_pairs(out)
    lookup = np.arange(int(out.max()) + 1)
    used: set[int] = set()
    merged = 0
    for a, b in pairs[rng.permutation(len(pairs))]:
        if merged == merges:
            break
        if a in used or b in used:
            continue
        lookup[b] = a
        used.update((int(a), int(b)))
        merged += 1
    out = lookup[out]
    kept = np.unique(out[out > 0])
    new_ids = rng.choice(2**31 - 65536, size=kept.size, replace=False) + 65536
    relabel = np.zeros(int(out.max()) + 1, dtype=np.int64)
    relabel[kept] = new_ids
    return relabel[out], {"nuclei": int(ids.size), "dropped": int(dropped.size), "merged_pairs": merged}


def bench_metrics(test_dir: Path, n_images: int | None, repeats: int, seed: int) -> tuple[list[dict], dict]:
    from nudiff import metrics
    from nudiff.io.monuseg import read_monuseg_xml

    functions = {
        "compute_all": metrics.compute_all,
        "dice": metrics.dice,
        "aji": metrics.aji,
        "aji_plus": metrics.aji_plus,
        "pq": metrics.pq,
    }
    xmls = sorted(test_dir.glob("*.xml"))[:n_images]
    if not xmls:
        raise SystemExit(f"no *.xml in {test_dir}")
    per_image = []
    for k, xml in enumerate(xmls):
        shape = tifffile.TiffFile(xml.with_suffix(".tif")).pages[0].shape[:2]
        true, t_read = timed(read_monuseg_xml, xml, shape)
        pred, info = perturb(true, np.random.default_rng([seed, k]))
        times: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(repeats):  # round-robin: every function sees the same machine state
            for name, fn in functions.items():
                result, seconds = timed(fn, true, pred)
                times[name].append(seconds)
                if name == "compute_all":
                    scores = result
        per_image.append(
            {
                "image": xml.stem,
                "height": shape[0],
                "width": shape[1],
                **info,
                "seconds_read_monuseg_xml": t_read,
                **{f"seconds_{name}": median(values) for name, values in times.items()},
                **scores,
            }
        )
        print(f"  metrics {xml.stem}: compute_all {per_image[-1]['seconds_compute_all']:.3f} s", flush=True)
    frame = pd.DataFrame(per_image)
    separate = frame[[f"seconds_{n}" for n in ("dice", "aji", "aji_plus", "pq")]].sum(axis=1)
    summary = {
        "images": len(frame),
        "seconds_per_image": {
            name: float(frame[f"seconds_{name}"].median()) for name in ["read_monuseg_xml", *functions]
        },
        "ratio_compute_all_to_four_separate_calls": float((frame["seconds_compute_all"] / separate).median()),
        "mean_scores": {k: float(frame[k].mean()) for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq")},
    }
    return per_image, summary


def metrics_section(summary: dict) -> str:
    rows = [{"function": name, "median": s} for name, s in summary["seconds_per_image"].items()]
    scores = ", ".join(f"{k} {v:.3f}" for k, v in summary["mean_scores"].items())
    return (
        f"### (a) Metrics per 1000x1000 test image ({summary['images']} images)\n\n"
        "True map: the XML label; prediction: shifted 2 px, 5% of nuclei dropped, up to 10 touching "
        "pairs merged, random int64 ids > 65535. Median over repeats per image, then over images.\n\n"
        + benchkit.md_table(rows, [("function", "function", ""), ("median", "median s / image", ".4f")])
        + f"\n\n`compute_all` / (dice + aji + aji_plus + pq called separately), median per image: "
        f"{summary['ratio_compute_all_to_four_separate_calls']:.2f}. Mean scores of the perturbed "
        f"copies (sanity): {scores}."
    )


# ---- (b) structures ---------------------------------------------------------------------


def bench_structure(label_dir: Path, n_images: int | None, repeats: int, patch_images: int) -> tuple[list[dict], dict]:
    from nudiff.patches import patch_grid
    from nudiff.structure import instances_from_structure, nuclei_structure

    paths = sorted(label_dir.glob("*.tif"))[:n_images]
    if not paths:
        raise SystemExit(f"no *.tif in {label_dir}")
    rows, patch_seconds = [], []
    for k, path in enumerate(paths):
        inst = tifffile.imread(path)
        t_struct, t_inst = [], []
        for _ in range(repeats):
            structure, seconds = timed(nuclei_structure, inst)
            t_struct.append(seconds)
            _, seconds = timed(instances_from_structure, structure)
            t_inst.append(seconds)
        rows.append(
            {
                "image": path.stem,
                "nuclei": int(np.unique(inst[inst > 0]).size),
                "seconds_nuclei_structure": median(t_struct),
                "seconds_instances_from_structure": median(t_inst),
            }
        )
        if k < patch_images:
            for y, x in patch_grid(*inst.shape, 256, 128):
                patch_seconds.append(timed(nuclei_structure, inst[y : y + 256, x : x + 256])[1])
        print(
            f"  structure {path.stem}: {rows[-1]['seconds_nuclei_structure']:.3f} s, "
            f"watershed {rows[-1]['seconds_instances_from_structure']:.3f} s",
            flush=True,
        )
    frame = pd.DataFrame(rows)
    summary = {
        "images": len(frame),
        "seconds_per_image": {
            "nuclei_structure": float(frame["seconds_nuclei_structure"].median()),
            "instances_from_structure": float(frame["seconds_instances_from_structure"].median()),
        },
        "nuclei_structure_256_patch": {"patches": len(patch_seconds), "median_seconds": median(patch_seconds)},
    }
    return rows, summary


def structure_section(summary: dict) -> str:
    rows = [{"function": f"{name} (1000x1000 image)", "median": s} for name, s in summary["seconds_per_image"].items()]
    patch = summary["nuclei_structure_256_patch"]
    rows.append(
        {"function": f"nuclei_structure (256x256 patch, {patch['patches']} patches)", "median": patch["median_seconds"]}
    )
    return (
        f"### (b) Structures of the {summary['images']} training labels\n\n"
        "`instances_from_structure` runs on the exact structure of the label (default watershed "
        "settings). Median over repeats per image, then over images.\n\n"
        + benchkit.md_table(rows, [("function", "function", ""), ("median", "median s", ".4f")])
    )


# ---- (c) patches and features ------------------------------------------------------------


def bench_patches(train_dir: Path, n_images: int | None, batch_size: int, seed: int) -> dict:
    from nudiff.datasets.prepare import prepare_dataset
    from nudiff.datasets.sources import list_source_items
    from nudiff.features import compute_features
    from nudiff.patches import build_patch_index, write_patch_index

    items = list_source_items("monuseg", train_dir.parent, splits=("train",))[:n_images]
    with tempfile.TemporaryDirectory(prefix="nudiff-bench-") as tmp:
        prepared = Path(tmp) / "prepared"
        manifest, t_prepare = timed(prepare_dataset, items, prepared)
        index, t_index = timed(build_patch_index, manifest, size=256, stride=128)
        write_patch_index(index, Path(tmp) / "patches.csv")
        features, t_features = timed(
            compute_features,
            prepared,
            Path(tmp) / "patches.csv",
            Path(tmp) / "features.npz",
            weights="none",
            resize=256,
            crop=224,
            batch_size=batch_size,
            seed=seed,
        )
    return {
        "images": len(items),
        "patches": len(index),
        "feature_shape": list(features.shape),
        "seconds_prepare_dataset": t_prepare,
        "seconds_build_patch_index": t_index,
        "seconds_features": t_features,
        "batch_size": batch_size,
        "patches_per_second_index": len(index) / t_index,
        "patches_per_second_features": len(index) / t_features,
    }


def patches_section(summary: dict) -> str:
    rows = [
        {
            "step": "prepare_dataset (read TIFF, write PNG + labels)",
            "seconds": summary["seconds_prepare_dataset"],
            "rate": None,
        },
        {
            "step": "build_patch_index (256 px, stride 128)",
            "seconds": summary["seconds_build_patch_index"],
            "rate": summary["patches_per_second_index"],
        },
        {
            "step": f"ResNet50 features (none, 224 crop, batch {summary['batch_size']})",
            "seconds": summary["seconds_features"],
            "rate": summary["patches_per_second_features"],
        },
    ]
    return (
        f"### (c) Patches and features ({summary['images']} training images, {summary['patches']} patches)\n\n"
        "One run each (features include building the network and reading the prepared images).\n\n"
        + benchkit.md_table(rows, [("step", "step", ""), ("seconds", "total s", ".2f"), ("rate", "patches / s", ".1f")])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="3 images, 1 repeat: checks that the script works")
    parser.add_argument("--repeats", type=int, default=None, help="timings per image (default 3; quick 1)")
    parser.add_argument("--images", type=int, default=None, help="use the first N images of each set (quick: 3)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--patch-images", type=int, default=3, help="images whose 256 px patches get timed in (b)")
    parser.add_argument("--batch-size", type=int, default=32, help="ResNet50 batch size in (c)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    parser.add_argument("--out-dir", type=Path, default=benchkit.OUT_DIR)
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        raise SystemExit(f"--parts: unknown {unknown}; choose from {PARTS}")
    repeats = args.repeats or (1 if args.quick else 3)
    n_images = args.images or (3 if args.quick else None)
    patch_images = min(args.patch_images, 1) if args.quick else args.patch_images
    benchkit.set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    sections, rows, data = [], [], {"repeats": repeats}
    if "metrics" in parts:
        per_image, data["metrics"] = bench_metrics(benchkit.require_monuseg("test"), n_images, repeats, args.seed)
        rows += [{"part": "metrics", **row} for row in per_image]
        sections.append(metrics_section(data["metrics"]))
    if "structure" in parts:
        per_image, data["structure"] = bench_structure(
            benchkit.require_monuseg("train", "labels"), n_images, repeats, patch_images
        )
        rows += [{"part": "structure", **row} for row in per_image]
        sections.append(structure_section(data["structure"]))
    if "patches" in parts:
        data["patches"] = bench_patches(benchkit.require_monuseg("train"), n_images, args.batch_size, args.seed)
        rows.append({"part": "patches", **{k: v for k, v in data["patches"].items() if k != "feature_shape"}})
        sections.append(patches_section(data["patches"]))
    name = "bench_foundation_quick" if args.quick else "bench_foundation"
    benchkit.write_report(
        name,
        title="Foundation: metrics, structures, patches and features",
        sections=sections,
        data=data,
        rows=rows,
        threads=args.threads,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
