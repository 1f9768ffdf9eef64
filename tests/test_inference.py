"""Tiled Hover-Net inference: stitched tiles equal one pass where the network allows it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig
from nudiff.segmentation.hovernet.inference import (
    predict_instances,
    predict_structure,
    tile_geometry,
)
from nudiff.structure import HORIZONTAL, SEMANTIC, VERTICAL

torch.set_num_threads(1)

# A shallow decoder keeps the receptive field small: radius 28 px up/left and 34 px down/right
# (measured from the input gradient of one output pixel of this config), so margin 40 suffices.
SHALLOW = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True, decoder_units=(2, 1))
FAST = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), mode="fast")  # valid padding, 256 -> 164


def build(config: HoVerNetConfig) -> HoVerNet:
    model = HoVerNet(config, generator=torch.Generator().manual_seed(0))
    # non-trivial BN statistics, so eval mode is not the identity
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
            module.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    return model.eval()


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def direct(model: HoVerNet, rgb: np.ndarray) -> np.ndarray:
    """One forward pass over the whole array, as a structure (H', W', 3)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        out = model(x)
    return np.stack([out["np"].softmax(1)[0, 1].numpy(), out["hv"][0, 0].numpy(), out["hv"][0, 1].numpy()], axis=-1)


def test_receptive_field_of_the_test_network_is_within_the_margin():
    # guards the premise of the next test: an output pixel sees at most 40 px either way
    model = build(SHALLOW)
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    model(x)["np"][0, 1, 80, 80].backward()
    rows = torch.nonzero(x.grad[0].abs().sum(0).sum(1) > 0)[:, 0]
    assert 80 - rows.min().item() <= 40 and rows.max().item() - 80 <= 40


def test_tiled_equals_one_pass_over_the_padded_image():
    model = build(SHALLOW)
    rgb = image(300, 260)
    tile, margin = 160, 40  # keep 80 px per tile: steps are multiples of the total stride 8
    tiled = predict_structure(model, rgb, tile=tile, margin=margin, batch_size=3)
    # The tiling pads by reflection: margin before, and after up to 4 x 80 + 2 x 40 = 400 px.
    padded = np.pad(rgb, ((40, 400 - 40 - 300), (40, 400 - 40 - 260), (0, 0)), mode="reflect")
    whole = direct(model, padded)[40 : 40 + 300, 40 : 40 + 260]
    assert tiled.shape == (300, 260, 3) and tiled.dtype == np.float32
    # float32 conv results differ by ~1e-5 between input sizes; a misplaced tile would differ by O(1)
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-4)
    assert np.abs(tiled[:, 1:] - whole[:, :-1]).max() > 0.1


def test_an_image_that_fits_one_tile_is_one_pass():
    model = build(SHALLOW)
    rgb = image(64, 64, seed=1)
    np.testing.assert_allclose(
        predict_structure(model, rgb, tile=64, margin=0), direct(model, rgb), rtol=1e-4, atol=1e-4
    )


def test_valid_padding_model_uses_hovernets_mirror_padding():
    model = build(FAST)
    assert tile_geometry(model, 256) == (46, 164)  # (256 - 164) / 2 on each side
    rgb = image(164, 164, seed=2)  # exactly one output tile
    expected = direct(model, np.pad(rgb, ((46, 46), (46, 46), (0, 0)), mode="reflect"))
    np.testing.assert_allclose(predict_structure(model, rgb, tile=256), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [SHALLOW, FAST], ids=["same", "valid"])
def test_any_image_size_gives_a_full_structure(config):
    model = build(config).train()
    rgb = image(300, 260, seed=3)
    tile = 256 if config is FAST else 128
    structure = predict_structure(model, rgb, tile=tile, batch_size=4)
    assert structure.shape == (300, 260, 3) and structure.dtype == np.float32
    assert np.isfinite(structure).all()
    assert structure[..., SEMANTIC].min() >= 0 and structure[..., SEMANTIC].max() <= 1
    assert structure[..., [HORIZONTAL, VERTICAL]].std() > 0
    assert model.training  # the caller's mode is restored
    inst = predict_instances(model, rgb, tile=tile, watershed={"min_object_size": 5})
    assert inst.shape == (300, 260) and inst.dtype == np.int32 and inst.min() >= 0


def test_bad_tiles_and_margins_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        tile_geometry(build(SHALLOW), 100)
    with pytest.raises(ValueError, match="margin"):
        tile_geometry(build(SHALLOW), 64, 32)  # nothing left to keep
    with pytest.raises(ValueError, match="valid-padding"):
        tile_geometry(build(FAST), 256, 10)
    with pytest.raises(ValueError, match="uint8"):
        predict_structure(build(SHALLOW), np.zeros((64, 64, 3)), tile=64)
