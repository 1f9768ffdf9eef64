"""PFF-Net (Liu et al. 2021, "Panoptic feature fusion net: a novel instance segmentation paradigm for
biomedical and biological images", IEEE Transactions on Image Processing 30:2045-2059), on torchvision's Mask R-CNN.

The network of dliu5812/PFFNet (a maskrcnn-benchmark fork, TCGA config): a GroupNorm ResNet-101
body (torchvision ``Bottleneck`` blocks), an FPN with GroupNorm and a max-pooled P6, an RPN, RoI
heads with a dual-modal mask head and a mask quality head (:mod:`.pffnet_heads`), and the semantic
parts (:mod:`.pffnet_semantic`): a semantic branch on the body, the FPN's semantic map and their
fusion with the RoI masks, trained with a consistency loss.

Input: ``(B, 3, H, W)`` float images in [0, 1] of any size; they are not resized, only normalised
as PFF-Net's 0-255 input with mean 128 and std 1 and padded to a multiple of 32.
Training: ``net(images, targets)`` -> dict of scalar losses; evaluation: ``net(images)`` -> per
image ``boxes``, ``labels``, ``scores``, ``masks`` (pasted probabilities), ``mask_quality`` and
``mask_scores``. Hyper-parameters: :class:`nudiff.segmentation.pffnet.config.PFFNetConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    maskrcnn_inference,
    project_masks_on_boxes,
)
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.resnet import Bottleneck
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.heads import (
    DualModalMaskHead,
    DualModalMaskPredictor,
    GroupNormMLPHead,
    MaskQualityHead,
    box_mask_ratios,
    box_predictor,
    mask_quality_loss,
    mask_quality_targets,
)
from nudiff.segmentation.pffnet.semantic import (
    IGNORE_INDEX,
    FPNSemanticHead,
    ResidualAttentionFusion,
    SemanticBranch,
    semantic_consistency_loss,
    semantic_targets,
)

__all__ = ["PFFNet", "PFFNetConfig", "mask_quality_targets"]

N_CLASSES = 2  # background, nucleus
# maskrcnn-benchmark defaults and the TCGA config (facts of the PFF-Net code, not tuned here)
_PIXEL_MEAN, _PIXEL_STD = 128.0 / 255, 1.0 / 255  # on [0, 1] input: 255 x - 128
_SIZE_DIVISIBLE = 32
_RPN = dict(
    fg_iou_thresh=0.7,
    bg_iou_thresh=0.3,
    batch_size_per_image=256,
    positive_fraction=0.5,
    nms_thresh=0.7,
)
_RPN_PRE_NMS_TOP_N_TRAIN = 2000  # per FPN level
_RPN_POST_NMS_TOP_N_TRAIN = 2000  # per image
_ROI = dict(
    fg_iou_thresh=0.5,
    bg_iou_thresh=0.5,
    positive_fraction=0.25,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    score_thresh=0.05,
    nms_thresh=0.3,
)
_BOX_POOL, _SAMPLING_RATIO = 7, 2
_POOLED_LEVELS = ["0", "1", "2", "3"]  # P2..P5; the RPN also sees "pool" (P6)
_EVAL_ROI_CHUNK = 512  # detections per pass of the mask heads at test time (memory only)


class GroupNormResNetBody(nn.Module):
    """ResNet body with GroupNorm: 7x7 stride-2 stem conv, norm, ReLU, 3x3 stride-2 max pool, then
    four stages of torchvision ``Bottleneck`` blocks (stride in the 3x3 conv; 1x1 conv + norm
    projection where the shape changes). Module names are torchvision ``ResNet``'s (``conv1``,
    ``bn1``, ``layer1`` .. ``layer4``; ``bn*`` hold GroupNorms), so its weights map one to one.
    ``forward(x)`` returns C5; :class:`PFFNet` takes C2..C5 through ``BackboneWithFPN``."""

    def __init__(self, config: PFFNetConfig, norm_layer: partial[nn.GroupNorm]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, config.stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(config.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = config.stem_channels
        for i, (n_blocks, width) in enumerate(zip(config.backbone_blocks, config.backbone_widths)):
            stride = 1 if i == 0 else 2
            out_channels = width * Bottleneck.expansion
            projection = None
            if stride != 1 or in_channels != out_channels:
                projection = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm_layer(out_channels)
                )
            blocks = [Bottleneck(in_channels, width, stride, projection, norm_layer=norm_layer)]
            blocks += [Bottleneck(out_channels, width, norm_layer=norm_layer) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_channels = out_channels
        for module in self.modules():  # as torchvision's ResNet
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Float32Anchors(AnchorGenerator):
    """torchvision's anchors, always in float32: its generator takes the feature maps' dtype,
    which is bfloat16 under autocast, and bf16 cannot hold pixel coordinates (its step is 1 px
    from 128 to 256 and 2 px above). maskrcnn-benchmark's anchors are float32 throughout."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        # zero-stride views: the shapes and device the generator reads, in float32, no copy
        as_float = [torch.zeros((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]
        return super().forward(image_list, as_float)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs: the convolutions may run in bf16, but the
    objectness and box deltas that become proposals and losses do not (box decoding casts the
    anchors to the deltas' dtype)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class BorderFilteredRPN(RegionProposalNetwork):
    """torchvision's RPN with maskrcnn-benchmark's border filter: in training, anchors that reach
    beyond the image by more than ``straddle_thresh`` pixels are neither positive nor negative
    (``RPN.STRADDLE_THRESH`` 0; ``None`` keeps every anchor, as torchvision does). The image is the
    unpadded one; torchvision's boxes have exclusive far edges, so an anchor ending exactly at
    the border is inside."""

    def __init__(self, *args, straddle_thresh: float | None = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.straddle_thresh = straddle_thresh
        self._image_sizes: list[tuple[int, int]] = []

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):
        self._image_sizes = list(images.image_sizes)
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]):
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        if self.straddle_thresh is None:
            return labels, matched
        t = self.straddle_thresh
        for image_labels, image_anchors, (height, width) in zip(labels, anchors, self._image_sizes):
            inside = (
                (image_anchors[:, 0] >= -t)
                & (image_anchors[:, 1] >= -t)
                & (image_anchors[:, 2] <= width + t)
                & (image_anchors[:, 3] <= height + t)
            )
            image_labels[~inside] = -1.0  # torchvision's "discard" label: not sampled
        return labels, matched


def roi_box_loss(
    class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor], beta: float
) -> tuple[Tensor, Tensor]:
    """Fast R-CNN's losses: cross-entropy of the class scores, and smooth-L1 (``beta``) of the
    label class's box deltas over the positive RoIs, summed and divided by all sampled RoIs
    (maskrcnn-benchmark's ``FastRCNNLossComputation``, whose beta is 1; torchvision's
    ``fastrcnn_loss`` is the same with beta 1/9)."""
    labels_cat = torch.cat(labels)
    targets = torch.cat(regression_targets)
    classification = F.cross_entropy(class_logits.float(), labels_cat)
    positive = torch.where(labels_cat > 0)[0]
    deltas = box_regression.float().reshape(len(labels_cat), -1, 4)[positive, labels_cat[positive]]
    box = F.smooth_l1_loss(deltas, targets[positive], beta=beta, reduction="sum") / max(labels_cat.numel(), 1)
    return classification, box


class UnresizedTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without resizing: normalise as PFF-Net (0-255 pixels
    minus 128, std 1) and pad the batch to a multiple of 32."""

    def __init__(self) -> None:
        # min_size / max_size only steer the resize, which this transform skips
        super().__init__(1, 1, [_PIXEL_MEAN] * 3, [_PIXEL_STD] * 3, size_divisible=_SIZE_DIVISIBLE)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict | None]:
        return image, target


class PFFNetRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with PFF-Net's order: box head, then the dual-modal mask head on the
    positive RoIs (training) or the detections (test), then the mask quality head.

    ``forward`` returns ``(result, losses)`` as torchvision's: at test time ``result`` holds per
    image ``boxes``, ``labels``, ``scores``, ``masks`` ``(K, 1, M, M)`` RoI probabilities,
    ``mask_quality`` and ``mask_scores``; in training it holds per image the positive RoIs' refined
    ``boxes`` (the box head's prediction, clipped) and ``mask_logits`` ``(P, n_classes, M, M)``
    for the residual attention fusion, and ``losses`` has ``loss_classifier``, ``loss_box_reg``,
    ``loss_mask`` and ``loss_maskiou``.

    Args:
        mask_quality_head: the :class:`MaskQualityHead`.
        quality_alpha: IoU weight of the quality target (:func:`mask_quality_targets`).
        box_reg_beta: smooth-L1 beta of the box regression loss (:func:`roi_box_loss`).
        **kwargs: torchvision ``RoIHeads`` arguments.
    """

    def __init__(
        self, *, mask_quality_head: MaskQualityHead, quality_alpha: float, box_reg_beta: float, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.mask_quality_head = mask_quality_head
        self.quality_alpha = quality_alpha
        self.box_reg_beta = box_reg_beta

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            return self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_test(features, proposals, image_shapes), {}

    def _forward_train(self, features, proposals, image_shapes, targets):
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = roi_box_loss(
            class_logits, box_regression, labels, regression_targets, self.box_reg_beta
        )

        refined = self.box_coder.decode(box_regression.detach(), proposals).split([len(p) for p in proposals])
        positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
        pos_labels = [image_labels[i] for image_labels, i in zip(labels, positive)]
        pos_proposals = [p[i] for p, i in zip(proposals, positive)]
        pos_matched = [m[i] for m, i in zip(matched_idxs, positive)]
        pos_boxes = [
            box_ops.clip_boxes_to_image(r[i, lab], shape)
            for r, i, lab, shape in zip(refined, positive, pos_labels, image_shapes)
        ]

        if not sum(len(i) for i in positive):  # no positive RoI in the batch: nothing for the mask heads
            # (and their empty-batch backward fails in PixelShuffle under CPU autocast)
            size = 2 * self.mask_roi_pool.output_size[0]
            zero = class_logits.sum() * 0.0
            losses = {
                "loss_classifier": loss_classifier,
                "loss_box_reg": loss_box_reg,
                "loss_mask": zero,
                "loss_maskiou": zero,
            }
            empty = class_logits.new_zeros((0, class_logits.shape[1], size, size))
            return [{"boxes": b, "mask_logits": empty} for b in pos_boxes], losses
        roi_features = self.mask_roi_pool(features, pos_proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(roi_features))
        size = mask_logits.shape[-1]
        gt_masks = [t["masks"] for t in targets]
        mask_targets = torch.cat(
            [
                project_masks_on_boxes(m, p, i, size) if len(p) else mask_logits.new_zeros((0, size, size))
                for m, p, i in zip(gt_masks, pos_proposals, pos_matched)
            ]
        )
        ratios = torch.cat([box_mask_ratios(m[i], p) for m, p, i in zip(gt_masks, pos_proposals, pos_matched)])
        label = torch.cat(pos_labels)
        index = torch.arange(len(label), device=label.device)
        gt_class_logits = mask_logits[index, label]
        if len(label):
            loss_mask = F.binary_cross_entropy_with_logits(gt_class_logits, mask_targets)
        else:
            loss_mask = mask_logits.sum() * 0
        quality = self.mask_quality_head(roi_features, gt_class_logits.sigmoid()[:, None])
        quality_targets = mask_quality_targets(gt_class_logits, mask_targets, ratios, self.quality_alpha)
        losses = {
            "loss_classifier": loss_classifier,
            "loss_box_reg": loss_box_reg,
            "loss_mask": loss_mask,
            "loss_maskiou": mask_quality_loss(quality[index, label], quality_targets),
        }
        counts = [len(i) for i in positive]
        result = [{"boxes": b, "mask_logits": m} for b, m in zip(pos_boxes, mask_logits.split(counts))]
        return result, losses

    def _forward_test(self, features, proposals, image_shapes):
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        roi_features = self.mask_roi_pool(features, boxes, image_shapes)
        label = torch.cat(labels)
        size = 2 * roi_features.shape[-1]
        probs = [roi_features.new_zeros((0, 1, size, size))]
        qualities = [roi_features.new_zeros((0,))]
        for start in range(0, len(label), _EVAL_ROI_CHUNK):
            chunk, chunk_label = roi_features[start : start + _EVAL_ROI_CHUNK], label[start : start + _EVAL_ROI_CHUNK]
            prob = maskrcnn_inference(self.mask_predictor(self.mask_head(chunk)), [chunk_label])[0]
            quality = self.mask_quality_head(chunk, prob)
            probs.append(prob)
            qualities.append(quality[torch.arange(len(chunk_label), device=label.device), chunk_label])
        counts = [len(b) for b in boxes]
        result = []
        for b, s, lab, prob, quality in zip(
            boxes, scores, labels, torch.cat(probs).split(counts), torch.cat(qualities).split(counts)
        ):
            result.append(
                {
                    "boxes": b,
                    "labels": lab,
                    "scores": s,
                    "masks": prob,
                    "mask_quality": quality,
                    "mask_scores": s * quality,
                }
            )
        return result


class PFFNet(GeneralizedRCNN):
    """PFF-Net for nuclei (background / nucleus), on torchvision's ``GeneralizedRCNN``.

    ``forward(images, targets)`` in training mode: ``images`` ``(B, 3, H, W)`` float in [0, 1],
    ``targets`` one dict per image with ``boxes`` float ``(N, 4)`` xyxy pixels (x2, y2 exclusive),
    ``labels`` int64 ``(N,)`` (all 1) and ``masks`` uint8 ``(N, H, W)``; ``N`` may be 0. Returns the
    scalar losses ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``,
    ``loss_mask``, ``loss_maskiou``, ``loss_sem_branch``, ``loss_mask_fusion`` and
    ``loss_sem_consistency`` (to be summed; the consistency weight is already applied).

    ``forward(images)`` in eval mode: one dict per image with ``boxes`` ``(K, 4)``, ``labels``
    ``(K,)``, ``scores`` ``(K,)`` class scores, ``masks`` ``(K, 1, H, W)`` probabilities pasted into
    the image, ``mask_quality`` ``(K,)`` the predicted quality of the label class and
    ``mask_scores`` ``(K,)`` = scores x quality. The semantic parts only shape training (as in
    PFF-Net, whose test output has no semantic map), so they are skipped at test time.

    Args:
        config: the hyper-parameters (stored in checkpoints through ``config.to_dict()``);
            ``None`` is the authors' network.
        seed: seeds the initial weights (the global RNG state is left as it was), so the same
            seed builds the same network.
    """

    def __init__(self, config: PFFNetConfig | None = None, seed: int = 0) -> None:
        config = config if config is not None else PFFNetConfig()
        norm_layer = partial(nn.GroupNorm, config.gn_groups)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = BackboneWithFPN(
                GroupNormResNetBody(config, norm_layer),
                return_layers={f"layer{k + 1}": str(k) for k in range(len(config.backbone_blocks))},
                in_channels_list=list(config.stage_channels),
                out_channels=config.fpn_channels,
                extra_blocks=LastLevelMaxPool(),
                norm_layer=norm_layer,
            )
            super().__init__(backbone, _build_rpn(config), _build_roi_heads(config, norm_layer), UnresizedTransform())
            self.semantic_branch = SemanticBranch(
                config.stage_channels, config.semantic_channels, N_CLASSES, norm_layer
            )
            self.fpn_semantic = FPNSemanticHead(config.fpn_channels, N_CLASSES)
            self.fusion = ResidualAttentionFusion(N_CLASSES)
        self.config = config

    def detect(self, images: Tensor | list[Tensor]) -> list[dict[str, Tensor]]:
        """Eval-mode detections with each mask in its box's frame: as ``forward(images)`` but
        ``masks`` are ``(K, 1, M, M)`` (``M`` = ``config.mask_resolution``), not pasted into the
        image. A 1000 x 1000 image with thousands of detections needs this: pasted masks take
        ``K x H x W`` floats. Boxes are in image pixels (the transform does not resize)."""
        if self.training:
            raise RuntimeError("detect() needs eval mode (model.eval())")
        _check_inputs(images, None, False)
        image_list, _ = self.transform(images, None)
        stages = self.backbone.body(image_list.tensors)
        pyramid = self.backbone.fpn(stages)
        proposals, _ = self.rpn(image_list, pyramid, None)
        detections, _ = self.roi_heads(pyramid, proposals, image_list.image_sizes, None)
        return detections

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None):
        if not self.training:
            original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
            detections = self.detect(images)
            return self.transform.postprocess(detections, original_sizes, original_sizes)
        _check_inputs(images, targets, self.training)
        image_list, targets = self.transform(images, targets)
        stages = self.backbone.body(image_list.tensors)
        pyramid = self.backbone.fpn(stages)
        proposals, losses = self.rpn(image_list, pyramid, targets)
        detections, roi_losses = self.roi_heads(pyramid, proposals, image_list.image_sizes, targets)
        losses.update(roi_losses)

        semantic_gt = semantic_targets([t["masks"] for t in targets], tuple(image_list.tensors.shape[-2:]))
        semantic = self.semantic_branch(list(stages.values()))
        fused = self.fusion(
            self.fpn_semantic(pyramid["0"]), [d["boxes"] for d in detections], [d["mask_logits"] for d in detections]
        )
        losses["loss_sem_branch"] = F.cross_entropy(semantic, semantic_gt, ignore_index=IGNORE_INDEX)
        losses["loss_mask_fusion"] = F.cross_entropy(fused, semantic_gt, ignore_index=IGNORE_INDEX)
        consistency = semantic_consistency_loss(semantic, fused, valid=semantic_gt != IGNORE_INDEX)
        losses["loss_sem_consistency"] = self.config.semantic_consistency_weight * consistency
        return losses


