"""Rule ``label_to_image``: images drawn by a trained image model for a user's own instance maps.

The folder of maps is either a folder of ``.tif``/``.png`` instance maps, or a split folder of
the ``folder`` layout (``labels/`` beside ``images/``, e.g. a prepared dataset's split): then
the maps are ``labels/*``, and each needs an image of the same name in ``images/``, as
:func:`nudiff.datasets.sources.list_source_items` requires (the images are not used).

Each map is conditioned on exactly its own structure
(:func:`nudiff.diffusion.synthesis.image_batch`). A map larger than the model's patches is cut
into tiles of the model's patch size, row by row, each drawn conditioned on the structure of
its crop of the map (a nucleus cut by a tile border is two half-nuclei to the model), and the
tiles are put back together: so both sides of a map must be multiples of the patch size.

Copy ``k`` of map ``m`` (names in sorted order) draws its tiles' noise from generators
``(seed, label_to_image stream, i)``, ``i`` counting the tiles of every copy of every map in
that order (the manifest's ``first_sample_index``, ``tiles``).

Everything is read and checked before the model draws anything, and the output folder appears
only when complete: bad input gives an :class:`~nudiff.errors.InputDataError` and no output.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nudiff.diffusion.synthesis import SamplingSettings, chosen_weights, image_batch
from nudiff.diffusion.training import load_diffusion_model
from nudiff.errors import InputDataError
from nudiff.export.layouts import export_folder
from nudiff.export.training_set import weights_name
from nudiff.io.digest import file_sha256
from nudiff.io.images import IMAGE_SUFFIXES, read_instance_map

logger = logging.getLogger(__name__)

STREAM = "label_to_image"
COLUMNS = [
    "source_map",
    "source_sha256",
    "copy",
    "first_sample_index",
    "tiles",
    "image_model_sha256",
    "image_weights",
    "sampler",
    "steps",
    "guidance_scale",
    "seed",
    "stream",
]


def _files(folder: Path) -> list[Path]:
    """The folder's .tif/.png files; hidden ones (editor backups, atomic temporaries) skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def map_files(folder: str | os.PathLike) -> list[Path]:
    """The instance maps of ``folder`` (see the module docstring), in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"{folder}: folder of instance maps not found")
    labels_dir = folder / "labels"
    if labels_dir.is_dir():
        maps = _files(labels_dir)
        images = {p.stem for p in _files(folder / "images")}
        if (folder / "images").is_dir():
            unpaired = [str(p) for p in maps if p.stem not in images]
            if unpaired:
                raise InputDataError(
                    f"{unpaired[0]}: label file without an image of the same name in {folder / 'images'}"
                    + (f" (and {len(unpaired) - 1} more)" if len(unpaired) > 1 else "")
                )
    else:
        maps = _files(folder)
    if not maps:
        raise InputDataError(f"{folder}: no .tif or .png instance maps in it (nor in labels/)")
    stems = [p.stem for p in maps]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise InputDataError(f"{folder}: several maps share the name(s) {duplicated}")
    return maps


def check_tiling(path: Path, shape: tuple[int, int], size: int) -> tuple[int, int]:
    """Tiles (rows, columns) of ``size`` that cover a map of ``shape`` exactly, or an error."""
    height, width = shape
    if height < size or width < size:
        raise InputDataError(
            f"{path}: the map is {height}x{width}, smaller than the image model's {size}x{size} patches; "
            "use an image model trained on patches of the map's size or smaller"
        )
    if height % size or width % size:
        raise InputDataError(
            f"{path}: the map is {height}x{width}, not a multiple of the image model's {size}x{size} patches, "
            "so it cannot be cut into whole tiles; crop or pad it to a multiple"
        )
    return height // size, width // size


def tiles_of(inst: np.ndarray, size: int) -> np.ndarray:
    """``(rows * cols, size, size)`` tiles, row by row."""
    rows, cols = inst.shape[0] // size, inst.shape[1] // size
    return inst.reshape(rows, size, cols, size).swapaxes(1, 2).reshape(rows * cols, size, size)


def untile(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The image of ``(rows * cols, S, S, C)`` tiles put back together, ``(rows * S, cols * S, C)``."""
    size = tiles.shape[1]
    return tiles.reshape(rows, cols, size, size, -1).swapaxes(1, 2).reshape(rows * size, cols * size, -1)


def label_to_image(
    labels_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sampling: SamplingSettings,
    selection: str | os.PathLike | None = None,
    n_per_map: int = 1,
    device: str = "cpu",
) -> int:
    """Rule ``label_to_image``: ``n_per_map`` images for every instance map of ``labels_dir``,
    drawn by the image model ``model_path`` (the weights ``selection`` chose) with ``sampling``
    (its guidance scale and seed), written to ``out_dir`` in the export layout
    (:mod:`nudiff.export.layouts`) with the maps; returns the pairs written.

    Raises:
        InputDataError: an empty folder, a map that is not an integer instance map (float,
            RGB, negative ids), a label without its image, or a map whose size the model's
            tiles cannot cover; nothing is written then.
    """
    if n_per_map < 1:
        raise ValueError(f"n_per_map must be >= 1, got {n_per_map}")
    paths = map_files(labels_dir)
    maps = [read_instance_map(p) for p in paths]  # InputDataError for float, RGB, negative ids
    chosen = chosen_weights(selection)
    model, schedule, saved = load_diffusion_model(model_path, device=device, expect="image", **chosen)
    size = int(saved["patch_size"])
    layout = [check_tiling(p, m.shape, size) for p, m in zip(paths, maps, strict=True)]

    # every tile of every copy of every map, in order; tile i draws from generator i of the stream
    jobs = [(m, k) for m in range(len(maps)) for k in range(n_per_map)]
    tiles = [tiles_of(maps[m], size) for m, _ in jobs]
    firsts = np.cumsum([0] + [len(t) for t in tiles])
    all_tiles = np.concatenate(tiles)
    images = np.zeros((len(all_tiles), size, size, 3), np.uint8)
    for start in range(0, len(all_tiles), sampling.batch_size):
        batch = np.arange(start, min(start + sampling.batch_size, len(all_tiles)))
        images[batch] = image_batch(model, schedule, all_tiles[batch], batch, sampling, device=device, stream=STREAM)
        logger.info("tiles %d..%d of %d drawn", batch[0], batch[-1], len(all_tiles))

    shared = {
        "image_model_sha256": file_sha256(model_path),
        "image_weights": weights_name(selection),
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "guidance_scale": sampling.guidance_scale,
        "seed": sampling.seed,
        "stream": STREAM,
    }
    with export_folder(out_dir, COLUMNS) as folder:
        for j, (m, k) in enumerate(jobs):
            rows, cols = layout[m]
            name = paths[m].stem if n_per_map == 1 else f"{paths[m].stem}_{k}"
            folder.add(
                name,
                untile(images[firsts[j] : firsts[j + 1]], rows, cols),
                maps[m],
                source_map=str(paths[m].resolve()),
                source_sha256=file_sha256(paths[m]),
                copy=k,
                first_sample_index=int(firsts[j]),
                tiles=rows * cols,
                **shared,
            )
    logger.info(
        "%d images for %d maps (%d per map) in %s; sampling %s",
        len(jobs),
        len(maps),
        n_per_map,
        out_dir,
        asdict(sampling),
    )
    return len(jobs)
