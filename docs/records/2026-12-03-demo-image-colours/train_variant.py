"""Train the demo's image model (conditional, then guided stage) with training overrides.

    python train_variant.py OUT_DIR '{"all": {"lr_schedule": "cosine", "min_snr_gamma": 5}}' [PCT]

run from the root of a finished demo run (it reads config/config.yaml and
results/demo/<PCT>pct/trainsets/labelled.csv; PCT defaults to 100). "all" applies to both
stages; "conditional" and "guided" to one. Writes OUT_DIR/image_model_conditional.pt and
OUT_DIR/image_model.pt.
"""

import json
import logging
import sys
from pathlib import Path

import torch
import yaml

from nudiff.diffusion.training import train_diffusion_model

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
torch.set_num_threads(1)
out, override = Path(sys.argv[1]), json.loads(sys.argv[2])
pct = sys.argv[3] if len(sys.argv) > 3 else "100"
diffusion = yaml.safe_load(Path("config/config.yaml").read_text())["diffusion"]
out.mkdir(parents=True, exist_ok=True)
for stage, name, init in (
    ("conditional", "image_model_conditional", None),
    ("guided", "image_model", out / "image_model_conditional.pt"),
):
    training = {**diffusion["image_model"][stage], **override.get("all", {}), **override.get(stage, {})}
    train_diffusion_model(
        "image",
        f"results/demo/{pct}pct/trainsets/labelled.csv",
        out / f"{name}.pt",
        network=diffusion["image_model"]["network"],
        training=training,
        schedule=diffusion["schedule"],
        checkpoint_dir=out / f"checkpoints_{stage}",
        device="cpu",
        init_model=init,
    )
