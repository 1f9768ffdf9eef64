"""Hover-Net: shapes in both modes, parameter parity with MONAI, losses with hand-computed values,
encoder weights (ImageNet mapping on a random torchvision ResNet50, never downloaded)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
from torch.nn import functional as F

from nudiff.errors import InputDataError
from nudiff.segmentation.hovernet import (
    HoVerNet,
    HoVerNetConfig,
    center_crop,
    hovernet_loss,
    hv_gradients,
    load_encoder_weights,
    msge_loss,
    sobel_kernels,
    soft_dice_loss,
    state_dict_from_torchvision_resnet,
    structure_to_targets,
)

# Narrow but with the paper's dense-unit counts and kernels, so output sizes are the paper's.
SMALL = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True)


def build(config: HoVerNetConfig, seed: int = 0) -> HoVerNet:
    return HoVerNet(config, generator=torch.Generator().manual_seed(seed))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- shapes and configuration


@pytest.mark.parametrize(("mode", "size", "expected"), [("fast", 256, 164), ("original", 270, 80)])
def test_valid_mode_output_sizes_are_the_papers(mode, size, expected):
    # 256 -> 164 (fast) and 270 -> 80 (original): Graham et al. 2019 / hover_net README.
    config = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), mode=mode)
    assert config.output_size(size) == expected
    with torch.no_grad():
        out = build(config).eval()(torch.rand(1, 3, size, size))
    assert set(out) == {"np", "hv"}
    assert out["np"].shape == (1, 2, expected, expected)
    assert out["hv"].shape == (1, 2, expected, expected)


@pytest.mark.parametrize("mode", ["fast", "original"])
def test_same_padding_keeps_the_input_size(mode):
    config = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True, mode=mode)
    with torch.no_grad():
        out = build(config).eval()(torch.rand(2, 3, 48, 40))
    assert out["np"].shape == (2, 2, 48, 40) and out["hv"].shape == (2, 2, 48, 40)


def test_type_branch_only_with_types():
    with torch.no_grad():
        out = build(HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True, n_types=4))(
            torch.rand(1, 3, 32, 32)
        )
    assert list(out) == ["np", "hv", "tp"] and out["tp"].shape == (1, 4, 32, 32)
    assert "tp" not in build(SMALL).decoders


def test_input_sizes_the_network_cannot_take_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        HoVerNetConfig().output_size(250)
    with pytest.raises(ValueError, match="6 more than a multiple of 8"):
        HoVerNetConfig(mode="original").output_size(256)
    with pytest.raises(ValueError, match="too small"):
        HoVerNetConfig().output_size(64)  # fast valid decoder needs > 64 px
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build(SMALL)(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mode": "slow"}, "mode"),
        ({"n_types": 1}, "n_types"),
        ({"encoder_blocks": (3, 4, 6)}, "encoder_blocks"),
        ({"encoder_widths": (256, 512, 1024, 2046)}, "encoder_widths"),
        ({"dense_growth": 30}, "dense_growth"),
        ({"decoder_units": (16, 4)}, "decoder_units"),
        ({"stem_channels": 0}, "stem_channels"),
        ({"same_padding": 1}, "same_padding"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        HoVerNetConfig(**changes)


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    config = HoVerNetConfig.scaled(1 / 4, n_types=5, mode="original")
    assert HoVerNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="widht"):
        HoVerNetConfig.from_dict({**config.to_dict(), "widht": 2})


def test_scaled_config_divides_every_width():
    config = HoVerNetConfig.scaled(1 / 8)
    assert config.encoder_widths == (32, 64, 128, 256)
    assert (config.stem_channels, config.dense_growth, config.dense_bottleneck, config.head_channels) == (8, 4, 16, 8)
    assert HoVerNetConfig.scaled(1.0) == HoVerNetConfig()


def test_same_generator_seed_builds_the_same_network():
    a, b, c = build(SMALL, 3), build(SMALL, 3), build(SMALL, 4)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), key
    assert not torch.equal(a.encoder.stem.conv.weight, c.encoder.stem.conv.weight)


# ---------------------------------------------------------------- faithfulness to the reference


@pytest.mark.parametrize(("mode", "n_types"), [("fast", 0), ("original", 5)])
def test_parameters_match_monai_hovernet(mode, n_types):
    monai_nets = pytest.importorskip("monai.networks.nets")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = HoVerNet(HoVerNetConfig(mode=mode, n_types=n_types))
        ref = monai_nets.HoVerNet(mode=mode, out_classes=n_types, np_out_channels=2)
    assert n_params(ours) == n_params(ref)
    # and the same multiset of tensor shapes, not only the same total
    assert sorted(tuple(p.shape) for p in ours.parameters()) == sorted(tuple(p.shape) for p in ref.parameters())


def test_faithful_fast_model_has_hovernets_size():
    # 33,625,412 parameters = MONAI's HoVerNet(mode="fast", out_classes=0) (counted with monai 1.6).
    with torch.device("meta"):
        assert n_params(HoVerNet()) == 33_625_412


# ---------------------------------------------------------------- losses

H = W = 16


def _square_targets() -> dict[str, torch.Tensor]:
    """One 8x8 nucleus (rows/cols 4..11) whose hv maps are ramps from -1 to 1 inside it."""
    semantic = torch.zeros(1, H, W, dtype=torch.long)
    semantic[:, 4:12, 4:12] = 1
    ramp = (torch.arange(W, dtype=torch.float32) - 7.5) / 3.5
    hv = torch.zeros(1, 2, H, W)
    hv[:, 0] = ramp[None, :] * semantic[0]
    hv[:, 1] = ramp[:, None] * semantic[0]
    return {"np": semantic, "hv": hv}


def _logits_for(semantic: torch.Tensor, margin: float) -> torch.Tensor:
    onehot = F.one_hot(semantic, 2).permute(0, 3, 1, 2).float()
    return margin * (2 * onehot - 1)  # +margin on the true class, -margin on the other


def test_perfect_prediction_gives_zero_dice_mse_msge_and_tiny_ce():
    targets = _square_targets()
    # margin 50: softmax saturates to exactly 0/1 in float32, so Dice is exactly 0
    outputs = {"np": _logits_for(targets["np"], 50.0), "hv": targets["hv"].clone()}
    total, terms = hovernet_loss(outputs, targets)
    assert terms["np_dice"].item() == 0.0
    assert terms["hv_mse"].item() == 0.0 and terms["hv_msge"].item() == 0.0
    # margin 5: CE = -log softmax = log(1 + exp(-10)) at every pixel (float64: 4.5e-5 is below
    # float32's resolution around the logit 5)
    outputs["np"] = _logits_for(targets["np"], 5.0).double()
    _, terms = hovernet_loss(outputs, targets)
    assert terms["np_ce"].item() == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-4)


def test_constant_wrong_prediction_has_hand_computed_terms():
    targets = _square_targets()
    outputs = {"np": torch.zeros(1, 2, H, W), "hv": torch.zeros(1, 2, H, W)}
    total, terms = hovernet_loss(outputs, targets)
    # CE with equal logits is log 2 at every pixel.
    assert terms["np_ce"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    # Dice with p = 0.5 everywhere, n1 = 64 nucleus and n0 = 192 background pixels, s = 1e-3:
    # class c: 1 - (2 * 0.5 * n_c + s) / (0.5 * 256 + n_c + s)
    s, n = 1e-3, 256
    dice = sum(1 - (n_c + s) / (0.5 * n + n_c + s) for n_c in (64, 192))
    assert terms["np_dice"].item() == pytest.approx(dice, rel=1e-5)
    # MSE: each ramp squared sums to 8 * 2 * (0.5^2 + 1.5^2 + 2.5^2 + 3.5^2) / 3.5^2 = 192 / 7,
    # two channels over 2 * 256 values: (384 / 7) / 512 = 3 / 28.
    assert terms["hv_mse"].item() == pytest.approx(3 / 28, rel=1e-6)
    # weights 1, 1, 2, 1 by default
    expected = terms["np_ce"] + terms["np_dice"] + 2 * terms["hv_mse"] + terms["hv_msge"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total_w, _ = hovernet_loss(outputs, targets, np_ce=0, np_dice=0, hv_mse=1, hv_msge=0)
    assert total_w.item() == pytest.approx(3 / 28, rel=1e-6)


def test_sobel_kernel_gives_twelve_times_the_slope_and_the_right_axes():
    kx, ky = sobel_kernels(5)
    # hover_net's kernel: dx / (dx^2 + dy^2); e.g. at (dy=0, dx=2) it is 1/2, at (dy=1, dx=1) 1/2
    assert kx[2, 4].item() == pytest.approx(0.5) and kx[1, 3].item() == pytest.approx(0.5)
    assert torch.equal(ky, kx.T)
    c = 0.1
    x = torch.arange(12.0)
    hv = torch.stack([c * x[None, :].expand(12, 12), c * x[None, :].expand(12, 12)])[None]  # both vary along x
    grad = hv_gradients(hv)[0, :, 2:-2, 2:-2]  # away from the zero-padded border
    # d/dx of channel 0: sum over the 24 neighbours of dx^2 / (dx^2 + dy^2) = 12, times the slope
    assert torch.allclose(grad[0], torch.full_like(grad[0], 12 * c))
    # d/dy of channel 1, which does not vary along y
    assert torch.allclose(grad[1], torch.zeros_like(grad[1]), atol=1e-6)


def test_msge_is_averaged_over_nucleus_pixels_only():
    c = 0.1
    x = torch.arange(12.0)
    target = torch.stack([c * x[None, :].expand(12, 12), c * x[:, None].expand(12, 12)])[None]
    focus = torch.zeros(1, 12, 12)
    focus[:, 4:8, 4:8] = 1  # interior: both gradients are exactly 12 c there
    pred = torch.zeros_like(target)
    assert msge_loss(pred, target, focus).item() == pytest.approx((12 * c) ** 2, rel=1e-5)
    # errors outside the focus do not count
    pred_outside = target.clone()
    pred_outside[..., :2, :] = 5.0
    assert msge_loss(pred_outside, target, focus).item() == pytest.approx(0.0, abs=1e-10)
    assert msge_loss(pred, target, torch.zeros_like(focus)).item() == 0.0


def test_targets_are_centre_cropped_to_the_output():
    targets = _square_targets()
    big = {k: F.pad(v.float(), (2, 2, 2, 2)).to(v.dtype) for k, v in targets.items()}  # 20x20
    outputs = {"np": torch.zeros(1, 2, H, W), "hv": torch.zeros(1, 2, H, W)}
    _, terms_big = hovernet_loss(outputs, big)
    _, terms = hovernet_loss(outputs, targets)
    for name in terms:
        assert terms_big[name].item() == pytest.approx(terms[name].item(), rel=1e-6), name
    grid = torch.arange(30).reshape(5, 6)
    assert torch.equal(center_crop(grid, (2, 3)), grid[1:3, 1:4])  # odd margins: extra at the end
    with pytest.raises(ValueError, match="centre-crop"):
        center_crop(grid, (6, 6))


def test_structure_to_targets_and_type_terms():
    structure = torch.zeros(2, 3, 8, 8)
    structure[:, 0, 2:6, 2:6] = 1
    structure[:, 1] = 0.5
    targets = structure_to_targets(structure)
    assert targets["np"].dtype == torch.long and torch.equal(targets["hv"][:, 0], structure[:, 1])
    with pytest.raises(ValueError, match="semantic"):
        structure_to_targets(structure * 2 - 1)
    # types: 3 classes, constant logits -> CE = log 3
    targets["tp"] = targets["np"] * 2
    outputs = {"np": torch.zeros(2, 2, 8, 8), "hv": torch.zeros(2, 2, 8, 8), "tp": torch.zeros(2, 3, 8, 8)}
    _, terms = hovernet_loss(outputs, targets)
    assert terms["tp_ce"].item() == pytest.approx(math.log(3.0), rel=1e-6)
    assert soft_dice_loss(outputs["tp"], targets["tp"]).item() == pytest.approx(terms["tp_dice"].item())
    with pytest.raises(ValueError, match="tp"):
        hovernet_loss({k: v for k, v in outputs.items() if k != "tp"}, targets)


def test_gradients_reach_every_parameter():
    model = build(HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 2, 1, 1), same_padding=True, n_types=3))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    structure = torch.zeros(2, 3, 32, 32)
    structure[:, 0, 8:20, 6:18] = 1
    structure[:, 1:] = torch.rand(2, 2, 32, 32, generator=gen) * 2 - 1
    targets = structure_to_targets(structure)
    targets["tp"] = targets["np"] * 2
    total, _ = hovernet_loss(model(x), targets)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- encoder weights


def test_encoder_weights_none_and_from_file(tmp_path):
    a, b = build(SMALL, 0), build(SMALL, 1)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    assert load_encoder_weights(b, "none") == ()
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    path = tmp_path / "encoder.pt"
    torch.save(a.encoder.state_dict(), path)
    loaded = load_encoder_weights(b, path)
    assert len(loaded) == len(a.encoder.state_dict())
    for key, value in a.encoder.state_dict().items():
        assert torch.equal(b.encoder.state_dict()[key], value), key
    assert torch.equal(b.bottleneck.weight, before["bottleneck.weight"])  # decoder side untouched
    with pytest.raises(InputDataError, match="missing.pt"):
        load_encoder_weights(b, tmp_path / "missing.pt")
    torch.save(build(HoVerNetConfig.scaled(1 / 4, same_padding=True)).encoder.state_dict(), path)
    with pytest.raises(InputDataError, match="encoder.pt"):
        load_encoder_weights(b, path)


def test_imagenet_weights_need_the_resnet50_encoder():
    with pytest.raises(ValueError, match="encoder_blocks"):
        load_encoder_weights(build(SMALL), "imagenet")


def test_missing_imagenet_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with torch.device("meta"):
        model = HoVerNet()
    with pytest.raises(InputDataError) as info:
        load_encoder_weights(model, "imagenet")
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "never" in message and "IMAGENET1K_V1" in message


def test_imagenet_mapping_on_a_random_torchvision_resnet50(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference, tmp_path / "checkpoints" / "resnet50-0676ba61.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    model = HoVerNet(generator=torch.Generator().manual_seed(0))
    preact_before = model.encoder.stages[1].units[2].preact_bn.weight.clone()
    loaded = load_encoder_weights(model, "imagenet")
    # 53 convs (stem, 16 units x 3, 4 projections) + 33 BNs (stem, 16 units x 2) x 5 tensors
    assert len(loaded) == 53 + 33 * 5
    enc = model.encoder.state_dict()
    pairs = {
        "stem.conv.weight": "conv1.weight",
        "stem.bn.running_var": "bn1.running_var",
        "stages.0.shortcut.weight": "layer1.0.downsample.0.weight",
        "stages.1.units.2.conv2.weight": "layer2.2.conv2.weight",
        "stages.2.units.5.bn1.bias": "layer3.5.bn1.bias",
        "stages.3.units.0.conv3.weight": "layer4.0.conv3.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(enc[ours], reference[theirs]), ours
    # pre-activation BNs have no ResNet50 counterpart: left as initialised (weight 1)
    assert torch.equal(model.encoder.stages[1].units[2].preact_bn.weight, preact_before)
    assert set(state_dict_from_torchvision_resnet(reference)) == set(loaded)
    with pytest.raises(ValueError, match="missing"):
        state_dict_from_torchvision_resnet({k: v for k, v in reference.items() if not k.startswith("layer4")})