def _build_rpn(config: PFFNetConfig) -> BorderFilteredRPN:
    anchors = Float32Anchors(
        sizes=tuple((size,) for size in config.anchor_sizes),
        aspect_ratios=(config.aspect_ratios,) * len(config.anchor_sizes),
    )
    return BorderFilteredRPN(
        anchors,
        Float32RPNHead(config.fpn_channels, len(config.aspect_ratios)),
        pre_nms_top_n=dict(training=_RPN_PRE_NMS_TOP_N_TRAIN, testing=config.rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=_RPN_POST_NMS_TOP_N_TRAIN, testing=config.rpn_post_nms_top_n_test),
        straddle_thresh=config.rpn_straddle_thresh,
        **_RPN,
    )


def _build_roi_heads(config: PFFNetConfig, norm_layer: partial[nn.GroupNorm]) -> PFFNetRoIHeads:
    c = config.fpn_channels
    return PFFNetRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(_POOLED_LEVELS, _BOX_POOL, _SAMPLING_RATIO),
        box_head=GroupNormMLPHead(c * _BOX_POOL**2, config.box_head_dim, norm_layer),
        box_predictor=box_predictor(config.box_head_dim, N_CLASSES),
        detections_per_img=config.detections_per_image,
        mask_roi_pool=MultiScaleRoIAlign(_POOLED_LEVELS, config.mask_pool, _SAMPLING_RATIO),
        mask_head=DualModalMaskHead(c, config.mask_conv_layers, config.mask_pool, norm_layer),
        mask_predictor=DualModalMaskPredictor(config.mask_conv_layers[-1], N_CLASSES),
        mask_quality_head=MaskQualityHead(
            c, config.maskiou_channels, config.maskiou_fc, config.mask_pool, N_CLASSES, norm_layer
        ),
        quality_alpha=config.quality_alpha,
        box_reg_beta=config.box_reg_beta,
        batch_size_per_image=config.roi_batch_per_image,
        **_ROI,
    )


