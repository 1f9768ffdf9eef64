"""The colour figure of this folder: real labelled patches beside the same 8 synthetic labels'
images from two runs' pairs shards, and the second run's images after colour transfer.

    python docs/records/2026-12-01-monuseg-cpu-10pct-do-pairs-help/colour/colour_figure.py OLD_PAIRS NEW_PAIRS LABELLED_CSV OUT_PNG

OLD_PAIRS: a pairs shard sampled with the weights agreement alone chose; NEW_PAIRS: the same
shard (same structures) sampled with the weights chosen by agreement minus colour KS.
"""

import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from skimage.color import rgb2lab

from nudiff.diffusion.synthesis import real_colours, transfer_colours
from nudiff.samples import SampleReader, read_sample_table

old_pairs, new_pairs, labelled_csv, out_png = sys.argv[1:5]
old, new = np.load(old_pairs), np.load(new_pairs)
if not np.array_equal(old["sample_index"][:8], new["sample_index"][:8]):
    raise SystemExit("the two shards do not hold the same samples")
images = new["sampled_images"] if "sampled_images" in new.files else new["images"]
moved, _ = transfer_colours(images[:8], new["instances"][:8], new["sample_index"][:8], real_colours(labelled_csv), 0)
reader = SampleReader(read_sample_table(labelled_csv))
real = [reader[i][0] for i in np.linspace(0, len(reader) - 1, 8).round().astype(int)]
rows = [
    ("real labelled patches", real),
    ("raw guided@100\n(agreement only)", old["images"][:8]),
    ("EMA guided@100\n(agreement - colour KS)", images[:8]),
    ("EMA@100 + colour\ntransfer", moved),
]
fig, axes = plt.subplots(len(rows), 8, figsize=(16, 8.6))
for r, (name, ims) in enumerate(rows):
    lab = rgb2lab(np.stack(ims)).reshape(-1, 3).mean(0)
    for c in range(8):
        axes[r, c].imshow(ims[c])
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(f"{name}\nL*a*b* {lab[0]:.0f} {lab[1]:.0f} {lab[2]:.0f}", fontsize=9)
fig.suptitle("MoNuSeg 10%, 128 px: rows 2-4 are the same 8 synthetic labels")
fig.tight_layout()
fig.savefig(out_png, dpi=80)
