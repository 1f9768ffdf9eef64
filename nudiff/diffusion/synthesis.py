"""Synthetic labelled pairs (spec section 5), sampled in shards.

Sample ``i`` of a subset draws all its randomness from its own generator,
seeded by ``(seed, stream, i)``. The ``n`` samples are split into contiguous
shards; shard ``k`` holds the same samples, bit for bit, whether it runs alone,
first, last or beside others on a cluster.

Shard files (``.npz``):

* structures shard: ``sample_index`` (n,), ``sampled_structures`` (n, S, S, 3)
  float32 as sampled (semantic as a probability in [0, 1]), ``instances``
  (n, S, S) int32 from the watershed, cleaned (:func:`nudiff.structure.clean_instances`),
  ``structures`` (n, S, S, 3) float32 = ``nuclei_structure(instances)``, the
  structure of the label, ``n_nuclei`` (n,). With ``diffusion.structure_oversample`` > 1
  these are the kept candidates (:func:`sample_structures`) and ``sample_index`` may reach
  beyond ``n``.
* pairs shard: the structures that gave at least one nucleus, with their
  ``images`` (m, S, S, 3) uint8 sampled with guidance: ``sample_index``,
  ``structures``, ``sampled_structures``, ``instances``, ``images``. This is
  the format :class:`nudiff.samples.SampleReader` reads. With colour transfer
  (``diffusion.colour_transfer``), ``images`` are the transferred ones and
  ``sampled_images`` the images as sampled, and ``colour_reference`` (m,) the
  row of the labelled table whose colours each image took.

A pair is consistent: its image is conditioned on exactly the structure of its
label (``structures`` = ``nuclei_structure(instances)``), not on the raw sampled
structure. The raw one has a soft semantic channel that passes through 0 (the
null condition) at nucleus borders, and blobs the watershed drops, which the
image would paint as nuclei while the label calls them background.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nudiff.diffusion.colour_transfer import COLOUR_STREAM, real_colours, transfer_colours
from nudiff.diffusion.count_matching import match_counts
from nudiff.diffusion.guidance import guided_eps
from nudiff.diffusion.samplers import SamplerName, sample
from nudiff.diffusion.training import load_diffusion_model
from nudiff.errors import InputDataError
from nudiff.imaging import image_from_model_range
from nudiff.io.atomic import atomic_path
from nudiff.io.digest import file_sha256
from nudiff.runtime import resolve_cpu_bf16
from nudiff.samples import (
    real_pairs,
)
from nudiff.structure import (
    clean_instances,
    instances_from_structure,
    nuclei_structure,
    structure_from_model_range,
    structure_to_model_range,
)

logger = logging.getLogger(__name__)

# Independent noise streams: the synthetic pairs, and the extra samples that choose weights
# and sweep guidance (so those never reuse a pair's noise), more pairs from finished models
# (rules sample_extra_*), images for a user's maps. An id never changes: new streams, new ids.
STREAMS = {
    "structure": 0,
    "image": 1,
    "select_structure": 2,
    "select_image": 3,
    "sweep_image": 4,
    "colour": COLOUR_STREAM,
    "extra_structure": 6,
    "extra_image": 7,
    "label_to_image": 8,
}


@dataclass(frozen=True)
class SamplingSettings:
    """How to run the reverse process (paper: 1000-step DDPM).

    ``guidance_scale`` is w of the paper's eq. 6, eps' = (w + 1) eps_c - w eps_u. The
    authors' sampler computes eps_u + s (eps_c - eps_u) and was run with s = 2, which is
    w = s - 1 = 1: the default. The paper's text says w = 2 (3 eps_c - 2 eps_u).
    ``cpu_bf16`` runs the network under bf16 autocast on the CPU (no effect on CUDA); ``"auto"``
    turns it on where the CPU has bf16 units (:func:`nudiff.runtime.cpu_has_bf16`).
    ``channels_last`` runs the network in NHWC memory layout (weights, samples and
    conditions): a guided step of the demo's image model under CPU bf16 took 1.24x less time
    (``tests/benchmarks/bench_sampling_step.py``); it changes rounding only.
    """

    sampler: SamplerName = "ddpm"
    steps: int = 1000
    guidance_scale: float = 1.0
    variance: str = "posterior"
    clip_denoised: bool = True
    batch_size: int = 16
    seed: int = 0
    cpu_bf16: bool | str = False  # True, False or "auto" (resolved here)
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu_bf16", resolve_cpu_bf16(self.cpu_bf16))


@dataclass(frozen=True)
class CleanupSettings:
    """How a sampled structure's instance map is cleaned into a label (:func:`clean_instances`)."""

    min_area: int = 10
    fill_holes: bool = True
    largest_fragment: bool = True
    opening_radius: int = 0


