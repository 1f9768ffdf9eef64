"""PFF-Net: the faithful network's parameter counts (against torchvision's ResNet-101 and a count by
formula from the PFF-Net code's layer list), train and eval outputs, the mask quality target and the
fusion on hand-built inputs, learning on synthetic discs, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from nudiff.errors import ConfigError
from nudiff.segmentation.pffnet import network as pffnet_module
from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.heads import box_mask_ratios, mask_quality_loss
from nudiff.segmentation.pffnet.network import PFFNet, mask_quality_targets
from nudiff.segmentation.pffnet.semantic import (
    IGNORE_INDEX,
    ResidualAttentionFusion,
    semantic_consistency_loss,
    semantic_targets,
)

# A few channels per layer, one block per stage; GroupNorm with 4 groups divides every width.
TINY = PFFNetConfig.from_dict(
    {
        "backbone_blocks": [1, 1, 1, 1],
        "stem_channels": 8,
        "backbone_widths": [8, 8, 16, 16],
        "gn_groups": 4,
        "fpn_channels": 16,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 200,
        "box_head_dim": 32,
        "detections_per_image": 50,
        "mask_pool": 6,
        "mask_conv_layers": [16, 16],
        "maskiou_channels": 16,
        "maskiou_fc": 32,
        "semantic_channels": 8,
    }
)
LOSS_KEYS = {
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_maskiou",
    "loss_sem_branch",
    "loss_mask_fusion",
    "loss_sem_consistency",
}
EVAL_KEYS = {"boxes", "labels", "scores", "masks", "mask_quality", "mask_scores"}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def disc_patch(discs: list[tuple[int, int, int]], size: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A light patch with dark discs ``(row, col, radius)`` and its targets in PFFNet's format."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros((len(discs), size, size), dtype=torch.uint8)
    boxes = torch.zeros((len(discs), 4))
    for k, (r, c, radius) in enumerate(discs):
        masks[k] = ((rows - r) ** 2 + (cols - c) ** 2 <= radius**2).to(torch.uint8)
        ys, xs = torch.where(masks[k].bool())
        boxes[k] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    image = torch.full((3, size, size), 0.85)
    image[:, masks.bool().any(dim=0)] = torch.tensor([0.35, 0.2, 0.5])[:, None]
    return image, {"boxes": boxes, "labels": torch.ones(len(discs), dtype=torch.int64), "masks": masks}


def batch(*patches):
    return torch.stack([p[0] for p in patches]), [p[1] for p in patches]


# ---------------------------------------------------------------- the faithful network


@pytest.fixture(scope="module")
def faithful() -> PFFNet:
    with torch.device("meta"):  # shapes only: the counts need no memory or init time
        return PFFNet()


def test_faithful_body_is_resnet101_without_fc(faithful):
    with torch.device("meta"):
        resnet = torchvision.models.resnet101()
    expected = n_params(resnet) - n_params(resnet.fc)
    assert n_params(faithful.backbone.body) == expected == 42_500_160
    # torchvision's module names, so ResNet-101 weights map key by key (GroupNorm in place of BatchNorm)
    ours = {k: tuple(v.shape) for k, v in faithful.backbone.body.state_dict().items()}
    theirs = {
        k: tuple(v.shape)
        for k, v in resnet.state_dict().items()
        if not k.startswith("fc.") and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    assert ours == theirs


def test_faithful_parameter_counts_match_the_formula(faithful):
    """Counts from PFF-Net's layer list (its tcga config and maskrcnn-benchmark defaults), written
    out here independently of the code: 105,041,437 parameters in all."""

    def conv(i, o, kh, kw=None, bias=True):
        return i * o * kh * (kw or kh) + (o if bias else 0)

    def conv_gn(i, o, k=3):  # conv without bias + GroupNorm (weight and bias per channel)
        return conv(i, o, k, bias=False) + 2 * o

    def fc(i, o, gn=False):
        return i * o + 2 * o if gn else i * o + o

    c, stages, m, classes = 256, (256, 512, 1024, 2048), 64, 2
    fpn = sum(conv_gn(s, c, 1) for s in stages) + 4 * conv_gn(c, c)
    rpn = conv(c, c, 3) + conv(c, 3, 1) + conv(c, 4 * 3, 1)
    box = fc(c * 7 * 7, 1024, gn=True) + fc(1024, 1024, gn=True) + fc(1024, classes) + fc(1024, 4 * classes)
    mask = (
        4 * conv_gn(c, c)  # mask_fcn1..4
        + conv_gn(c, c)
        + conv_gn(c, c // 2)
        + fc(c // 2 * 14 * 14, 28 * 28)  # conv4_fc, conv5_fc, fc_final
        + conv(c, 4 * c, 3)
        + conv(c, classes, 1)  # conv5_mask (before pixel shuffle), mask_fcn_final
    )
    quality = (
        conv_gn(c + 4, 256) + 3 * conv_gn(256, 256) + fc(256 * 7 * 7, 1024, gn=True) + fc(1024, 1024, gn=True)
    ) + fc(1024, classes)
    gcn = sum(2 * conv(s, m, 5, 1) + 2 * conv(m, m, 1, 5) for s in stages)
    residual = 2 * conv_gn(m, m)
    semantic = gcn + (4 + 3) * residual + conv(m, classes, 1)  # res2 per stage, merge per merged level
    fpn_semantic = conv(c, classes, 3)
    fusion = conv(classes, classes, 3) + conv(classes, classes, 1)

    heads = faithful.roi_heads
    assert n_params(faithful.backbone.fpn) == fpn == 3_346_432
    assert n_params(faithful.rpn) == rpn == 593_935
    assert n_params(heads.box_head) + n_params(heads.box_predictor) == box == 13_907_978
    assert n_params(heads.mask_head) + n_params(heads.mask_predictor) == mask == 25_277_458
    assert n_params(heads.mask_quality_head) == quality == 16_270_338
    assert n_params(faithful.semantic_branch) == semantic == 3_140_482
    assert n_params(faithful.fpn_semantic) == fpn_semantic == 4_610
    assert n_params(faithful.fusion) == fusion == 44
    total = 42_500_160 + fpn + rpn + box + mask + quality + semantic + fpn_semantic + fusion
    assert n_params(faithful) == total == 105_041_437


# ---------------------------------------------------------------- configuration


def test_config_round_trips_and_refuses_bad_values():
    assert PFFNetConfig.from_dict(TINY.to_dict()) == TINY
    assert PFFNetConfig().to_dict()["backbone_blocks"] == [3, 4, 23, 3]
    with pytest.raises(ValueError, match="gn_groups=32 does not divide .* fpn_channels"):
        PFFNetConfig(fpn_channels=48)
    with pytest.raises(ValueError, match="gn_groups=4 does not divide .* backbone_widths"):
        PFFNetConfig.from_dict({**TINY.to_dict(), "backbone_widths": [8, 8, 16, 6]})
    with pytest.raises(ValueError, match="anchor_sizes needs 5"):
        PFFNetConfig(anchor_sizes=(32, 64))
    with pytest.raises(ValueError, match="quality_alpha"):
        PFFNetConfig(quality_alpha=1.5)
    with pytest.raises(ValueError, match="mask_conv_layers must end with an even width"):
        PFFNetConfig(gn_groups=1, mask_conv_layers=(255,))
    with pytest.raises(ConfigError, match="unknown"):
        PFFNetConfig.from_dict({"backbone": "r101"})


# ---------------------------------------------------------------- training and test outputs


def test_training_returns_finite_losses_and_reaches_every_parameter():
    net = PFFNet(TINY, seed=0).train()
    images, targets = batch(disc_patch([(16, 16, 7), (40, 44, 9)]), disc_patch([]))
    assert targets[1]["boxes"].shape == (0, 4)
    losses = net(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # PFF-Net builds modules it never calls; here every parameter is used
    unused = [name for name, p in net.named_parameters() if p.grad is None]
    assert not unused
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_a_patch_without_nuclei_only(bf16):
    """No positive RoI in the batch: the mask heads are skipped and backward works (an empty
    batch through them failed in PixelShuffle's backward under CPU autocast)."""
    net = PFFNet(TINY, seed=0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = net(*batch(disc_patch([]), disc_patch([])))
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_maskiou"] == 0
    sum(losses.values()).backward()


@pytest.mark.parametrize("size", [64, 96])
def test_eval_outputs_have_the_image_size(size):
    net = PFFNet(TINY, seed=0).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)))
    assert len(out) == 2
    for result in out:
        assert set(result) == EVAL_KEYS
        k = len(result["boxes"])
        assert 0 < k <= TINY.detections_per_image
        assert result["boxes"].shape == (k, 4) and result["labels"].shape == (k,) and result["scores"].shape == (k,)
        assert result["masks"].shape == (k, 1, size, size)
        assert 0 <= result["masks"].min() and result["masks"].max() <= 1
        assert result["mask_quality"].shape == (k,)
        torch.testing.assert_close(result["mask_scores"], result["scores"] * result["mask_quality"])
        assert (result["labels"] == 1).all()


