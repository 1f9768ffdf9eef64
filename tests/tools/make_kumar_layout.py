"""Build HoVer-Net's Kumar layout from the MoNuSeg training images and a split file.

The Kumar images are exactly the 30 MoNuSeg training images; HoVer-Net and the
paper split them 16 train / 14 test. This writes
``out/{train,test}/Images/<name>.tif`` (copied) and ``Labels/<name>.mat``
(``inst_map``), so the kumar preset can be tried on a machine that has MoNuSeg.

    python tests/tools/make_kumar_layout.py ../shared/data/monuseg/train ../shared/data/kumar_split.tsv data/kumar
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import scipy.io

from nudiff.io.images import read_instance_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("monuseg_train", type=Path, help="folder with images/ and labels/ (instance-map TIFFs)")
    parser.add_argument("split_tsv", type=Path, help="TSV with columns image, split (train / test_*)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    with open(args.split_tsv) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        split = "train" if row["split"] == "train" else "test"
        images, labels = args.out / split / "Images", args.out / split / "Labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.monuseg_train / "images" / f"{row['image']}.tif", images / f"{row['image']}.tif")
        inst = read_instance_map(args.monuseg_train / "labels" / f"{row['image']}.tif")
        scipy.io.savemat(labels / f"{row['image']}.mat", {"inst_map": inst})
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
