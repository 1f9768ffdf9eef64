"""PFF-Net's semantic parts (Liu et al. 2021, IEEE Transactions on Image Processing 30:2045-2059, Sections 3.2-3.4).

- :class:`SemanticBranch`: the "multi-level global convolution" branch on the ResNet stages C2..C5
  (dliu5812/PFFNet ``sem_branch/mcgcn.py``): a GCN block and a residual block per stage, merged top
  down, a 1x1 conv to class logits and a nearest 4x upsampling to the image size.
- :class:`ResidualAttentionFusion`: the FPN's semantic map (3x3 conv on the 4x upsampled P2,
  ``backbone/fpn.py``) multiplied inside every positive training RoI by ``1 + sigmoid`` of the RoI's
  mask logits, then two convs (``roi_heads/feature_fusion.py``).
- :func:`semantic_targets` and :func:`semantic_consistency_loss`: the pixel ground truth (union of
  the instance masks) and the consistency between the two semantic maps.

Only the modules PFF-Net uses are built. Its code also instantiates a residual block for C2 that is
never called (73,984 parameters at the defaults), a 1x1 and a 3x3 conv per stage that are never
called (7,840) and, in the box head, a 1x1 conv and a fully connected layer that are never called
(803,634): 885,458 parameters in all that this module does not build.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops.misc import Conv2dNormActivation

IGNORE_INDEX = -100  # padding pixels of the batched images: no semantic ground truth
_GCN_KERNEL = 5  # PFF-Net's GCN blocks: 5x1 and 1x5 convs


def _kaiming_uniform_init(module: nn.Module) -> None:
    """maskrcnn-benchmark's ``conv_with_kaiming_uniform`` init (Caffe2's XavierFill): weights
    Kaiming-uniform with a=1, biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_uniform_(layer.weight, a=1)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class GCNBlock(nn.Sequential):
    """Global convolution block: ``(5x1 conv, 1x5 conv) + (1x5 conv, 5x1 conv)``, convs with bias and
    'same' padding, ``in_channels -> out_channels`` (Peng et al. 2017's large-kernel block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        k, p = _GCN_KERNEL, _GCN_KERNEL // 2
        super().__init__(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, (k, 1), padding=(p, 0)),
                nn.Conv2d(out_channels, out_channels, (1, k), padding=(0, p)),
            ),
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, (1, k), padding=(0, p)),
                nn.Conv2d(out_channels, out_channels, (k, 1), padding=(p, 0)),
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self[0](x) + self[1](x)


class ResidualBlock(nn.Sequential):
    """``x + GN(conv3x3(GN(conv3x3(x))))``: convs without bias, no activation (PFF-Net's
    ``RESBlock`` with PANOPTIC.USE_GN and FPN.USE_RELU False)."""

    def __init__(self, channels: int, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__(
            *(
                Conv2dNormActivation(channels, channels, 3, norm_layer=norm_layer, activation_layer=None)
                for _ in range(2)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


class SemanticBranch(nn.Module):
    """Semantic segmentation from the ResNet stages: ``forward([C2, C3, C4, C5])`` -> ``(B, n_classes,
    4 H2, 4 W2)`` logits, where ``(H2, W2)`` is the size of C2 (the padded image size).

    Per stage k a lateral map ``res2_k(gcn_k(C_k))``; top down from C5: ``top = merge_k(lateral_k +
    nearest_up(top))`` for C4, C3, C2 (one merge residual block per merged level; PFF-Net indexes the
    merge block of the level above, so the C2 block it builds is never used and not built here).

    Args:
        in_channels: channels of C2..C5.
        channels: channels of the branch (64).
        n_classes: output classes (2: background, nucleus).
        norm_layer: builds the GroupNorm of a residual block from its width.
    """

    def __init__(
        self, in_channels: Sequence[int], channels: int, n_classes: int, norm_layer: Callable[[int], nn.Module]
    ) -> None:
        super().__init__()
        self.gcn = nn.ModuleList(GCNBlock(c, channels) for c in in_channels)
        self.lateral = nn.ModuleList(ResidualBlock(channels, norm_layer) for _ in in_channels)
        self.merge = nn.ModuleList(ResidualBlock(channels, norm_layer) for _ in in_channels[:-1])
        self.classifier = nn.Conv2d(channels, n_classes, 1)
        _kaiming_uniform_init(self)

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        if len(stages) != len(self.gcn):
            raise ValueError(f"SemanticBranch expects {len(self.gcn)} feature maps, got {len(stages)}")
        top = self.lateral[-1](self.gcn[-1](stages[-1]))
        for k in range(len(stages) - 2, -1, -1):
            lateral = self.lateral[k](self.gcn[k](stages[k]))
            top = self.merge[k](lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest"))
        # C2 has stride 4
        return F.interpolate(self.classifier(top), scale_factor=4, mode="nearest")


class FPNSemanticHead(nn.Conv2d):
    """The FPN's semantic map: a 3x3 conv (with bias) on the nearest 4x upsampled P2,
    ``(B, C, H/4, W/4) -> (B, n_classes, H, W)``."""

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__(in_channels, n_classes, 3, padding=1)
        _kaiming_uniform_init(self)

    def forward(self, p2: Tensor) -> Tensor:
        return super().forward(F.interpolate(p2, scale_factor=4, mode="nearest"))


class ResidualAttentionFusion(nn.Module):
    """Residual attention feature fusion (PFF-Net Section 3.3), training only.

    ``forward(semantic_map, boxes, mask_logits)``: the map ``(B, K, H, W)`` is multiplied inside
    every RoI box by ``1 + sigmoid(mask logits)`` (detached; see :meth:`attend`), then
    ``conv1x1(relu(conv3x3(relu(.))))`` (both with bias, ``K -> K``) gives the fused logits.

    Args:
        n_classes: channels of the semantic map and of the mask logits (2).
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(n_classes, n_classes, 3, padding=1)
        self.conv1x1 = nn.Conv2d(n_classes, n_classes, 1)
        _kaiming_uniform_init(self)

    @staticmethod
    def attend(semantic_map: Tensor, boxes: Sequence[Tensor], mask_logits: Sequence[Tensor]) -> Tensor:
        """Multiply ``semantic_map`` ``(B, K, H, W)`` inside each box by ``1 + sigmoid(logits)``.

        Args:
            semantic_map: ``(B, K, H, W)`` logits.
            boxes: per image ``(N_b, 4)`` xyxy pixel boxes (the box head's refined boxes, clipped to
                the image); each covers the pixels ``floor(x1) .. ceil(x2) - 1`` (at least one).
            mask_logits: per image ``(N_b, K, M, M)`` RoI mask logits, resized bilinearly to the box.

        Returns:
            ``(B, K, H, W)``: the map times the product of the factors of the boxes covering a pixel
            (PFF-Net multiplies in place, box after box); the factors carry no gradient.
        """
        if len(boxes) != semantic_map.shape[0] or len(mask_logits) != semantic_map.shape[0]:
            raise ValueError(
                f"need boxes and mask logits for each of the {semantic_map.shape[0]} images, "
                f"got {len(boxes)} and {len(mask_logits)}"
            )
        height, width = semantic_map.shape[-2:]
        factor = torch.ones_like(semantic_map, requires_grad=False)
        for b, (image_boxes, logits) in enumerate(zip(boxes, mask_logits)):
            attention = logits.detach().sigmoid()
            for box, roi_attention in zip(image_boxes.detach().tolist(), attention):
                x0 = min(max(math.floor(box[0]), 0), width - 1)
                y0 = min(max(math.floor(box[1]), 0), height - 1)
                x1 = min(max(math.ceil(box[2]), x0 + 1), width)
                y1 = min(max(math.ceil(box[3]), y0 + 1), height)
                # PFF-Net resizes to (box width, box height) as (rows, cols): swapped; here rows = height
                resized = F.interpolate(roi_attention[None], size=(y1 - y0, x1 - x0), mode="bilinear")[0]
                factor[b, :, y0:y1, x0:x1] *= 1 + resized
        return semantic_map * factor

    def forward(self, semantic_map: Tensor, boxes: Sequence[Tensor], mask_logits: Sequence[Tensor]) -> Tensor:
        x = self.attend(semantic_map, boxes, mask_logits)
        return self.conv1x1(F.relu(self.conv3x3(F.relu(x))))