def test_eval_without_detections_gives_empty_outputs(monkeypatch):
    net = PFFNet(TINY, seed=0).eval()
    monkeypatch.setattr(net.roi_heads, "score_thresh", 1.0)  # no class score exceeds it
    with torch.no_grad():
        result = net(torch.rand(1, 3, 64, 64))[0]
    assert set(result) == EVAL_KEYS
    assert result["boxes"].shape == (0, 4) and result["masks"].shape == (0, 1, 64, 64)
    assert result["mask_quality"].shape == result["mask_scores"].shape == (0,)


def test_eval_in_chunks_gives_the_same_detections(monkeypatch):
    net = PFFNet(TINY, seed=0).eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = net(image)[0]
        monkeypatch.setattr(pffnet_module, "_EVAL_ROI_CHUNK", 3)
        chunked = net(image)[0]
    assert len(whole["boxes"]) > 3
    for key in EVAL_KEYS:
        torch.testing.assert_close(whole[key], chunked[key])


def test_images_are_normalised_as_pffnet_and_not_resized():
    net = PFFNet(TINY, seed=0).eval()
    images = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    image_list, _ = net.transform(images)
    assert image_list.image_sizes == [(70, 90), (70, 90)]
    assert image_list.tensors.shape == (2, 3, 96, 96)  # padded to a multiple of 32
    torch.testing.assert_close(image_list.tensors[..., :70, :90], images * 255 - 128, rtol=0, atol=1e-4)


