"""Encoder weights for Hover-Net: none, ImageNet (torchvision's ResNet50, mapped onto the
pre-activation encoder), or a file saved from ``model.encoder``.

ImageNet weights are read from torchvision's cache only, never downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from nudiff.errors import InputDataError
from nudiff.segmentation.hovernet.config import HoVerNetConfig
from nudiff.segmentation.hovernet.network import HoVerNet

logger = logging.getLogger(__name__)


def state_dict_from_torchvision_resnet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a torchvision ResNet50 state dict onto :class:`PreActResNetEncoder` keys.

    Transferred (same tensor, same role): every conv (stem ``conv1``; ``conv1/2/3`` of each unit;
    ``downsample.0`` -> the stage's projection ``shortcut``), the stem BN ``bn1`` and each unit's
    ``bn1``/``bn2`` (they follow the same conv in both networks). Not transferred, left at their
    initial values: ``bn3`` and ``downsample.1`` (in ResNet50 they normalise the residual branch /
    the projection before the sum; a pre-activation net has no BN there), ``fc``; and the
    pre-activation BNs and the stage-closing BN, which normalise the sum and have no counterpart.
    MONAI's ``adapt_standard_resnet`` copies bn3 into the next unit's pre-activation BN and
    downsample.1 into the stage-closing BN; we do not, because those BNs see different tensors.

    Args:
        state_dict: keys as ``torchvision.models.resnet50().state_dict()``.

    Returns:
        ``{encoder key: tensor}`` for the transferred tensors only.
    """
    mapped: dict[str, Tensor] = {}
    missing: list[str] = []

    def take(src: str, dst: str) -> None:
        if src in state_dict:
            mapped[dst] = state_dict[src]
        else:
            missing.append(src)

    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    take("conv1.weight", "stem.conv.weight")
    for f in bn_fields:
        take(f"bn1.{f}", f"stem.bn.{f}")
    for s, n_units in enumerate(HoVerNetConfig().encoder_blocks):
        take(f"layer{s + 1}.0.downsample.0.weight", f"stages.{s}.shortcut.weight")
        for u in range(n_units):
            src, dst = f"layer{s + 1}.{u}", f"stages.{s}.units.{u}"
            for c in ("conv1", "conv2", "conv3"):
                take(f"{src}.{c}.weight", f"{dst}.{c}.weight")
            for b in ("bn1", "bn2"):
                for f in bn_fields:
                    take(f"{src}.{b}.{f}", f"{dst}.{b}.{f}")
    if missing:
        raise ValueError(f"not a torchvision ResNet50 state dict: missing {len(missing)} keys, e.g. {missing[:3]}")
    return mapped


def load_encoder_weights(model: HoVerNet, weights: str | Path | None) -> tuple[str, ...]:
    """Set ``model.encoder``'s weights and return the encoder keys that were loaded.

    Args:
        model: the network to change in place.
        weights: ``"none"`` / ``None`` (keep the random init, seeded by the caller), ``"imagenet"``
            (torchvision's ResNet50 ``IMAGENET1K_V1`` file from torchvision's cache, never
            downloaded, mapped by :func:`state_dict_from_torchvision_resnet`; only for the ResNet50
            encoder configuration), or a path to a ``model.encoder.state_dict()`` saved by torch.

    Raises:
        ValueError: ``"imagenet"`` with another encoder configuration, or a bad state dict.
        InputDataError: the weights file is missing or unreadable (the message names it).
    """
    if weights is None or weights == "none":
        logger.info("Hover-Net encoder: random initialisation")
        return ()
    encoder = model.encoder
    if weights == "imagenet":
        if not model.config.is_resnet50_encoder:
            c = model.config
            raise ValueError(
                "imagenet encoder weights need encoder_blocks=(3, 4, 6, 3), stem_channels=64, "
                f"encoder_widths=(256, 512, 1024, 2048), in_channels=3; this config has encoder_blocks="
                f"{c.encoder_blocks}, stem_channels={c.stem_channels}, encoder_widths={c.encoder_widths}, "
                f"in_channels={c.in_channels}"
            )
        from nudiff.features import (
            imagenet_weights_file,  # one place knows torchvision's cache layout
        )

        path = imagenet_weights_file()
        if not path.is_file():
            raise InputDataError(
                f"ImageNet ResNet50 weights not found in torchvision's cache: {path}. nudiff never "
                'downloads; run once with internet: python -c "import torchvision; '
                "torchvision.models.resnet50(weights='IMAGENET1K_V1')\", or copy resnet50-0676ba61.pth "
                "to that path (the cache folder follows $TORCH_HOME), or use encoder weights 'none'."
            )
        state = _load_file(path)
        mapped = state_dict_from_torchvision_resnet(state)
        _check_shapes(encoder, mapped, path)
        encoder.load_state_dict(mapped, strict=False)
        logger.info("Hover-Net encoder: %d of %d tensors from %s", len(mapped), len(encoder.state_dict()), path)
        return tuple(mapped)
    path = Path(weights)
    if not path.is_file():
        raise InputDataError(f"encoder weights file not found: {path} (expected 'none', 'imagenet' or a file)")
    state = _load_file(path)
    _check_shapes(encoder, state, path)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputDataError(f"{path} is not a state dict of this Hover-Net encoder: {err}") from err
    logger.info("Hover-Net encoder: all %d tensors from %s", len(state), path)
    return tuple(state)


def _load_file(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise InputDataError(f"cannot read encoder weights from {path}: {err}") from err
    if not isinstance(state, Mapping):
        raise InputDataError(f"{path} does not hold a state dict")
    return dict(state)


def _check_shapes(encoder: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    own = encoder.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise InputDataError(f"{path}: tensor shapes differ from this encoder for {len(bad)} keys, e.g. {bad[:3]}")
