"""Train a tiny Hover-Net and a tiny PFF-Net with one tree's code; save their weights and logs."""
import sys, json
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(root / "tests"))
import torch
torch.set_num_threads(1)
import test_segmentation_train as hv
import test_pffnet_train as pf
out.mkdir(parents=True, exist_ok=True)
samples = hv.sample_table(out)
hv.run(out, samples, "hovernet", iterations=8)
pf.pff_run(out, pf.sample_table(out / "p"), "pffnet")
import nudiff
print(nudiff.__file__)
