"""Pretrained weights for PFF-Net's ResNet body, and the stages they leave frozen.

PFF-Net (dliu5812/PFFNet, ``e2e_mask_rcnn_R_101_FPN_1x_gn-tcga.yaml``) fine-tunes Detectron's
ImageNet GroupNorm ResNet-101 (``R-101-GN.pkl``) with the stem and the first stage frozen
(``FREEZE_CONV_BODY_AT: 2``). That file is a pickle of numpy arrays named in Caffe2 style; this
module converts them to the body's torchvision names:

==============================  ==============================
Detectron                       :class:`GroupNormResNetBody`
==============================  ==============================
``conv1_w``                     ``conv1.weight`` (BGR -> RGB)
``conv1_gn_s`` / ``conv1_gn_b`` ``bn1.weight`` / ``bn1.bias``
``res{n}_{b}_branch2{a,b,c}_w`` ``layer{n-1}.{b}.conv{1,2,3}.weight``
``..._branch2{a,b,c}_gn_s/_b``  ``layer{n-1}.{b}.bn{1,2,3}.weight/bias``
``res{n}_{b}_branch1_w``        ``layer{n-1}.{b}.downsample.0.weight``
``res{n}_{b}_branch1_gn_s/_b``  ``layer{n-1}.{b}.downsample.1.weight/bias``
==============================  ==============================

Detectron's networks read BGR images, nudiff's read RGB: the stem's input channels are reversed.
Other blobs (the ImageNet classifier ``pred_*``, momenta) are ignored; every weight of the body
must be found, with its shape.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nudiff.errors import InputDataError

logger = logging.getLogger(__name__)

_BRANCHES = {"branch2a": ("conv1", "bn1"), "branch2b": ("conv2", "bn2"), "branch2c": ("conv3", "bn3")}
_BRANCHES["branch1"] = ("downsample.0", "downsample.1")
_BLOCK_BLOB = re.compile(r"res(\d)_(\d+)_(branch1|branch2[abc])_(w|gn_s|gn_b)")
_STEM_BLOB = re.compile(r"conv1_(w|gn_s|gn_b)")
_PARAM = {"gn_s": "weight", "gn_b": "bias"}
# what a pickle of numpy arrays may name; anything else (code) is refused
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array type")
        return super().find_class(module, name)


def torchvision_name(blob: str) -> str | None:
    """The body's parameter name of a Detectron blob, or None for a blob the body lacks."""
    if match := _STEM_BLOB.fullmatch(blob):
        kind = match[1]
        return "conv1.weight" if kind == "w" else f"bn1.{_PARAM[kind]}"
    if match := _BLOCK_BLOB.fullmatch(blob):
        stage, block, branch, kind = int(match[1]), int(match[2]), match[3], match[4]
        conv, norm = _BRANCHES[branch]
        name = f"{conv}.weight" if kind == "w" else f"{norm}.{_PARAM[kind]}"
        return f"layer{stage - 1}.{block}.{name}"
    return None


def read_detectron_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """The blobs of a Detectron weights pickle (``{"blobs": {...}}`` or the blobs themselves)."""
    try:
        with open(path, "rb") as handle:
            data = _ArraysOnly(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InputDataError(f"{path}: not a Detectron weights pickle ({err})") from err
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise InputDataError(f"{path}: not a Detectron weights pickle (no dict of blobs)")
    return blobs


def convert_detectron_body(blobs: dict[str, np.ndarray], body: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """A state dict for ``body`` from Detectron blobs: renamed, stem BGR -> RGB, shapes checked."""
    expected = body.state_dict()
    state = {}
    for blob, array in blobs.items():
        name = torchvision_name(blob)
        if name is None or name not in expected:
            continue
        tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
        if name == "conv1.weight":
            tensor = tensor.flip(1)  # BGR input channels -> RGB
        if tensor.shape != expected[name].shape:
            raise InputDataError(
                f"{source}: {blob} has shape {tuple(tensor.shape)}, the network's {name} "
                f"{tuple(expected[name].shape)} (another ResNet depth or width?)"
            )
        state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if missing:
        raise InputDataError(f"{source}: no weights for {len(missing)} of the body's tensors, e.g. {missing[:3]}")
    return state


def load_backbone_weights(model: nn.Module, weights: str, *, freeze_at: int = 0) -> tuple[str, ...]:
    """Load the ResNet body's weights (``model.backbone.body``) and freeze its first stages.

    Args:
        weights: ``"none"`` (keep the seeded initialisation, freeze nothing); a ``.pkl``
            Detectron pickle (converted, :func:`convert_detectron_body`); or a torch state
            dict of the body (torchvision names, GroupNorm in the ``bn*`` entries).
        freeze_at: with weights, the stem (1) and the stages ``layer1 .. layer{freeze_at - 1}``
            get ``requires_grad = False`` (maskrcnn-benchmark's ``FREEZE_CONV_BODY_AT``).

    Returns:
        The names of the frozen modules.
    """
    body = model.backbone.body
    if weights == "none":
        logger.info("PFF-Net backbone: random initialisation, nothing frozen")
        return ()
    path = Path(weights)
    if not path.is_file():
        raise InputDataError(f"training.backbone_weights: {weights} is not a file (give a path, or none)")
    if path.suffix == ".pkl":
        state = convert_detectron_body(read_detectron_pickle(path), body, weights)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputDataError(
            f"{weights}: not PFF-Net backbone weights (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    frozen = freeze_body(body, freeze_at)
    logger.info("PFF-Net backbone: weights from %s; frozen: %s", weights, ", ".join(frozen) or "nothing")
    return frozen


def freeze_body(body: nn.Module, freeze_at: int) -> tuple[str, ...]:
    """``requires_grad = False`` for the stem (``freeze_at`` >= 1) and ``layer1 ..
    layer{freeze_at - 1}``; returns their names."""
    names = (["conv1", "bn1"] if freeze_at >= 1 else []) + [f"layer{k}" for k in range(1, freeze_at)]
    for name in names:
        getattr(body, name).requires_grad_(False)
    return tuple(names)
