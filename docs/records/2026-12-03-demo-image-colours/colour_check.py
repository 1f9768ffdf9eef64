"""Images sampled for real labels, judged by the labelled Hover-Net, beside the real images.

    python colour_check.py OUT.png MODEL_DIR [MODEL_DIR ...]

run from the root of a finished demo run. The labels are 16 of the 64 px tiles of the demo's
test images that hold at least 3 nuclei (seed 0). For each model (``MODEL_DIR/image_model.pt``,
EMA weights, the demo config's sampler at w = 1) it prints the mean Dice / AJI of the 100%
subset's labelled Hover-Net against the labels and the images' mean RGB; the real tiles give
the reference. OUT.png shows 8 labels' images, one row per model.
"""

import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import yaml
from skimage.segmentation import relabel_sequential

from nudiff.assessment.segmenter_agreement import judge_images
from nudiff.datasets.prepare import read_manifest
from nudiff.diffusion.selection import sample_conditioned_images
from nudiff.diffusion.synthesis import sampling_settings
from nudiff.diffusion.training import load_diffusion_model
from nudiff.io.images import read_image, read_instance_map
from nudiff.segmentation.train import load_segmenter

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TILE, N_LABELS, N_SHOWN = 64, 16, 8
out_png, model_dirs = sys.argv[1], sys.argv[2:]
sampling = replace(
    sampling_settings(yaml.safe_load(Path("config/config.yaml").read_text())["diffusion"]["sampling"]),
    guidance_scale=1.0,
)
segmenter, meta = load_segmenter("results/demo/100pct/segmentation/hovernet/labelled/seed0/model.pt", "cpu")

manifest = read_manifest("results/demo/prepared/manifest.csv")
tiles, labels = [], []
for row in manifest[manifest.split == "test"].itertuples():
    rgb, inst = read_image(row.image), read_instance_map(row.label)
    for y in range(0, rgb.shape[0] - TILE + 1, TILE):
        for x in range(0, rgb.shape[1] - TILE + 1, TILE):
            label = relabel_sequential(inst[y : y + TILE, x : x + TILE])[0]
            if label.max() >= 3:
                tiles.append(rgb[y : y + TILE, x : x + TILE])
                labels.append(label)
keep = np.random.default_rng(0).choice(len(labels), N_LABELS, replace=False)
rows = [("real images", np.stack([tiles[i] for i in keep]))]
labels = [labels[i] for i in keep]
for model_dir in model_dirs:
    model, schedule, _ = load_diffusion_model(Path(model_dir) / "image_model.pt", expect="image", weights="ema")
    images = sample_conditioned_images(model, schedule, labels, sampling, device="cpu", stream="sweep_image")
    rows.append((model_dir, images))
for name, images in rows:
    scores = judge_images(segmenter, meta, images, labels, watershed=None, device="cpu")
    rgb = images.reshape(-1, 3).mean(axis=0).round().astype(int).tolist()
    print(f"{name}: dice {scores.dice.mean():.3f} aji {scores.aji.mean():.3f} mean RGB {rgb}")
fig, axes = plt.subplots(len(rows), N_SHOWN, figsize=(1.5 * N_SHOWN, 1.7 * len(rows)), squeeze=False)
for (name, images), line in zip(rows, axes):
    for image, ax in zip(images, line):
        ax.imshow(image)
        ax.axis("off")
    line[0].set_title(name, fontsize=7, loc="left")
fig.tight_layout()
fig.savefig(out_png, dpi=80)
