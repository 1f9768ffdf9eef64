"""Recreate the MoNuSeg crop fixtures in this folder (run once by hand).

    python tests/data/make_monuseg_crop.py <MoNuSeg folder>

Cuts a 64x64 crop of one training image and its label, keeping the source
formats (LZW RGB TIFF, zlib uint16 TIFF), and writes an Aperio-style XML whose
polygons trace each nucleus of the crop along the pixel edges, in MoNuSeg's
1-based (MATLAB) coordinates: pixel (row r, col c) has its centre at
X = c + 1, Y = r + 1. No pixel centre lies on such a polygon, so rasterising it
under that convention gives back exactly the label crop.
"""

import sys
from pathlib import Path

import numpy as np
import tifffile
from skimage.measure import find_contours

NAME = "TCGA-HE-7129-01Z-00-DX1"
ROW, COL, SIZE = 640, 544, 64
HERE = Path(__file__).parent


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    # The contour is closed (first == last); keep only corners.
    ring = points[:-1]
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(cross) > 1e-9]


def main(monuseg: Path) -> None:
    window = np.s_[ROW : ROW + SIZE, COL : COL + SIZE]
    image = tifffile.imread(monuseg / "train" / "images" / f"{NAME}.tif")[window]
    label = tifffile.imread(monuseg / "train" / "labels" / f"{NAME}.tif")[window]
    tifffile.imwrite(HERE / "monuseg_crop.tif", image, compression="lzw", photometric="rgb")
    tifffile.imwrite(HERE / "monuseg_crop_label.tif", label, compression="zlib")

    regions = []
    for k, nucleus in enumerate(i for i in np.unique(label) if i):
        mask = np.pad(label == nucleus, 1)
        (contour,) = find_contours(mask.astype(float), 0.5)  # one outline per nucleus
        corners = _drop_collinear(contour) - 1  # undo the padding
        vertices = "".join(f'<Vertex X="{c + 1:g}" Y="{r + 1:g}"/>' for r, c in corners)
        regions.append(f'<Region Id="{k + 1}"><Vertices>{vertices}</Vertices></Region>\n')
    xml = (
        '<Annotations MicronsPerPixel="0.252700">\n<Annotation Id="1"><Regions>\n'
        + "".join(regions)
        + "</Regions></Annotation>\n</Annotations>\n"
    )
    (HERE / "monuseg_crop.xml").write_text(xml)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