def test_the_fcn_path_applies_the_last_conv_block_twice():
    head = PFFNet(TINY, seed=0).roi_heads.mask_head
    x = torch.rand(3, TINY.fpn_channels, TINY.mask_pool, TINY.mask_pool)
    fcn, fc = head(x)
    torch.testing.assert_close(fcn, head.convs[-1](head.convs(x)))
    assert fc.shape == (3, 1, 2 * TINY.mask_pool, 2 * TINY.mask_pool) and (fc >= 0).all()


def test_bad_inputs_are_refused():
    net = PFFNet(TINY, seed=0).train()
    images, targets = batch(disc_patch([(16, 16, 7)]))
    with pytest.raises(ValueError, match="needs targets"):
        net(images)
    with pytest.raises(ValueError, match=r"masks must be \(1, 64, 64\)"):
        net(images, [{**targets[0], "masks": targets[0]["masks"][:, :32]}])
    with pytest.raises(ValueError, match="x2 > x1"):
        net(images, [{**targets[0], "boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]])}])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(images[:, :1], targets)


# ---------------------------------------------------------------- mask quality


def _columns(first: int, last: int, size: int = 28) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[:, first : last + 1] = 1
    return mask


def test_mask_quality_of_identical_masks_is_one():
    target = _columns(3, 20)[None]
    quality = mask_quality_targets(10 * (2 * target - 1), target, torch.ones(1), alpha=0.5)
    torch.testing.assert_close(quality, torch.ones(1))


def test_mask_quality_of_half_overlapping_masks():
    # 392 px each, 196 px shared: IoU 196 / 588 = 1/3, Dice 2 * 196 / 784 = 1/2
    target, pred = _columns(0, 13)[None], _columns(7, 20)[None]
    logits = 10 * (2 * pred - 1)
    for alpha, expected in ((1.0, 1 / 3), (0.0, 1 / 2), (0.5, 5 / 12)):
        torch.testing.assert_close(mask_quality_targets(logits, target, torch.ones(1), alpha), torch.tensor([expected]))


def test_mask_quality_counts_the_instance_outside_the_roi():
    # half of the instance lies outside the RoI: full area 784, IoU 392 / 784, Dice 784 / 1176
    target = _columns(0, 13)[None]
    quality = mask_quality_targets(10 * (2 * target - 1), target, torch.tensor([0.5]), alpha=0.5)
    torch.testing.assert_close(quality, torch.tensor([0.5 * 0.5 + 0.5 * 2 / 3]))
    # a vanishing ratio is floored (PFF-Net's 1e-10), not a division by zero
    assert mask_quality_targets(10 * (2 * target - 1), target, torch.zeros(1)).item() < 1e-6


def test_box_mask_ratios_count_covered_area():
    masks = torch.zeros(3, 20, 20, dtype=torch.uint8)
    masks[:, :10, :10] = 1
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0], [0.0, 2.5, 10.0, 5.0]])
    torch.testing.assert_close(box_mask_ratios(masks, boxes), torch.tensor([1.0, 0.5, 0.25]))


