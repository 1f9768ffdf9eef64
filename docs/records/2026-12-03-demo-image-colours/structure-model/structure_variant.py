"""The demo's 100% structure model trained with overrides, judged the way the workflow judges it.

    python structure_variant.py OUT_DIR '{"lr_schedule": "cosine", "min_snr_gamma": 5}' \
        ['{"marker_threshold": 0.5}' ['{"min_area": 20}' [OVERSAMPLE]]]

run from the root of a finished demo run. Trains the structure model (skipped when
OUT_DIR/structure_model.pt exists: copy a run's model there to re-judge it), scores its
weights by nuclei statistics (OUT_DIR/sel.csv), samples 32 structures (the workflow's
noise seeds), samples their images with the run's image model and scores the labelled
Hover-Net's agreement with the pairs (OUT_DIR/agree.csv). The optional third argument
overrides the watershed for the structures (what ``diffusion.structure_watershed`` does);
the optional fourth overrides ``diffusion.cleanup``; the optional fifth is
``diffusion.structure_oversample`` (default 1).
"""

import json
import logging
import sys
from pathlib import Path

import torch
import yaml

from nudiff.assessment.segmenter_agreement import segment_synthetic_pairs
from nudiff.diffusion.selection import select_structure_weights
from nudiff.diffusion.synthesis import CleanupSettings, sample_images, sample_structures, sampling_settings
from nudiff.diffusion.training import train_diffusion_model

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
torch.set_num_threads(1)
out, override = Path(sys.argv[1]), json.loads(sys.argv[2])
config = yaml.safe_load(Path("config/config.yaml").read_text())
diffusion = config["diffusion"]
watershed = {**config["watershed"], **json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}")}
labelled = "results/demo/100pct/trainsets/labelled.csv"
run = Path("results/demo/100pct")
out.mkdir(parents=True, exist_ok=True)

if not (out / "structure_model.pt").exists():
    train_diffusion_model(
        "structure",
        labelled,
        out / "structure_model.pt",
        network=diffusion["structure_model"]["network"],
        training={**diffusion["structure_model"]["training"], **override},
        schedule=diffusion["schedule"],
        checkpoint_dir=out / "checkpoints",
        device="cpu",
    )
cleanup_override = json.loads(sys.argv[4] if len(sys.argv) > 4 else "{}")
oversample = int(sys.argv[5]) if len(sys.argv) > 5 else 1
sampling = sampling_settings(diffusion["sampling"])
cleanup = CleanupSettings(**{**diffusion["cleanup"], **cleanup_override})
select_structure_weights(
    out / "structure_model.pt",
    labelled,
    out_csv=out / "sel.csv",
    out_json=out / "sel.json",
    n=diffusion["selection"]["n_structures"],
    sampling=sampling,
    watershed=watershed,
    cleanup=cleanup,
)
sample_structures(
    out / "structure_model.pt",
    out / "structures.npz",
    n_total=32,
    n_shards=1,
    shard=0,
    sampling=sampling,
    watershed=watershed,
    cleanup=cleanup,
    selection=out / "sel.json",
    oversample=oversample,
    labelled_csv=labelled,
)
sample_images(
    run / "diffusion/image_model.pt",
    out / "structures.npz",
    out / "pairs.npz",
    sampling=sampling,
    selection=run / "diffusion/image_model_selection.json",
)
segmenter = run / "segmentation/hovernet/labelled/seed0"
summary = segment_synthetic_pairs(
    segmenter / "model.pt",
    [out / "pairs.npz"],
    segmenter / "scores.csv",
    out_csv=out / "agree.csv",
    out_per_pair_csv=out / "agree_per_pair.csv",
)
print(summary.to_string())