def semantic_targets(masks: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """Pixel classes of a batch: 1 where any instance mask is set, 0 elsewhere, and
    :data:`IGNORE_INDEX` in the padding of the batched images.

    Args:
        masks: per image ``(N, H_b, W_b)`` instance masks (``N`` may be 0).
        size: ``(H, W)`` of the batched (padded) images, at least every ``(H_b, W_b)``.

    Returns:
        ``(B, H, W)`` int64.
    """
    out = torch.full((len(masks), *size), IGNORE_INDEX, dtype=torch.int64, device=masks[0].device)
    for b, image_masks in enumerate(masks):
        h, w = image_masks.shape[-2:]
        if h > size[0] or w > size[1]:
            raise ValueError(f"masks of image {b} are {h}x{w}, larger than the batch size {size[0]}x{size[1]}")
        out[b, :h, :w] = image_masks.bool().any(dim=0).long() if len(image_masks) else 0
    return out


def semantic_consistency_loss(logits_a: Tensor, logits_b: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean squared difference of the two maps' softmax probabilities (PFF-Net's semantic consistency
    loss), over all classes and the ``valid`` pixels.

    Args:
        logits_a, logits_b: ``(B, K, H, W)`` logits.
        valid: ``(B, H, W)`` bool, the pixels to compare (all when ``None``: then this is
            ``nn.MSELoss()`` of the two softmax maps, as PFF-Net).

    Returns:
        A scalar tensor.
    """
    squared = (logits_a.softmax(dim=1) - logits_b.softmax(dim=1)).square()
    if valid is None:
        return squared.mean()
    weight = valid[:, None].to(squared.dtype)
    return (squared * weight).sum() / (weight.sum() * squared.shape[1]).clamp(min=1)