def test_mask_quality_loss_is_half_the_mean_squared_error_of_positive_targets():
    predicted, targets = torch.tensor([0.5, 0.2, 0.9]), torch.tensor([0.7, 0.0, 0.5])
    torch.testing.assert_close(mask_quality_loss(predicted, targets), torch.tensor(0.5 * (0.04 + 0.16) / 2))
    assert mask_quality_loss(predicted, torch.zeros(3)) == 0


# ---------------------------------------------------------------- semantic parts


def test_fusion_multiplies_only_inside_the_roi():
    semantic = torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    logits = torch.full((1, 2, 28, 28), -20.0)
    logits[..., 14:] = 20.0  # right half of the RoI: sigmoid 1, factor 2; left half factor 1
    box = torch.tensor([[4.0, 2.0, 10.0, 6.0]])  # 6 columns x 4 rows
    out = ResidualAttentionFusion.attend(semantic, [box], [logits])
    expected = semantic.clone()
    expected[..., 2:6, 7:10] *= 2
    torch.testing.assert_close(out, expected)


def test_fusion_factors_carry_no_gradient_and_multiply_overlaps():
    semantic = torch.ones(1, 2, 8, 8, requires_grad=True)
    logits = torch.zeros(2, 2, 28, 28, requires_grad=True)  # factor 1.5 each
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 6.0]])
    out = ResidualAttentionFusion.attend(semantic, [boxes], [logits])
    assert out[0, 0, 0, 0] == 1.5 and out[0, 0, 3, 3] == 2.25 and out[0, 0, 7, 7] == 1
    out.sum().backward()
    assert logits.grad is None and semantic.grad[0, 0, 3, 3] == 2.25


def test_semantic_targets_are_the_union_with_ignored_padding():
    masks = torch.zeros(2, 40, 50, dtype=torch.uint8)
    masks[0, :5, :5] = 1
    masks[1, 30:, 40:] = 1
    out = semantic_targets([masks, masks[:0]], (64, 64))
    assert out.shape == (2, 64, 64)
    assert out[0, :40, :50].sum() == 25 + 100 and (out[1, :40, :50] == 0).all()
    assert (out[:, 40:] == IGNORE_INDEX).all() and (out[:, :, 50:] == IGNORE_INDEX).all()


def test_consistency_loss_is_zero_when_the_maps_agree():
    a = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert semantic_consistency_loss(a, a.clone()) == 0
    b = a.clone()
    b[..., 6:, :] += 3.0  # differs only outside the valid pixels
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[:, 6:] = False
    assert semantic_consistency_loss(a, b, valid) == 0
    expected = torch.nn.functional.mse_loss(a.softmax(1), b.softmax(1))
    torch.testing.assert_close(semantic_consistency_loss(a, b), expected)


# ---------------------------------------------------------------- learning and determinism


def test_a_tiny_pffnet_learns_synthetic_discs():
    images, targets = batch(disc_patch([(16, 16, 7), (40, 44, 9)]), disc_patch([(20, 44, 8), (48, 18, 6), (44, 48, 5)]))
    net = PFFNet(TINY, seed=0).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    totals = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the RPN and RoI samplers draw from the global RNG
        for _ in range(50):
            total = sum(net(images, targets).values())
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < 0.6 * totals[0], totals


def test_same_seed_same_network_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b, c = PFFNet(TINY, seed=3), PFFNet(TINY, seed=3), PFFNet(TINY, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values()))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out_a, out_b = a.eval()(image)[0], b.eval()(image)[0]
    for key in EVAL_KEYS:
        assert torch.equal(out_a[key], out_b[key]), key
