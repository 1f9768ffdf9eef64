"""Experiment: smooth each synthetic nucleus (per-instance binary opening, disk radius r),
re-sample images on the smoothed labels, judge with the labelled Hover-Net."""
import json, logging, sys
from pathlib import Path
import numpy as np, torch, yaml
from scipy import ndimage
from skimage.morphology import disk
from nudiff.structure.cleanup import clean_instances
from nudiff.assessment.segmenter_agreement import segment_synthetic_pairs
from nudiff.diffusion.synthesis import sample_images, sampling_settings
from nudiff.config import image_sampling

logging.basicConfig(level=logging.WARNING)
torch.set_num_threads(1)
out, r, pct = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
out.mkdir(parents=True, exist_ok=True)
config = yaml.safe_load(Path("config/config.yaml").read_text())
sampling = sampling_settings(image_sampling(config))
run = Path(f"results/demo/{pct}")

def smooth(inst, r):
    if r == 0:
        return inst
    outm = np.zeros_like(inst)
    for obj, region in enumerate(ndimage.find_objects(inst), start=1):
        if region is None:
            continue
        window = tuple(slice(max(s.start - r - 1, 0), s.stop + r + 1) for s in region)
        m = ndimage.binary_opening(inst[window] == obj, structure=disk(r))
        outm[window][m & (outm[window] == 0)] = obj
    return clean_instances(outm, **config["diffusion"]["cleanup"])

pairs = []
for k in (0, 1):
    with np.load(run / f"synthetic/structures_{k}.npz") as d:
        arrays = dict(d)
    arrays["instances"] = np.stack([smooth(i, r) for i in arrays["instances"]]).astype(np.int32)
    np.savez(out / f"structures_{k}.npz", **arrays)
    pairs.append(out / f"pairs_{k}.npz")
    sample_images(run / "diffusion/image_model.pt", out / f"structures_{k}.npz", pairs[-1],
                  sampling=sampling, selection=run / "diffusion/image_model_selection.json")
seg = run / "segmentation/hovernet/labelled/seed0"
print(segment_synthetic_pairs(seg / "model.pt", pairs, seg / "scores.csv",
      out_csv=out / "agree.csv", out_per_pair_csv=out / "agree_per_pair.csv").to_string())
