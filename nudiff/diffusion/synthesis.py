"""Synthetic labelled pairs (spec section 5), sampled in shards.

Sample ``i`` of a subset draws all its randomness from its own generator,
seeded by ``(seed, stream, i)``. The ``n`` samples are split into contiguous
shards; shard ``k`` holds the same samples, bit for bit, whether it runs alone,
first, last or beside others on a cluster.

Shard files (``.npz``):

* structures shard: ``sample_index`` (n,), ``structures`` (n, S, S, 3) float32
  as sampled (semantic as a probability in [0, 1]), ``instances`` (n, S, S)
  int32 from the watershed, ``n_nuclei`` (n,).
* pairs shard: the structures that gave at least one nucleus, with their
  ``images`` (m, S, S, 3) uint8 sampled with guidance: ``sample_index``,
  ``structures``, ``instances``, ``images``. This is the format
  :class:`nudiff.samples.SampleReader` reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nudiff.diffusion.guidance import guided_eps
from nudiff.diffusion.samplers import SamplerName, sample
from nudiff.diffusion.training import image_from_model_range, load_diffusion_model
from nudiff.io.atomic import atomic_path
from nudiff.samples import SAMPLE_COLUMNS, read_sample_table, synthetic_samples, write_sample_table
from nudiff.structure import instances_from_structure, structure_from_model_range, structure_to_model_range

logger = logging.getLogger(__name__)

STREAMS = {"structure": 0, "image": 1}


@dataclass(frozen=True)
class SamplingSettings:
    """How to run the reverse process (paper: 1000-step DDPM, w = 2)."""

    sampler: SamplerName = "ddpm"
    steps: int = 1000
    guidance_scale: float = 2.0
    variance: str = "posterior"
    clip_denoised: bool = True
    batch_size: int = 16
    seed: int = 0


def sampling_settings(values: dict[str, Any]) -> SamplingSettings:
    """Settings from the config's ``diffusion.sampling`` (the shard count is the workflow's)."""
    return SamplingSettings(**{k: v for k, v in values.items() if k != "shards"})


def shard_indices(n_total: int, n_shards: int, shard: int) -> np.ndarray:
    """Global sample indices of shard ``shard`` of ``n_shards`` (contiguous, sizes differ by <= 1)."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} does not exist among {n_shards} shards")
    return np.array_split(np.arange(n_total), n_shards)[shard]


def sample_generator(seed: int, stream: str, index: int) -> torch.Generator:
    """The generator of one sample: independent across (seed, stream, index)."""
    state = np.random.SeedSequence([seed, STREAMS[stream], int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _batches(indices: np.ndarray, batch_size: int):
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


def _progress_logger(what: str, every_seconds: float = 30.0):
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= every_seconds or done == total:
            last[0] = time.monotonic()
            logger.info("%s: step %d/%d", what, done, total)

    return report


def sample_structures(
    model_path: str | Path,
    out_npz: str | Path,
    *,
    n_total: int,
    n_shards: int,
    shard: int,
    sampling: SamplingSettings,
    watershed: dict[str, Any],
    device: str = "cpu",
) -> int:
    """Rule ``sample_structures``: one shard of synthetic structures and their instance maps.

    Returns the number of structures with at least one nucleus.
    """
    model, schedule, saved = load_diffusion_model(model_path, device=device, expect="structure")
    size = int(saved["patch_size"])
    indices = shard_indices(n_total, n_shards, shard)
    structures, instances = [], []
    t0 = time.monotonic()
    for batch in _batches(indices, sampling.batch_size):
        result = sample(
            lambda x, t: model(x, t), (len(batch), 3, size, size), schedule,
            sampler=sampling.sampler, steps=sampling.steps, variance=sampling.variance,
            clip_denoised=sampling.clip_denoised, device=device,
            generators=[sample_generator(sampling.seed, "structure", i) for i in batch],
            progress=_progress_logger(f"structures {batch[0]}..{batch[-1]}"),
        )
        for x in result.x0.float().cpu().permute(0, 2, 3, 1).numpy():
            structure = structure_from_model_range(x)
            structures.append(structure)
            instances.append(instances_from_structure(structure, **watershed))
    n_nuclei = np.array([int(inst.max(initial=0)) for inst in instances], dtype=np.int64)
    degenerate = int(np.sum(n_nuclei == 0))
    logger.info(
        "shard %d/%d: %d structures in %.0f s; %d without any nucleus will be dropped; nuclei per structure: "
        "median %s", shard, n_shards, len(indices), time.monotonic() - t0, degenerate,
        int(np.median(n_nuclei)) if len(n_nuclei) else "n/a",
    )
    with atomic_path(out_npz) as tmp:
        np.savez_compressed(
            tmp, sample_index=indices, structures=_stack(structures, (0, size, size, 3), np.float32),
            instances=_stack(instances, (0, size, size), np.int32), n_nuclei=n_nuclei,
        )
    return len(indices) - degenerate


def sample_images(
    model_path: str | Path,
    structures_npz: str | Path,
    out_npz: str | Path,
    *,
    sampling: SamplingSettings,
    device: str = "cpu",
) -> int:
    """Rule ``sample_images``: one image per non-degenerate structure of a shard, with guidance.

    Returns the number of pairs written.
    """
    model, schedule, saved = load_diffusion_model(model_path, device=device, expect="image")
    with np.load(structures_npz) as shard:
        keep = shard["n_nuclei"] > 0
        indices = shard["sample_index"][keep]
        structures = shard["structures"][keep]
        instances = shard["instances"][keep]
    logger.info("%d structures (%d degenerate ones dropped)", len(indices), int((~keep).sum()))
    size = int(saved["patch_size"])
    images = []
    for start in range(0, len(indices), sampling.batch_size):
        batch = indices[start : start + sampling.batch_size]
        cond = torch.from_numpy(structure_to_model_range(structures[start : start + len(batch)]))
        cond = cond.permute(0, 3, 1, 2).to(device)
        result = sample(
            lambda x, t: guided_eps(model, x, t, cond, sampling.guidance_scale),
            (len(batch), 3, size, size), schedule,
            sampler=sampling.sampler, steps=sampling.steps, variance=sampling.variance,
            clip_denoised=sampling.clip_denoised, device=device,
            generators=[sample_generator(sampling.seed, "image", i) for i in batch],
            progress=_progress_logger(f"images {batch[0]}..{batch[-1]}"),
        )
        images.extend(image_from_model_range(result.x0.float().cpu().permute(0, 2, 3, 1).numpy()))
    with atomic_path(out_npz) as tmp:
        np.savez_compressed(
            tmp, sample_index=indices, structures=structures, instances=instances,
            images=_stack(images, (0, size, size, 3), np.uint8),
        )
    return len(indices)


def _stack(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.stack(arrays).astype(dtype) if arrays else np.zeros(empty_shape, dtype)


def build_augmented_set(labelled_csv: str | Path, pair_shards: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Rule ``build_augmented_set``: the labelled subset plus every synthetic pair.

    The table refers to the shard files in place; no pixels are copied.
    """
    labelled = read_sample_table(labelled_csv)
    parts = [labelled]
    for k, path in enumerate(pair_shards):
        with np.load(path) as shard:
            n, size = len(shard["sample_index"]), shard["images"].shape[1]
        parts.append(synthetic_samples(Path(path).resolve(), n, size, prefix=f"synthetic_shard{k}"))
    table = pd.concat(parts, ignore_index=True)[SAMPLE_COLUMNS]
    write_sample_table(table, out_csv)
    logger.info("augmented set: %d real + %d synthetic samples", len(labelled), len(table) - len(labelled))
    return table