def sampling_settings(values: dict[str, Any]) -> SamplingSettings:
    """Settings from the config's ``diffusion.sampling`` (the shard count is the workflow's)."""
    return SamplingSettings(**{k: v for k, v in values.items() if k != "shards"})


def chosen_weights(selection: str | Path | None) -> dict[str, Any]:
    """``weights`` and ``step`` for :func:`load_diffusion_model` from a selection JSON (None: final EMA)."""
    if selection is None:
        return {"weights": "ema", "step": None}
    try:
        chosen = json.loads(Path(selection).read_text())["chosen"]
        if chosen["weights"] not in ("ema", "model"):
            raise ValueError(f"weights {chosen['weights']!r} is neither 'ema' nor 'model'")
        return {"weights": str(chosen["weights"]), "step": None if chosen["step"] is None else int(chosen["step"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputDataError(f"cannot read the chosen weights from {selection}: {err}") from err


def _network_precision(device: str, sampling: SamplingSettings):
    if sampling.cpu_bf16 and torch.device(device).type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sampling_layout(tensor_or_model, sampling: SamplingSettings):
    """A network (converted in place) or a 4-D tensor in the layout ``sampling`` asks for."""
    if not sampling.channels_last:
        return tensor_or_model
    if isinstance(tensor_or_model, torch.nn.Module):
        return tensor_or_model.to(memory_format=torch.channels_last)
    return tensor_or_model.contiguous(memory_format=torch.channels_last)


def label_structure(inst: np.ndarray) -> np.ndarray:
    """The structure a pair's image is conditioned on: exactly that of its label, in [0, 1]/[-1, 1]."""
    return nuclei_structure(inst).astype(np.float32)


def shard_indices(n_total: int, n_shards: int, shard: int) -> np.ndarray:
    """Global sample indices of shard ``shard`` of ``n_shards`` (contiguous, sizes differ by <= 1)."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} does not exist among {n_shards} shards")
    return np.array_split(np.arange(n_total), n_shards)[shard]


def sample_generator(seed: int, stream: str, index: int) -> torch.Generator:
    """The generator of one sample: independent across (seed, stream, index)."""
    state = np.random.SeedSequence([seed, STREAMS[stream], int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _run_batches(
    indices: np.ndarray,
    batch_size: int,
    run_batch: Callable[[np.ndarray, int], dict[str, np.ndarray]],
    *,
    resume_file: str | Path | None,
    fingerprint: dict[str, Any],
) -> dict[str, list[np.ndarray]]:
    """Run ``run_batch(batch_indices, start)`` over ``indices`` in batches, resumably.

    After every batch its arrays are added to ``resume_file`` (written atomically,
    outside Snakemake's outputs): a preempted or killed sampling job started again
    skips the finished batches. Each sample draws from its own generator, so the
    result is the same as an uninterrupted run. The file is removed at the end.
    """
    done: dict[str, np.ndarray] = {}
    tag = json.dumps(fingerprint, sort_keys=True)
    if resume_file is not None and Path(resume_file).is_file():
        with np.load(resume_file) as saved:
            if str(saved["fingerprint"]) == tag:
                done = {k: saved[k] for k in saved.files if k != "fingerprint"}
                logger.info("resuming: %d finished batch(es) in %s", len({k.split("/")[0] for k in done}), resume_file)
            else:
                logger.warning("ignoring %s: it belongs to other settings", resume_file)
    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(indices), batch_size):
        if f"{start}/sample_index" not in done:
            out = run_batch(indices[start : start + batch_size], start)
            done.update({f"{start}/{k}": v for k, v in out.items()})
            if resume_file is not None:
                with atomic_path(resume_file) as tmp:
                    np.savez(tmp, fingerprint=np.array(tag), **done)
        for key in [k for k in done if k.startswith(f"{start}/")]:
            collected.setdefault(key.split("/", 1)[1], []).append(done[key])
    if resume_file is not None:
        Path(resume_file).unlink(missing_ok=True)
    return collected


def _progress_logger(what: str, every_seconds: float = 30.0):
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= every_seconds or done == total:
            last[0] = time.monotonic()
            logger.info("%s: step %d/%d", what, done, total)

    return report


def _reverse_process(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule,
    size: int,
    indices: np.ndarray,
    sampling: SamplingSettings,
    *,
    device: str,
    stream: str,
    what: str,
) -> np.ndarray:
    """Run ``sampling``'s reverse process for samples ``indices`` (each from its own generator
    of ``stream``); returns the clean samples ``(n, S, S, 3)`` float32, channels last."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _network_precision(device, sampling):
            return network(_sampling_layout(x, sampling), t).float().contiguous()

    result = sample(
        eps,
        (len(indices), 3, size, size),
        schedule,
        sampler=sampling.sampler,
        steps=sampling.steps,
        variance=sampling.variance,
        clip_denoised=sampling.clip_denoised,
        device=device,
        generators=[sample_generator(sampling.seed, stream, i) for i in indices],
        progress=_progress_logger(f"{what} {indices[0]}..{indices[-1]}"),
    )
    return result.x0.float().cpu().permute(0, 2, 3, 1).numpy()


def structure_batch(
    model: torch.nn.Module,
    schedule,
    size: int,
    indices: np.ndarray,
    sampling: SamplingSettings,
    *,
    watershed: dict[str, Any],
    cleanup: CleanupSettings,
    device: str,
    stream: str = "structure",
) -> dict[str, np.ndarray]:
    """Sample one batch of structures (sample ``i`` from its own generator) and make labels of them.

    Returns ``sampled_structures`` (as sampled, semantic in [0, 1]), ``instances`` (watershed,
    then :func:`clean_instances`) and ``structures`` (:func:`label_structure` of each label).
    """

    model = _sampling_layout(model, sampling)
    x0 = _reverse_process(
        lambda x, t: model(x, t), schedule, size, indices, sampling, device=device, stream=stream, what="structures"
    )
    sampled = [structure_from_model_range(x) for x in x0]
    instances = [clean_instances(instances_from_structure(st, **watershed), **asdict(cleanup)) for st in sampled]
    return {
        "sampled_structures": np.stack(sampled).astype(np.float32),
        "instances": np.stack(instances).astype(np.int32),
        "structures": np.stack([label_structure(inst) for inst in instances]),
    }


def image_batch(
    model: torch.nn.Module,
    schedule,
    instances: np.ndarray,
    indices: np.ndarray,
    sampling: SamplingSettings,
    *,
    device: str,
    stream: str = "image",
) -> np.ndarray:
    """Sample one image per instance map, conditioned on the map's own structure, with guidance.

    Returns ``(n, S, S, 3)`` uint8 images; sample ``indices[k]`` draws from its own generator.
    """
    size = instances.shape[-1]
    structures = np.stack([label_structure(inst) for inst in instances])
    cond = _sampling_layout(
        torch.from_numpy(structure_to_model_range(structures)).permute(0, 3, 1, 2).to(device), sampling
    )
    model = _sampling_layout(model, sampling)

    x0 = _reverse_process(
        lambda x, t: guided_eps(model, x, t, cond, sampling.guidance_scale),
        schedule,
        size,
        indices,
        sampling,
        device=device,
        stream=stream,
        what="images",
    )
    return image_from_model_range(x0)


def sample_structures(
    model_path: str | Path,
    out_npz: str | Path,
    *,
    n_total: int,
    n_shards: int,
    shard: int,
    sampling: SamplingSettings,
    watershed: dict[str, Any],
    cleanup: CleanupSettings | None = None,
    selection: str | Path | None = None,
    oversample: int = 1,
    labelled_csv: str | Path | None = None,
    device: str = "cpu",
    resume_file: str | Path | None = None,
    stream: str = "structure",
) -> int:
    """Rule ``sample_structures``: one shard of synthetic structures and their instance maps.

    Each sampled structure goes through the watershed, the instance map is cleaned
    (``cleanup``; default :class:`CleanupSettings`), and the structure of the cleaned map is
    stored beside the sampled one: it is what the image will be conditioned on.

    With ``oversample`` = k > 1 the shard samples k candidates per structure it keeps (sample
    indices ``i + j * n_total``, j < k, so j = 0 are the structures of k = 1) and keeps those
    whose nuclei counts follow the counts of the labelled patches with nuclei in
    ``labelled_csv`` (:func:`nudiff.diffusion.count_matching.match_counts`).

    ``selection`` is the JSON of :func:`nudiff.diffusion.selection.select_structure_weights` naming the
    weights to sample (None: the final EMA weights). ``resume_file`` keeps finished batches
    across a kill (see :func:`_run_batches`). ``stream`` names the noise stream
    (:data:`STREAMS`; rule ``sample_extra_structures``: ``extra_structure``). Returns the
    number of structures with at least one nucleus.
    """
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if oversample > 1 and labelled_csv is None:
        raise ValueError("oversample > 1 needs labelled_csv, whose nuclei counts the structures follow")
    cleanup = cleanup or CleanupSettings()
    chosen = chosen_weights(selection)
    model, schedule, saved = load_diffusion_model(model_path, device=device, expect="structure", **chosen)
    size = int(saved["patch_size"])
    wanted = shard_indices(n_total, n_shards, shard)
    indices = np.concatenate([wanted + j * n_total for j in range(oversample)])
    t0 = time.monotonic()

    settings = {"watershed": watershed, "cleanup": cleanup, "device": device, "stream": stream}

    def run_batch(batch: np.ndarray, start: int) -> dict[str, np.ndarray]:
        return {"sample_index": batch, **structure_batch(model, schedule, size, batch, sampling, **settings)}

    fingerprint = {
        "model": file_sha256(model_path),
        "sampling": asdict(sampling),
        "watershed": watershed,
        "cleanup": asdict(cleanup),
        "weights": chosen,
        "indices": indices.tolist(),
        **({"stream": stream} if stream != "structure" else {}),
    }
    parts = _run_batches(indices, sampling.batch_size, run_batch, resume_file=resume_file, fingerprint=fingerprint)
    sampled = _concat(parts, "sampled_structures", (0, size, size, 3), np.float32)
    structures = _concat(parts, "structures", (0, size, size, 3), np.float32)
    instances = _concat(parts, "instances", (0, size, size), np.int32)
    n_nuclei = np.array([int(inst.max(initial=0)) for inst in instances], dtype=np.int64)
    if oversample > 1:
        real_counts = [c for c in (int(np.count_nonzero(np.unique(m))) for m in real_pairs(labelled_csv)[1]) if c > 0]
        if not real_counts:
            raise InputDataError(f"{labelled_csv}: no labelled patch holds a nucleus, so there are no counts to follow")
        keep = match_counts(n_nuclei, real_counts, len(wanted))
        logger.info(
            "kept %d of %d candidates to follow the labelled nuclei counts: mean %.1f per structure "
            "(labelled patches %.1f, all candidates %.1f)",
            len(keep),
            len(indices),
            n_nuclei[keep].mean() if len(keep) else float("nan"),
            np.mean(real_counts),
            n_nuclei.mean() if len(n_nuclei) else float("nan"),
        )
        indices, sampled, structures, instances, n_nuclei = (
            a[keep] for a in (indices, sampled, structures, instances, n_nuclei)
        )
    degenerate = int(np.sum(n_nuclei == 0))
    logger.info(
        "shard %d/%d: %d structures in %.0f s; %d without any nucleus will be dropped; nuclei per structure: median %s",
        shard,
        n_shards,
        len(indices),
        time.monotonic() - t0,
        degenerate,
        int(np.median(n_nuclei)) if len(n_nuclei) else "n/a",
    )
    with atomic_path(out_npz) as tmp:
        np.savez_compressed(
            tmp,
            sample_index=indices,
            sampled_structures=sampled,
            structures=structures,
            instances=instances,
            n_nuclei=n_nuclei,
        )
    return len(indices) - degenerate


def sample_images(
    model_path: str | Path,
    structures_npz: str | Path,
    out_npz: str | Path,
    *,
    sampling: SamplingSettings,
    selection: str | Path | None = None,
    colour_reference: str | Path | None = None,
    device: str = "cpu",
    resume_file: str | Path | None = None,
    stream: str = "image",
) -> int:
    """Rule ``sample_images``: one image per non-degenerate structure of a shard, with guidance.

    The condition of each image is the structure of its pair's label
    (:func:`label_structure` of the shard's ``instances``), recomputed here so that no
    shard can pair an image with a label it was not conditioned on.

    ``colour_reference``: a sample table (the labelled subset); when given, each image's
    colours are moved to those of one of its real patches (:func:`transfer_colours`, not in
    the paper: a stain normalisation for image models too short-trained to draw real stains).
    ``resume_file`` keeps finished batches across a kill (see :func:`_run_batches`).
    ``stream`` names the noise stream (:data:`STREAMS`; rule ``sample_extra_images``:
    ``extra_image``). Returns the number of pairs written.
    """
    chosen = chosen_weights(selection)
    model, schedule, saved = load_diffusion_model(model_path, device=device, expect="image", **chosen)
    with np.load(structures_npz) as shard:
        keep = shard["n_nuclei"] > 0
        indices = shard["sample_index"][keep]
        sampled = shard["sampled_structures"][keep]
        instances = shard["instances"][keep]
    structures = (
        np.stack([label_structure(inst) for inst in instances])
        if len(instances)
        else np.zeros((0, *instances.shape[1:], 3), np.float32)
    )
    logger.info("%d structures (%d degenerate ones dropped)", len(indices), int((~keep).sum()))
    size = int(saved["patch_size"])

    def run_batch(batch: np.ndarray, start: int) -> dict[str, np.ndarray]:
        chunk = instances[start : start + len(batch)]
        images = image_batch(model, schedule, chunk, batch, sampling, device=device, stream=stream)
        return {"sample_index": batch, "images": images}

    fingerprint = {
        "model": file_sha256(model_path),
        "sampling": asdict(sampling),
        "weights": chosen,
        "structures": file_sha256(structures_npz),
        **({"stream": stream} if stream != "image" else {}),
    }
    parts = _run_batches(indices, sampling.batch_size, run_batch, resume_file=resume_file, fingerprint=fingerprint)
    images = _concat(parts, "images", (0, size, size, 3), np.uint8)
    extra = {}
    if colour_reference is not None:
        transferred, rows = transfer_colours(images, instances, indices, real_colours(colour_reference), sampling.seed)
        extra = {"sampled_images": images, "colour_reference": rows}
        images = transferred
        logger.info("colours of %d images transferred from real patches of %s", len(images), colour_reference)
    with atomic_path(out_npz) as tmp:
        np.savez_compressed(
            tmp,
            sample_index=indices,
            structures=structures,
            sampled_structures=sampled,
            instances=instances,
            images=images,
            **extra,
        )
    return len(indices)


def _concat(parts: dict[str, list[np.ndarray]], key: str, empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts[key]).astype(dtype) if parts.get(key) else np.zeros(empty_shape, dtype)