def _check_inputs(images: Tensor, targets: Sequence[dict[str, Tensor]] | None, training: bool) -> None:
    """Raise ValueError naming what is wrong with the images or targets."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"PFFNet expects float images (B, 3, H, W) in [0, 1], got {got}")
    if targets is None:
        if training:
            raise ValueError("PFFNet needs targets in training mode")
        return
    if len(targets) != len(images):
        raise ValueError(f"PFFNet got {len(targets)} targets for {len(images)} images")
    height, width = images.shape[-2:]
    for k, target in enumerate(targets):
        missing = {"boxes", "labels", "masks"} - set(target)
        if missing:
            raise ValueError(f"target {k} lacks {sorted(missing)}")
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        n = len(boxes)
        if boxes.shape != (n, 4) or not boxes.is_floating_point():
            raise ValueError(f"target {k}: boxes must be float (N, 4), got {boxes.dtype} {tuple(boxes.shape)}")
        if labels.shape != (n,) or labels.dtype != torch.int64:
            raise ValueError(f"target {k}: labels must be int64 ({n},), got {labels.dtype} {tuple(labels.shape)}")
        if n and not bool(((labels >= 1) & (labels < N_CLASSES)).all()):
            raise ValueError(f"target {k}: labels must be in 1..{N_CLASSES - 1}, got {labels.unique().tolist()}")
        if masks.shape != (n, height, width):
            raise ValueError(f"target {k}: masks must be ({n}, {height}, {width}), got {tuple(masks.shape)}")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bool(degenerate.any()):
            raise ValueError(f"target {k}: boxes need x2 > x1 and y2 > y1, got {boxes[degenerate][0].tolist()}")
