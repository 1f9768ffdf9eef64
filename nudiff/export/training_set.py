"""Rule ``export_training_set``: a subset's synthetic pairs, or its whole augmented set, as files
any tool reads (the layouts of :mod:`nudiff.export.layouts`).

Each manifest row says where the pair came from: ``origin`` (``real`` or ``synthetic``),
``sample_id``, ``source_file`` and ``source_row`` (the shard file and its row, or the prepared
image a real patch was cut from, with the crop ``y``, ``x``, ``size``). A synthetic pair's
row also names the weights and settings that drew it: the structure and image model files by
sha256 and the weights chosen in each (``ema`` or ``model``, ``@<step>`` for a snapshot), the
samplers and their steps, the guidance scale, and the noise: sample ``sample_index`` drew its
structure from generator ``(seed, structure_stream, sample_index)`` and its image from
``(seed, image_stream, sample_index)`` (:func:`nudiff.diffusion.synthesis.sample_generator`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudiff.diffusion.synthesis import STREAMS, chosen_weights
from nudiff.errors import InputDataError
from nudiff.export.layouts import export_folder
from nudiff.io.digest import file_sha256
from nudiff.samples import SampleReader, read_sample_table

logger = logging.getLogger(__name__)

SOURCE_COLUMNS = ["origin", "sample_id", "sample_index", "source_file", "source_row", "y", "x", "size"]
DRAWN_BY_COLUMNS = [
    "structure_model_sha256",
    "structure_weights",
    "structure_sampler",
    "structure_steps",
    "image_model_sha256",
    "image_weights",
    "image_sampler",
    "image_steps",
    "guidance_scale",
    "seed",
    "structure_stream",
    "image_stream",
    "colour_transfer",
]
EXPORT_COLUMNS = SOURCE_COLUMNS + DRAWN_BY_COLUMNS


def weights_name(selection: str | os.PathLike | None) -> str:
    """The chosen weights of a selection JSON as one word: ``ema``, ``model``, ``ema@300``."""
    chosen = chosen_weights(selection)
    return chosen["weights"] if chosen["step"] is None else f"{chosen['weights']}@{chosen['step']}"


def drawn_by(
    *,
    structure_model: str | os.PathLike,
    structure_selection: str | os.PathLike | None,
    image_model: str | os.PathLike,
    image_selection: str | os.PathLike | None,
    sampling: dict[str, Any],
    image_sampling: dict[str, Any],
    colour_transfer: bool,
    streams: tuple[str, str] = ("structure", "image"),
) -> dict[str, Any]:
    """The manifest fields shared by every synthetic pair of one sampling run."""
    return {
        "structure_model_sha256": file_sha256(structure_model),
        "structure_weights": weights_name(structure_selection),
        "structure_sampler": sampling["sampler"],
        "structure_steps": int(sampling["steps"]),
        "image_model_sha256": file_sha256(image_model),
        "image_weights": weights_name(image_selection),
        "image_sampler": image_sampling["sampler"],
        "image_steps": int(image_sampling["steps"]),
        "guidance_scale": float(image_sampling["guidance_scale"]),
        "seed": int(image_sampling["seed"]),
        "structure_stream": STREAMS[streams[0]],
        "image_stream": STREAMS[streams[1]],
        "colour_transfer": bool(colour_transfer),
    }


def export_training_set(
    out_dir: str | os.PathLike,
    *,
    pair_shards: Sequence[str | os.PathLike],
    labelled_csv: str | os.PathLike | None = None,
    structure_model: str | os.PathLike,
    structure_selection: str | os.PathLike | None,
    image_model: str | os.PathLike,
    image_selection: str | os.PathLike | None,
    sampling: dict[str, Any],
    image_sampling: dict[str, Any],
    colour_transfer: bool = False,
    streams: tuple[str, str] = ("structure", "image"),
    prefix: str = "synthetic",
) -> int:
    """Rule ``export_training_set``: write the pairs of ``pair_shards`` (after the real patches of
    ``labelled_csv``, when given: the augmented set) into ``out_dir``; returns the pairs written.

    Real pairs are named by their ``sample_id``, synthetic ones ``<prefix>_<sample_index>``.
    ``sampling`` and ``image_sampling`` are the settings the structures and images were drawn
    with, ``streams`` the names of their noise streams (:data:`nudiff.diffusion.synthesis.STREAMS`).
    """
    synthetic = drawn_by(
        structure_model=structure_model,
        structure_selection=structure_selection,
        image_model=image_model,
        image_selection=image_selection,
        sampling=sampling,
        image_sampling=image_sampling,
        colour_transfer=colour_transfer,
        streams=streams,
    )
    n_real = n_synthetic = 0
    with export_folder(out_dir, EXPORT_COLUMNS) as folder:
        if labelled_csv is not None:
            table = read_sample_table(labelled_csv)
            if (table["origin"] != "real").any():
                raise InputDataError(f"{labelled_csv}: the labelled part of an export must hold real patches only")
            reader = SampleReader(table)
            for i, row in reader.table.iterrows():
                rgb, inst = reader[i]
                folder.add(
                    str(row["sample_id"]),
                    rgb,
                    inst,
                    origin="real",
                    sample_id=row["sample_id"],
                    source_file=row["image_file"],
                    source_row=-1,
                    y=int(row["y"]),
                    x=int(row["x"]),
                    size=int(row["size"]),
                )
                n_real += 1
        for shard_file in pair_shards:
            try:
                with np.load(shard_file) as shard:
                    indices, images, instances = shard["sample_index"], shard["images"], shard["instances"]
            except (OSError, KeyError, ValueError) as err:
                raise InputDataError(f"cannot read synthetic shard {shard_file}: {err}") from err
            for row, (index, rgb, inst) in enumerate(zip(indices, images, instances, strict=True)):
                name = f"{prefix}_{int(index):06d}"
                folder.add(
                    name,
                    rgb,
                    inst,
                    origin="synthetic",
                    sample_id=name,
                    sample_index=int(index),
                    source_file=str(Path(shard_file).resolve()),
                    source_row=row,
                    y=0,
                    x=0,
                    size=inst.shape[0],
                    **synthetic,
                )
                n_synthetic += 1
    logger.info("exported %d real and %d synthetic pairs to %s", n_real, n_synthetic, out_dir)
    return n_real + n_synthetic
