"""CIELAB mean colour of 6 images sampled for the first 6 labels of a run's pairs_0.npz, per
weight set and setting: the probe behind this folder's colour diagnosis.

    python colour_probe.py RESULTS_DIR [setting ...]   # RESULTS_DIR: a run's results/monuseg/10pct/
"""

import sys
import time

import numpy as np
import torch
from skimage.color import rgb2lab

from nudiff.diffusion.synthesis import SamplingSettings, image_batch
from nudiff.diffusion.training import load_diffusion_model

torch.set_num_threads(1)
# name: (model file, weights, snapshot step, guidance w, cpu_bf16, DDPM steps)
SETTINGS = {
    "guided_model100_w1_bf16": ("image_model.pt", "model", 100, 1.0, True, 50),
    "guided_model100_w1_fp32": ("image_model.pt", "model", 100, 1.0, False, 50),
    "guided_ema400_w1_bf16": ("image_model.pt", "ema", None, 1.0, True, 50),
    "guided_model100_w0_bf16": ("image_model.pt", "model", 100, 0.0, True, 50),
    "cond_ema_w0_bf16": ("image_model_conditional.pt", "ema", None, 0.0, True, 50),
    "cond_ema_w0_bf16_200": ("image_model_conditional.pt", "ema", None, 0.0, True, 200),
}

results = sys.argv[1]
instances = np.load(f"{results}/synthetic/pairs_0.npz")["instances"][:6]
for name in sys.argv[2:] or list(SETTINGS):
    model_file, weights, step, w, bf16, steps = SETTINGS[name]
    model, schedule, _ = load_diffusion_model(f"{results}/diffusion/{model_file}", weights=weights, step=step)
    start = time.time()
    sampling = SamplingSettings(steps=steps, guidance_scale=w, cpu_bf16=bf16, batch_size=6)
    images = image_batch(model, schedule, instances, np.arange(len(instances)), sampling, device="cpu")
    lab = rgb2lab(images).reshape(-1, 3).mean(0)
    print(f"{name}: L*a*b* {lab[0]:.1f} {lab[1]:.1f} {lab[2]:.1f} ({time.time() - start:.0f} s)", flush=True)
