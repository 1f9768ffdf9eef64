"""PFF-Net's RoI heads (Liu et al. 2021, IEEE Transactions on Image Processing 30:2045-2059, Section 3.1), built from
torchvision's detection blocks.

- :class:`GroupNormMLPHead` and :func:`box_predictor`: maskrcnn-benchmark's ``FPN2MLPFeatureExtractor``
  with GroupNorm and its ``FPNPredictor`` (torchvision's ``FastRCNNPredictor``).
- :class:`DualModalMaskHead` and :class:`DualModalMaskPredictor`: the dual-modal mask head
  (``mask_head/roi_mask_feature_extractors.py``, ``roi_mask_predictors.py``): a fully convolutional
  path upsampled by pixel shuffle plus a fully connected path, as in PANet (Liu et al. 2018).
- :class:`MaskQualityHead`, :func:`mask_quality_targets`, :func:`mask_quality_loss`: the mask quality
  head of Mask Scoring R-CNN (Huang et al. 2019) with PFF-Net's target, the mean of mask IoU and Dice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.misc import Conv2dNormActivation

NormLayer = Callable[[int], nn.Module]
_MIN_RATIO = 1e-10  # PFF-Net's floor of the in-box fraction of an instance


def _fc_norm_relu(in_features: int, out_features: int, norm_layer: NormLayer) -> list[nn.Module]:
    """maskrcnn-benchmark's ``make_fc`` with GroupNorm (Linear without bias, Kaiming-uniform a=1), and ReLU."""
    fc = nn.Linear(in_features, out_features, bias=False)
    nn.init.kaiming_uniform_(fc.weight, a=1)
    return [fc, norm_layer(out_features), nn.ReLU(inplace=True)]


class GroupNormMLPHead(nn.Sequential):
    """Box head: flatten, then twice (Linear without bias, GroupNorm, ReLU); ``(N, C, P, P) -> (N, dim)``."""

    def __init__(self, in_features: int, dim: int, norm_layer: NormLayer) -> None:
        super().__init__(
            nn.Flatten(1), *_fc_norm_relu(in_features, dim, norm_layer), *_fc_norm_relu(dim, dim, norm_layer)
        )


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's box predictor with float32 outputs: the deltas become boxes and regression
    losses, which bf16 (autocast) would round by up to a pixel at these coordinates."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


def box_predictor(dim: int, n_classes: int) -> Float32BoxPredictor:
    """Class scores and per-class box deltas, initialised as maskrcnn-benchmark's ``FPNPredictor``
    (weights N(0, 0.01) for the scores, N(0, 0.001) for the deltas, biases 0), in float32."""
    predictor = Float32BoxPredictor(dim, n_classes)
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    return predictor


