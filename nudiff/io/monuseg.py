"""Rasterise MoNuSeg's Aperio XML annotations into instance maps.

The XML lists one ``Region`` per nucleus under
``Annotations/Annotation/Regions/Region``, each a polygon of
``Vertices/Vertex`` elements with ``X`` (column) and ``Y`` (row) attributes.

Pixel convention: the challenge rasterised its training labels with MATLAB,
whose pixel centres sit at 1-based integer coordinates. A vertex ``(X, Y)``
therefore lies at 0-based ``(row, col) = (Y - 1, X - 1)``; rasterising with
``skimage.draw.polygon(Y - 1, X - 1)`` reproduces the distributed training
labels, while ``polygon(Y, X)`` would shift every nucleus one pixel down-right
(see the data README, "Conventions worth knowing").
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from skimage.draw import polygon
from skimage.segmentation import relabel_sequential

from nudiff.errors import InputDataError

logger = logging.getLogger(__name__)

_MIN_DISTINCT_VERTICES = 3


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    dims = tuple(shape)
    if len(dims) != 2 or any(int(d) != d or d <= 0 for d in dims):
        raise ValueError(f"shape must be (H, W) with positive integers, got {shape!r}")
    return int(dims[0]), int(dims[1])


def _region_vertices(region: ET.Element, path: Path) -> np.ndarray:
    """Return the region's vertices as an ``(N, 2)`` float array of ``(X, Y)``."""
    points = []
    for vertex in region.iter("Vertex"):
        try:
            points.append((float(vertex.attrib["X"]), float(vertex.attrib["Y"])))
        except (KeyError, ValueError) as exc:
            region_id = region.attrib.get("Id", "?")
            raise InputDataError(
                f"{path}: Region Id={region_id} has a Vertex without numeric X and Y ({vertex.attrib})"
            ) from exc
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def read_monuseg_xml(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the nuclei polygons of a MoNuSeg XML file.

    Regions are drawn in file order and a later region overwrites the pixels
    of an earlier one where they overlap (as the challenge's labels do).
    Degenerate regions are skipped and counted in the log: fewer than 3
    distinct vertices, or no pixel centre inside the polygon and the image.
    Kept regions get ids 1..n in file order; a region that later regions cover
    completely would leave a gap, so ids are relabelled to 1..m at the end,
    keeping file order.

    Args:
        path: the ``.xml`` file.
        shape: ``(H, W)`` of the image it annotates.

    Returns:
        ``(H, W)`` int32 instance map, 0 = background.

    Raises:
        InputDataError: naming the file, when it is missing, malformed, or
            holds no ``Region`` at all.
    """
    path = Path(path)
    height, width = _check_shape(shape)
    if not path.is_file():
        raise InputDataError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputDataError(f"{path}: malformed XML: {exc}") from exc

    # iter() walks the tree in document order, which is the drawing order.
    regions = list(root.iter("Region"))
    if not regions:
        raise InputDataError(f"{path}: no <Region> element found; is this a MoNuSeg XML?")

    inst = np.zeros((height, width), dtype=np.int32)
    few_vertices = empty = kept = 0
    for region in regions:
        xy = _region_vertices(region, path)
        if len(np.unique(xy, axis=0)) < _MIN_DISTINCT_VERTICES:
            few_vertices += 1
            continue
        rows, cols = polygon(xy[:, 1] - 1.0, xy[:, 0] - 1.0, shape=(height, width))
        if rows.size == 0:
            empty += 1
            continue
        kept += 1
        inst[rows, cols] = kept

    inst, _, _ = relabel_sequential(inst)
    inst = inst.astype(np.int32, copy=False)
    n_nuclei = int(inst.max())
    if few_vertices or empty:
        logger.warning(
            "%s: skipped %d degenerate region(s) (%d with < %d distinct vertices, "
            "%d with no pixel inside the %dx%d image)",
            path.name,
            few_vertices + empty,
            few_vertices,
            _MIN_DISTINCT_VERTICES,
            empty,
            height,
            width,
        )
    if kept != n_nuclei:
        logger.info(
            "%s: %d region(s) fully covered by later regions were dropped",
            path.name,
            kept - n_nuclei,
        )
    logger.debug("%s: %d regions -> %d nuclei", path.name, len(regions), n_nuclei)
    return inst
