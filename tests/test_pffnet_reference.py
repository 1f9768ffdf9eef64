"""PFF-Net computes what its reference (dliu5812/PFFNet on maskrcnn-benchmark) computes: box
arithmetic in float32 under bf16 autocast, the RPN's border filter, the RoI box loss's smooth-L1
beta, Detectron's R-101-GN weights converted and the first stages frozen, the reference's flips and
empty patches left out."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_pffnet import TINY, batch, disc_patch
from torch.nn import functional as F

from nudiff.errors import InputDataError
from nudiff.segmentation.augment import augment_pair
from nudiff.segmentation.pffnet.backbone_weights import freeze_body, load_backbone_weights, torchvision_name
from nudiff.segmentation.pffnet.config import PFFNetConfig
from nudiff.segmentation.pffnet.network import PFFNet, roi_box_loss
from nudiff.segmentation.pffnet.train import PFFNetTraining


def _inputs():
    return batch(disc_patch([(20, 20, 7), (44, 40, 9)]), disc_patch([(30, 14, 6)]))


def _rpn_and_samples(net: PFFNet, images, targets):
    """The proposals of the RPN and the RoI heads' sampled regression targets, as training
    computes them (the RoI sampling seeded)."""
    image_list, targets = net.transform(images, targets)
    pyramid = net.backbone(image_list.tensors)
    anchors = net.rpn.anchor_generator(image_list, list(pyramid.values()))
    proposals, _ = net.rpn(image_list, pyramid, targets)
    torch.manual_seed(0)
    sampled, _, labels, regression_targets = net.roi_heads.select_training_samples(
        [p.detach() for p in proposals], targets
    )
    return anchors, proposals, sampled, regression_targets


def test_box_arithmetic_stays_float32_under_bf16_autocast():
    """Under autocast the convolutions run in bf16; anchors, proposals and regression targets
    stay float32, and for the same proposals the targets equal a float32 run's exactly."""
    net = PFFNet(TINY, seed=0).train()
    images, targets = _inputs()
    torch.manual_seed(0)
    plain = _rpn_and_samples(net, images, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        anchors, proposals, sampled, regression = _rpn_and_samples(net, images, targets)
        # the deltas the heads hand on are float32 though their convolutions ran in bf16
        objectness, deltas = net.rpn.head([torch.randn(1, TINY.fpn_channels, 8, 8)])
        scores, box_deltas = net.roi_heads.box_predictor(torch.randn(4, TINY.box_head_dim))
    assert all(t.dtype == torch.float32 for t in (*objectness, *deltas, scores, box_deltas))
    assert all(a.dtype == torch.float32 for a in anchors)
    assert all(torch.equal(a, b) for a, b in zip(anchors, plain[0]))
    assert all(p.dtype == torch.float32 for p in (*proposals, *sampled, *regression))
    # the targets of given proposals do not depend on autocast
    torch.manual_seed(0)
    again = net.roi_heads.select_training_samples([p.detach() for p in plain[1]], net.transform(images, targets)[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        under = net.roi_heads.select_training_samples([p.detach() for p in plain[1]], net.transform(images, targets)[1])
    assert all(torch.equal(a, b) for a, b in zip(again[3], under[3]))


def test_a_bf16_training_step_gives_float32_box_losses_close_to_float32():
    net = PFFNet(TINY, seed=0).train()
    images, targets = _inputs()
    torch.manual_seed(0)
    plain = net(images, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        mixed = net(images, targets)
    for key in ("loss_rpn_box_reg", "loss_box_reg", "loss_classifier", "loss_objectness"):
        assert mixed[key].dtype == torch.float32
        assert torch.isfinite(mixed[key])
        assert mixed[key].item() == pytest.approx(plain[key].item(), rel=0.1, abs=1e-3), key


def test_rpn_ignores_anchors_that_cross_the_border():
    """With straddle_thresh 0 no anchor reaching outside the image is sampled; without the filter
    (torchvision) some are."""
    images, targets = _inputs()
    crossing = {}
    for thresh in (0.0, None):
        net = PFFNet(PFFNetConfig.from_dict({**TINY.to_dict(), "rpn_straddle_thresh": thresh}), seed=0).train()
        image_list, prepared = net.transform(images, targets)
        pyramid = list(net.backbone(image_list.tensors).values())
        net.rpn._image_sizes = list(image_list.image_sizes)
        anchors = net.rpn.anchor_generator(image_list, pyramid)
        labels, _ = net.rpn.assign_targets_to_anchors(anchors, prepared)
        height, width = image_list.image_sizes[0]
        outside = (anchors[0][:, :2] < 0).any(dim=1) | (anchors[0][:, 2] > width) | (anchors[0][:, 3] > height)
        assert outside.any()  # the check has anchors to look at
        crossing[thresh] = int((labels[0][outside] >= 0).sum())
    assert crossing[0.0] == 0 and crossing[None] > 0


def test_roi_box_loss_uses_the_reference_beta():
    labels = [torch.tensor([1, 0, 1])]
    targets = [torch.tensor([[0.0, 0, 0, 0], [5.0, 5, 5, 5], [0.5, 0, 0, 0]])]
    logits = torch.zeros(3, 2)
    deltas = torch.zeros(3, 8)
    deltas[0, 4:] = torch.tensor([2.0, 0, 0, 0])  # label 1's deltas, off by 2 in x
    _, loss_beta1 = roi_box_loss(logits, deltas, labels, targets, beta=1.0)
    _, loss_ninth = roi_box_loss(logits, deltas, labels, targets, beta=1 / 9)
    # positives 0 and 2: |2 - 0| -> 2 - 0.5 (beta 1); |0 - 0.5| -> 0.5^2 / 2 (beta 1); over 3 RoIs
    assert loss_beta1.item() == pytest.approx((1.5 + 0.125) / 3)
    assert loss_ninth.item() == pytest.approx((2 - 0.5 / 9 + 0.5 - 0.5 / 9) / 3)
    ce, _ = roi_box_loss(logits, deltas, labels, targets, beta=1.0)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, labels[0]).item())
    assert TINY.box_reg_beta == 1.0 and PFFNetConfig().rpn_straddle_thresh == 0.0


# ---------------------------------------------------------------- Detectron's R-101-GN weights


def detectron_blobs(body: torch.nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random blobs named and shaped as Detectron's GN ResNet pickles name them (res2..res5,
    branch1 for projections, branch2a/b/c, _w for convs, _gn_s / _gn_b for GroupNorm), plus the
    ImageNet classifier the body does not have."""
    blobs = {"conv1_w": None, "conv1_gn_s": None, "conv1_gn_b": None}
    for stage in range(1, 5):
        for block, module in enumerate(getattr(body, f"layer{stage}")):
            prefix = f"res{stage + 1}_{block}_"
            for branch in ("branch2a", "branch2b", "branch2c"):
                blobs.update({prefix + branch + suffix: None for suffix in ("_w", "_gn_s", "_gn_b")})
            if module.downsample is not None:
                blobs.update({prefix + "branch1" + suffix: None for suffix in ("_w", "_gn_s", "_gn_b")})
    state = body.state_dict()
    out = {name: rng.standard_normal(tuple(state[torchvision_name(name)].shape)).astype(np.float32) for name in blobs}
    out["pred_w"] = rng.standard_normal((1000, 16)).astype(np.float32)
    return out


def test_a_detectron_pickle_is_converted_bgr_to_rgb_and_freezes_stem_and_first_stage(tmp_path):
    net = PFFNet(TINY, seed=0)
    blobs = detectron_blobs(net.backbone.body, np.random.default_rng(0))
    path = tmp_path / "R-101-GN.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": blobs}, handle)
    frozen = load_backbone_weights(net, str(path), freeze_at=2)
    body = net.backbone.body
    assert frozen == ("conv1", "bn1", "layer1")
    # the stem reads RGB: Detectron's BGR input channels reversed
    assert torch.equal(body.conv1.weight, torch.from_numpy(blobs["conv1_w"][:, ::-1].copy()))
    assert torch.equal(body.bn1.weight, torch.from_numpy(blobs["conv1_gn_s"]))
    assert torch.equal(body.layer2[0].conv3.weight, torch.from_numpy(blobs["res3_0_branch2c_w"]))
    assert torch.equal(body.layer4[0].downsample[1].bias, torch.from_numpy(blobs["res5_0_branch1_gn_b"]))
    assert not any(p.requires_grad for m in (body.conv1, body.bn1, body.layer1) for p in m.parameters())
    assert all(p.requires_grad for m in (body.layer2, body.layer3, body.layer4) for p in m.parameters())


def test_a_detectron_pickle_missing_a_blob_or_of_another_shape_is_refused(tmp_path):
    net = PFFNet(TINY, seed=0)
    blobs = detectron_blobs(net.backbone.body, np.random.default_rng(0))
    short = {k: v for k, v in blobs.items() if k != "res4_0_branch2b_w"}
    for name, content in (("short.pkl", short), ("wide.pkl", {**blobs, "conv1_w": np.zeros((9, 3, 7, 7))})):
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(content, handle)
        with pytest.raises(InputDataError, match=name):
            load_backbone_weights(PFFNet(TINY, seed=0), str(tmp_path / name))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"blobs": {"conv1_w": Evil()}}, handle)
    with pytest.raises(InputDataError, match="evil.pkl"):
        load_backbone_weights(PFFNet(TINY, seed=0), str(tmp_path / "evil.pkl"))


def test_without_weights_nothing_is_frozen_and_freeze_at_zero_freezes_nothing(tmp_path):
    net = PFFNet(TINY, seed=0)
    assert load_backbone_weights(net, "none", freeze_at=2) == ()
    assert all(p.requires_grad for p in net.parameters())
    torch.save(net.backbone.body.state_dict(), tmp_path / "body.pt")
    assert load_backbone_weights(net, str(tmp_path / "body.pt"), freeze_at=0) == ()
    assert freeze_body(net.backbone.body, 1) == ("conv1", "bn1")


# ---------------------------------------------------------------- training data


def test_reference_flips_are_horizontal_and_vertical_only():
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    inst = np.arange(64, dtype=np.int32).reshape(8, 8)
    flipped = {
        inst.tobytes(): "none",
        inst[:, ::-1].tobytes(): "h",
        inst[::-1].tobytes(): "v",
        inst[::-1, ::-1].tobytes(): "hv",
    }
    seen = set()
    for seed in range(40):
        out_rgb, out_inst = augment_pair(
            rgb, inst, torch.Generator().manual_seed(seed), flips="hv", brightness=0, contrast=0, saturation=0, hue=0
        )
        assert out_inst.tobytes() in flipped  # never a transpose or a quarter turn
        assert np.array_equal(out_rgb[..., 0] // 3, out_inst)  # image and map moved together
        seen.add(flipped[out_inst.tobytes()])
    assert seen == {"none", "h", "v", "hv"}
    defaults = PFFNetTraining()
    assert (defaults.flips, defaults.skip_empty, defaults.freeze_at) == ("hv", True, 2)


@pytest.mark.parametrize(
    ("preset", "expected"), [("monuseg.yaml", "train"), ("kumar.yaml", "train"), ("monuseg-cpu.yaml", None)]
)
def test_the_paper_presets_train_pffnet_on_every_image_with_its_last_weights(preset, expected):
    """The reference trains PFF-Net on every training image and keeps the last weights: the paper
    presets say so; the CPU preset keeps the validation split every arm chooses weights on."""
    config = yaml.safe_load((Path(__file__).parents[1] / "config" / preset).read_text())
    assert config["segmentation"]["pffnet"]["training"].get("validation_images") == expected
    assert PFFNetTraining().validation_images == "select"
