"""PFF-Net hyper-parameters (Liu et al. 2021, "Panoptic feature fusion net", IEEE Transactions on
Image Processing 30:2045-2059).

:class:`PFFNetConfig` holds the widths and depths of the network built by
:class:`nudiff.segmentation.pffnet.network.PFFNet`. The defaults are the authors' network for TCGA / MoNuSeg
(dliu5812/PFFNet, ``configs/biomed_seg/e2e_mask_rcnn_R_101_FPN_1x_gn-tcga.yaml`` on top of
maskrcnn-benchmark's defaults): a GroupNorm ResNet-101 with FPN, Mask R-CNN heads with a dual-modal
mask head, a mask quality head and a semantic branch. It is stored in checkpoints as a plain dict
(:meth:`PFFNetConfig.to_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from nudiff.config import from_mapping

_N_STAGES = 4  # ResNet stages C2..C5
_N_LEVELS = 5  # FPN levels P2..P6, one anchor size each


@dataclass(frozen=True)
class PFFNetConfig:
    """PFF-Net hyper-parameters; the defaults are the authors' TCGA network.

    Attributes:
        backbone_blocks: bottleneck blocks per ResNet stage (ResNet-101: 3, 4, 23, 3).
        stem_channels: channels of the 7x7 stem conv (64).
        backbone_widths: inner (bottleneck) width of each stage (64, 128, 256, 512); a stage
            outputs 4x as many channels (256 .. 2048), as torchvision's ``Bottleneck``.
        gn_groups: GroupNorm groups of every normalised layer (32); must divide every width it
            normalises.
        fpn_channels: channels of the FPN levels P2..P6 (256).
        anchor_sizes: RPN anchor size of each FPN level P2..P6 (32 .. 512 px).
        aspect_ratios: RPN anchor aspect ratios (height / width) at every level.
        rpn_pre_nms_top_n_test: proposals kept per FPN level before NMS at test time (30000).
        rpn_post_nms_top_n_test: proposals kept per image after NMS at test time (8000).
        box_head_dim: width of the box head's two fully connected layers (1024).
        roi_batch_per_image: RoIs sampled per training image for the box head (512; a quarter
            positive at most). Small patches with few nuclei train as well with fewer, and the
            RoIAlign backward, about half of a small network's CPU step, shrinks with them.
        detections_per_image: detections kept per image at test time (4000).
        mask_pool: RoIAlign output size of the mask head (14); the masks are twice as large (28).
        mask_conv_layers: output channels of the mask head's 3x3 convs (256 x 4).
        maskiou_channels: channels of the mask quality head's convs (256).
        maskiou_fc: width of the mask quality head's fully connected layers (1024).
        quality_alpha: weight of the IoU in the mask quality target, ``alpha * IoU + (1 - alpha) *
            Dice`` (0.5).
        semantic_channels: channels of the semantic branch (64).
        semantic_consistency_weight: weight of the consistency loss between the semantic branch
            and the fused semantic map (1.0).
        box_reg_beta: smooth-L1 beta of the box head's regression loss (maskrcnn-benchmark's
            RoI box loss: 1; torchvision's ``fastrcnn_loss``: 1/9).
        rpn_straddle_thresh: RPN training ignores anchors that reach beyond the image by more
            than this many pixels (maskrcnn-benchmark ``RPN.STRADDLE_THRESH`` 0); ``None`` keeps
            every anchor (torchvision).
    """

    backbone_blocks: tuple[int, ...] = (3, 4, 23, 3)
    stem_channels: int = 64
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)
    gn_groups: int = 32
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_test: int = 30000
    rpn_post_nms_top_n_test: int = 8000
    box_head_dim: int = 1024
    roi_batch_per_image: int = 512
    detections_per_image: int = 4000
    mask_pool: int = 14
    mask_conv_layers: tuple[int, ...] = (256, 256, 256, 256)
    maskiou_channels: int = 256
    maskiou_fc: int = 1024
    quality_alpha: float = 0.5
    semantic_channels: int = 64
    semantic_consistency_weight: float = 1.0
    box_reg_beta: float = 1.0
    rpn_straddle_thresh: float | None = 0.0

    def __post_init__(self) -> None:
        lengths = {
            "backbone_blocks": _N_STAGES,
            "backbone_widths": _N_STAGES,
            "anchor_sizes": _N_LEVELS,
            "mask_conv_layers": None,
        }
        for name, length in lengths.items():
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not value or not all(_is_int(v) and v > 0 for v in value):
                raise ValueError(f"PFFNetConfig.{name} must be a non-empty sequence of positive ints, got {value!r}")
            if length is not None and len(value) != length:
                raise ValueError(f"PFFNetConfig.{name} needs {length} entries, got {len(value)}: {value!r}")
            object.__setattr__(self, name, tuple(value))  # lists from JSON become tuples
        ratios = self.aspect_ratios
        if (
            not isinstance(ratios, (tuple, list))
            or not ratios
            or not all(_is_number(r) and math.isfinite(r) and r > 0 for r in ratios)
        ):
            raise ValueError(f"PFFNetConfig.aspect_ratios must be a non-empty sequence of numbers > 0, got {ratios!r}")
        object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in ratios))
        for name in (
            "stem_channels",
            "gn_groups",
            "fpn_channels",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test",
            "box_head_dim",
            "roi_batch_per_image",
            "detections_per_image",
            "mask_pool",
            "maskiou_channels",
            "maskiou_fc",
            "semantic_channels",
        ):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"PFFNetConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not _is_number(self.quality_alpha) or not 0.0 <= self.quality_alpha <= 1.0:
            raise ValueError(f"PFFNetConfig.quality_alpha must be in [0, 1], got {self.quality_alpha!r}")
        weight = self.semantic_consistency_weight
        if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"PFFNetConfig.semantic_consistency_weight must be a number >= 0, got {weight!r}")
        if not _is_number(self.box_reg_beta) or not self.box_reg_beta > 0:
            raise ValueError(f"PFFNetConfig.box_reg_beta must be a number > 0, got {self.box_reg_beta!r}")
        straddle = self.rpn_straddle_thresh
        if straddle is not None and (not _is_number(straddle) or straddle < 0):
            raise ValueError(f"PFFNetConfig.rpn_straddle_thresh must be a number >= 0 or null, got {straddle!r}")
        if self.mask_conv_layers[-1] % 2:
            # the mask head's fully connected path halves the last conv width (PFF-Net's conv5_fc)
            raise ValueError(f"PFFNetConfig.mask_conv_layers must end with an even width, got {self.mask_conv_layers}")
        self._check_group_norm()

    def _check_group_norm(self) -> None:
        normalised = {
            "stem_channels": (self.stem_channels,),
            "backbone_widths": self.backbone_widths + self.stage_channels,
            "fpn_channels": (self.fpn_channels,),
            "box_head_dim": (self.box_head_dim,),
            "mask_conv_layers": self.mask_conv_layers + (self.mask_conv_layers[-1] // 2,),
            "maskiou_channels": (self.maskiou_channels,),
            "maskiou_fc": (self.maskiou_fc,),
            "semantic_channels": (self.semantic_channels,),
        }
        for name, widths in normalised.items():
            bad = [w for w in widths if w % self.gn_groups]
            if bad:
                raise ValueError(
                    f"PFFNetConfig.gn_groups={self.gn_groups} does not divide the GroupNorm width(s) {bad} "
                    f"of {name}={getattr(self, name)!r}"
                )

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of the ResNet stages C2..C5 (4x the bottleneck widths: 256 .. 2048)."""
        return tuple(4 * w for w in self.backbone_widths)

    @property
    def mask_resolution(self) -> int:
        """Side of the predicted RoI masks: twice ``mask_pool`` (28)."""
        return 2 * self.mask_pool

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict for checkpoints; :meth:`from_dict` rebuilds the config."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PFFNetConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError`` naming them."""
        return from_mapping(cls, data, "PFFNetConfig")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
