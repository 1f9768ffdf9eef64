"""The labelled Hover-Net on images that label_to_image drew for the demo's test maps, against
the same Hover-Net on the real test images (issue 24: how close drawn images come to real ones,
read by a segmenter that never saw a synthetic image).

    python judge.py <finished demo workdir> <label_to_image folder> <pct> <out.csv>

Both sets are segmented with the inference and watershed settings of config/config.yaml (as
segment_test_images does) and scored against their maps with nudiff.metrics.compute_all.
"""

import sys
from pathlib import Path

import pandas as pd
import yaml

from nudiff.io.images import read_image, read_instance_map
from nudiff.metrics import compute_all
from nudiff.segmentation.registry import load_segmenter, segmenter_of


def main(workdir: Path, drawn: Path, pct: str, out_csv: Path) -> None:
    config = yaml.safe_load((Path(__file__).parents[3] / "config" / "config.yaml").read_text())
    run = workdir / f"results/demo/{pct}pct/segmentation/hovernet/labelled/seed0"
    model, meta = load_segmenter(run / "model.pt")
    predict = segmenter_of(meta["model"]).predictor(
        model, meta, watershed=config["watershed"], device="cpu", **config["segmentation"]["hovernet"]["inference"]
    )
    rows = []
    for image in sorted((drawn / "train" / "images").glob("*.png")):
        inst, _, _ = predict(read_image(image))
        truth = read_instance_map(drawn / "train" / "labels" / f"{image.stem}.tif")
        rows.append({"set": "drawn for the test maps", "name": image.stem, **compute_all(truth, inst)})
    real = pd.read_csv(run / "scores.csv")
    rows += [{"set": "real test images", **row} for row in real.to_dict("records")]
    table = pd.DataFrame(rows)
    table.to_csv(out_csv, index=False)
    print(table.groupby("set")[["dice", "aji"]].agg(["count", "mean"]).round(3).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