class DualModalMaskHead(nn.Module):
    """Mask features of the dual-modal head: ``forward(x (N, C_in, P, P))`` -> ``(fcn, fc)`` with
    ``fcn`` ``(N, C, P, P)`` for :class:`DualModalMaskPredictor` and ``fc`` ``(N, 1, 2P, 2P)``.

    ``x`` goes through four 3x3 conv-GN-ReLU blocks (torchvision's ``MaskRCNNHeads``) to ``y``;
    ``fcn`` is the last block applied to ``y`` once more, and ``fc`` is ``y`` through two 3x3
    conv-GN-ReLU blocks (``C -> C -> C/2``), a Linear (with bias) to ``(2P)^2`` values and a ReLU.

    Args:
        in_channels: channels of the pooled features (the FPN's).
        layers: output channels of the four conv blocks; ``C = layers[-1]``, even.
        pool: side ``P`` of the pooled features (14).
        norm_layer: builds a GroupNorm from its width.
    """

    def __init__(self, in_channels: int, layers: Sequence[int], pool: int, norm_layer: NormLayer) -> None:
        super().__init__()
        width = layers[-1]
        self.pool = pool
        self.convs = MaskRCNNHeads(in_channels, list(layers), dilation=1, norm_layer=norm_layer)
        fc = nn.Linear(width // 2 * pool * pool, (2 * pool) ** 2)
        nn.init.kaiming_uniform_(fc.weight, a=1)
        nn.init.zeros_(fc.bias)
        self.fc = nn.Sequential(
            Conv2dNormActivation(width, width, 3, norm_layer=norm_layer),
            Conv2dNormActivation(width, width // 2, 3, norm_layer=norm_layer),
            nn.Flatten(1),
            fc,
            nn.ReLU(inplace=True),
        )
        for layer in self.fc.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.convs(x)
        # PFF-Net's quirk, kept: its FCN path applies the last conv block (same weights) a second time.
        fcn = self.convs[-1](x)
        fc = self.fc(x).view(-1, 1, 2 * self.pool, 2 * self.pool)
        return fcn, fc


class DualModalMaskPredictor(nn.Module):
    """Mask logits ``(N, n_classes, 2P, 2P)`` from :class:`DualModalMaskHead`'s ``(fcn, fc)``:
    ``conv1x1(pixel_shuffle(relu(conv3x3(fcn))))`` (``C -> 4C``, shuffled to ``C`` channels at twice
    the size, then ``C -> n_classes``) plus the ``fc`` map, added to every class."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.upsample = nn.Sequential(
            nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.ReLU(inplace=True), nn.PixelShuffle(2)
        )
        self.logits = nn.Conv2d(channels, n_classes, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):  # as maskrcnn-benchmark's mask predictors
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, features: tuple[Tensor, Tensor]) -> Tensor:
        fcn, fc = features
        return self.logits(self.upsample(fcn)) + fc


class MaskQualityHead(nn.Module):
    """Predicted mask quality per class: ``forward(roi_features (N, C, P, P), mask_prob (N, 1, 2P, 2P))``
    -> ``(N, n_classes)``.

    The mask probabilities are rearranged to 4 channels at ``P x P`` (``pixel_unshuffle(2)``) and
    concatenated to the RoI features; four 3x3 conv-GN-ReLU blocks (the last with stride 2), two
    (Linear without bias, GN, ReLU) and a Linear to the classes.

    Args:
        in_channels: channels ``C`` of the RoI features.
        channels: channels of the conv blocks (256).
        fc_dim: width of the fully connected layers (1024).
        pool: side ``P`` of the RoI features (14).
        n_classes: outputs (2).
        norm_layer: builds a GroupNorm from its width.
    """

    n_convs = 4

    def __init__(
        self, in_channels: int, channels: int, fc_dim: int, pool: int, n_classes: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        widths = [in_channels + 4] + [channels] * self.n_convs
        strides = [1] * (self.n_convs - 1) + [2]
        self.convs = nn.Sequential(
            *(
                Conv2dNormActivation(i, o, 3, stride=s, norm_layer=norm_layer)
                for i, o, s in zip(widths[:-1], widths[1:], strides)
            )
        )
        for layer in self.convs.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        reduced = (pool - 1) // 2 + 1  # the stride-2 conv (padding 1): 14 -> 7
        self.fcs = nn.Sequential(
            nn.Flatten(1),
            *_fc_norm_relu(channels * reduced * reduced, fc_dim, norm_layer),
            *_fc_norm_relu(fc_dim, fc_dim, norm_layer),
        )
        self.predictor = nn.Linear(fc_dim, n_classes)
        nn.init.normal_(self.predictor.weight, std=0.01)  # as Mask Scoring R-CNN
        nn.init.zeros_(self.predictor.bias)

    def forward(self, roi_features: Tensor, mask_prob: Tensor) -> Tensor:
        # PFF-Net reshapes the 28x28 mask with .view into 4 channels of 14x14 (row bands); pixel
        # unshuffle keeps each 2x2 neighbourhood at one position instead.
        n, c, h, w = mask_prob.shape
        # torch's pixel_unshuffle returns an empty batch unchanged (not as 4c x h/2 x w/2)
        unshuffled = F.pixel_unshuffle(mask_prob, 2) if n else mask_prob.reshape(0, 4 * c, h // 2, w // 2)
        x = torch.cat([roi_features, unshuffled], dim=1)
        return self.predictor(self.fcs(self.convs(x)))


def mask_quality_targets(pred_logits: Tensor, targets: Tensor, ratios: Tensor, alpha: float = 0.5) -> Tensor:
    """PFF-Net's mask quality target: ``alpha * IoU + (1 - alpha) * Dice`` of the predicted mask and
    the whole ground-truth instance (``mask_head/loss.py``).

    The predicted mask is ``pred_logits > 0`` in the RoI; the instance's area is its area in the RoI
    divided by ``ratios``, the fraction of the instance inside the RoI box (floored at 1e-10), so a
    RoI that cuts the instance gets a lower quality. With ``ovr`` the overlap in the RoI:
    ``IoU = max(ovr, 0) / max(pred + full - ovr, 1)``, ``Dice = 2 ovr / max(pred + full, 1)``.

    Args:
        pred_logits: ``(N, M, M)`` mask logits of the ground-truth class (M = 28).
        targets: ``(N, M, M)`` ground-truth masks projected onto the RoIs, in [0, 1].
        ratios: ``(N,)`` fraction of each instance's pixels inside its RoI box.
        alpha: weight of the IoU (0.5).

    Returns:
        ``(N,)`` quality targets in [0, 1]; no gradient.
    """
    if pred_logits.shape != targets.shape or pred_logits.ndim != 3:
        raise ValueError(
            f"pred_logits and targets must both be (N, M, M), got {tuple(pred_logits.shape)} and {tuple(targets.shape)}"
        )
    if ratios.shape != pred_logits.shape[:1]:
        raise ValueError(f"ratios must be ({pred_logits.shape[0]},), got {tuple(ratios.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    with torch.no_grad():
        targets = targets.to(torch.float32)
        pred = (pred_logits > 0).to(targets.dtype)
        pred_area = pred.sum(dim=(1, 2))
        full_area = targets.sum(dim=(1, 2)) / ratios.to(targets.dtype).clamp(min=_MIN_RATIO)
        overlap = (pred * targets).sum(dim=(1, 2)).clamp(min=0)
        iou = overlap / (pred_area + full_area - overlap).clamp(min=1)
        dice = 2 * overlap / (pred_area + full_area).clamp(min=1)
        return alpha * iou + (1 - alpha) * dice


def box_mask_ratios(masks: Tensor, boxes: Tensor) -> Tensor:
    """Fraction of each instance's pixels inside its box (pixels cut by the box edge count by their
    covered area): ``masks`` ``(N, H, W)``, ``boxes`` ``(N, 4)`` xyxy -> ``(N,)``; 0 for an empty mask."""
    height, width = masks.shape[-2:]
    masks = masks.to(boxes.dtype)

    def coverage(lo: Tensor, hi: Tensor, n: int) -> Tensor:
        edges = torch.arange(n, dtype=boxes.dtype, device=boxes.device)
        return (torch.minimum(edges + 1, hi[:, None]) - torch.maximum(edges, lo[:, None])).clamp(0, 1)

    inside = torch.einsum(
        "nh,nhw,nw->n", coverage(boxes[:, 1], boxes[:, 3], height), masks, coverage(boxes[:, 0], boxes[:, 2], width)
    )
    return inside / masks.sum(dim=(1, 2)).clamp(min=1)


def mask_quality_loss(predicted: Tensor, targets: Tensor) -> Tensor:
    """Mask Scoring R-CNN's ``l2_loss``: ``0.5 * mean((predicted - target)^2)`` over the RoIs whose
    target is > 0; 0 (with a gradient path) when there are none. ``(N,)``, ``(N,)`` -> scalar."""
    positive = targets > 0
    if not bool(positive.any()):
        return predicted.sum() * 0
    return 0.5 * (predicted[positive] - targets[positive]).square().mean()
