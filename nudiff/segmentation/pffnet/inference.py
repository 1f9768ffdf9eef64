"""PFF-Net on a whole image: one forward pass, then PFF-Net's inference tail.

As PFF-Net's ``inference/tcga_infer.py``, a test image is segmented at its own size in one pass
(PFF-Net: ``MAX_SIZE_TEST`` 1000 for the 1000 x 1000 MoNuSeg images); the detections become one
instance map by :func:`nudiff.segmentation.pffnet.mask_instances.instances_from_detections`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from nudiff.runtime import resolve_cpu_bf16
from nudiff.segmentation.pffnet.mask_instances import (
    MASK_THRESHOLD,
    MAX_OVERLAP,
    SCORE_THRESHOLD,
    instances_from_detections,
)


@torch.no_grad()
def predict_pffnet_instances(
    model: nn.Module,
    rgb: np.ndarray,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    mask_threshold: float = MASK_THRESHOLD,
    max_overlap: float = MAX_OVERLAP,
    cpu_bf16: bool | str = False,
    device: str | torch.device | None = None,
    timing: dict[str, float] | None = None,
) -> np.ndarray:
    """The ``(H, W)`` int32 instance map of one ``(H, W, 3)`` uint8 image.

    Args:
        model: a :class:`nudiff.segmentation.pffnet.network.PFFNet` (put in eval mode here; a model
            that was training is put back in train mode afterwards).
        score_threshold, mask_threshold, max_overlap: see
            :func:`nudiff.segmentation.pffnet.mask_instances.instances_from_detections`.
        cpu_bf16: run the network under bf16 autocast on the CPU (``"auto"``: where it has bf16 units).
        device: where the network runs (default: where its weights are).
        timing: if given, receives ``network_s`` and ``postprocess_s``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if device.type == "cpu" and resolve_cpu_bf16(cpu_bf16)
        else contextlib.nullcontext()
    )
    tic = time.perf_counter()
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0).to(device)
    try:
        with autocast:
            (detections,) = model.detect(x[None])
    finally:
        model.train(was_training)
    toc = time.perf_counter()
    inst = instances_from_detections(
        detections["boxes"].float().cpu().numpy(),
        detections["masks"].float().cpu(),
        detections["scores"].float().cpu().numpy(),
        detections["mask_scores"].float().cpu().numpy(),
        rgb.shape[:2],
        score_threshold=score_threshold,
        mask_threshold=mask_threshold,
        max_overlap=max_overlap,
    )
    if timing is not None:
        timing.update(network_s=toc - tic, postprocess_s=time.perf_counter() - toc)
    return inst


def pffnet_predictor(
    model: nn.Module,
    meta: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    watershed: Mapping[str, Any] | None = None,
    **inference: Any,
) -> Callable[[np.ndarray], tuple[np.ndarray, float, float]]:
    """PFF-Net on the whole image in one pass, then its ranking, pasting and overlap removal
    (:func:`predict_pffnet_instances` arguments); ``watershed`` is Hover-Net's and ignored."""

    def predict(rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        timing: dict[str, float] = {}
        inst = predict_pffnet_instances(model, rgb, device=device, timing=timing, **inference)
        return inst, timing["network_s"], timing["postprocess_s"]

    return predict
