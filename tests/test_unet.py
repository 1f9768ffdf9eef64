"""Tests of the U-Net and its blocks (tiny networks on CPU; paper size on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import TINY, tiny_unet

from nudiff.diffusion import UNet, UNetConfig, count_parameters
from nudiff.diffusion.blocks import SPADE, AttentionBlock, CondResBlock, ResBlock
from nudiff.errors import ConfigError


def structure(batch: int, size: int, seed: int) -> torch.Tensor:
    """A structure-like condition: semantic channel in {-1, +1}, two maps in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    semantic = torch.where(torch.rand(batch, 1, size, size, generator=gen) > 0.5, 1.0, -1.0)
    maps = torch.rand(batch, 2, size, size, generator=gen) * 2 - 1
    return torch.cat([semantic, maps], dim=1)


@pytest.mark.parametrize(
    "overrides, size",
    [
        ({}, 32),
        ({}, 16),
        ({"condition_channels": 3}, 32),
        ({"resblock_updown": False, "condition_channels": 3}, 16),
        ({"channels": (8, 16, 16), "attention_levels": (1, 2), "head_channels": 8}, 16),
        ({"in_channels": 1, "out_channels": 2, "res_blocks": 2, "dropout": 0.1}, 32),
    ],
)
def test_output_shape(overrides, size):
    model = tiny_unet(**overrides)
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, size, size)
    cond = structure(2, size, 0)[:, : cfg.condition_channels] if cfg.condition_channels else None
    out = model(x, torch.tensor([0, 999]), cond)
    assert out.shape == (2, cfg.out_channels, size, size)
    assert torch.isfinite(out).all()


def test_fresh_model_predicts_zero():
    # the head conv is zero-initialised (guided-diffusion), so an untrained net outputs 0
    model = UNet(UNetConfig(**TINY, condition_channels=3))
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([5, 50]), structure(2, 16, 1))
    assert torch.equal(out, torch.zeros_like(out))


def test_spade_condition_drives_output_but_not_encoder():
    model = tiny_unet(condition_channels=3)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 700])
    cond_a, cond_b = structure(2, 16, 1), structure(2, 16, 2)
    encoder_outputs: list[torch.Tensor] = []
    record = lambda module, inputs, output: encoder_outputs.append(output)  # noqa: E731
    hooks = [block.register_forward_hook(record) for block in model.encoder]
    with torch.no_grad():
        out_a = model(x, t, cond_a)
        enc_a, encoder_outputs[:] = list(encoder_outputs), []
        out_a_again = model(x, t, cond_a.clone())
        encoder_outputs.clear()
        out_b = model(x, t, cond_b)
        enc_b = list(encoder_outputs)
    for h in hooks:
        h.remove()
    assert torch.equal(out_a, out_a_again)
    assert (out_a - out_b).abs().max() > 1e-3
    assert len(enc_a) == len(model.encoder) == len(enc_b)
    assert all(torch.equal(a, b) for a, b in zip(enc_a, enc_b))


def test_encoder_identical_to_unconditional():
    cond_model, plain = UNet(UNetConfig(**TINY, condition_channels=3)), UNet(UNetConfig(**TINY))
    assert not any(isinstance(m, SPADE) for m in cond_model.encoder.modules())
    shapes = lambda m: [tuple(p.shape) for p in m.encoder.parameters()]  # noqa: E731
    assert shapes(cond_model) == shapes(plain)
    assert not any(isinstance(m, CondResBlock) for m in cond_model.encoder.modules())
    decoder_res = [m for m in cond_model.decoder.modules() if isinstance(m, ResBlock)]
    assert decoder_res and all(isinstance(m, CondResBlock) for m in decoder_res)
    assert all(isinstance(m.in_norm, SPADE) and isinstance(m.out_norm, SPADE) for m in decoder_res)
    assert all(isinstance(m, CondResBlock) for m in cond_model.middle if isinstance(m, ResBlock))
    assert not any(isinstance(m, (SPADE, CondResBlock)) for m in plain.modules())


def test_null_condition_is_zeros_and_accepted():
    model = tiny_unet(condition_channels=3)
    cond = structure(2, 16, 3)
    null = model.null_condition(cond)
    assert torch.equal(null, torch.zeros_like(cond))
    # a real structure never has a 0 in its semantic channel (it is exactly -1 or +1)
    assert not (cond[:, 0] == 0).any()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 300])
    with torch.no_grad():
        assert (model(x, t, null) - model(x, t, cond)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="unconditional"):
        tiny_unet().null_condition(cond)


def test_forward_validates_inputs():
    cond_model, plain = tiny_unet(condition_channels=3), tiny_unet()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([1])
    with pytest.raises(ValueError, match="cond"):
        cond_model(x, t, None)
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, structure(1, 16, 0))
    with pytest.raises(ValueError, match="multiples of 2"):
        plain(torch.randn(1, 3, 15, 16), t)
    with pytest.raises(ValueError, match="t must"):
        plain(x, torch.tensor([1, 2]))


def test_blocks_keep_shapes_and_resample():
    emb = torch.randn(2, 12)
    x = torch.randn(2, 8, 8, 8)
    cond = structure(2, 32, 4)
    assert ResBlock(8, 12, 16, groups=4)(x, emb).shape == (2, 16, 8, 8)
    assert ResBlock(8, 12, groups=4, resample="down")(x, emb).shape == (2, 8, 4, 4)
    up = CondResBlock(8, 12, 16, groups=4, condition_channels=3, resample="up")
    assert up(x, emb, cond).shape == (2, 16, 16, 16)
    assert AttentionBlock(8, head_channels=4, groups=4)(x).shape == x.shape
    with pytest.raises(ValueError, match="condition_channels"):
        CondResBlock(8, 12, condition_channels=0)


def test_spade_modulates_normalised_features():
    # with gamma = beta = 0 SPADE is a parameter-free GroupNorm; a bias of 1 in beta adds 1
    spade = SPADE(4, 3, groups=2, hidden_channels=5)
    torch.nn.init.zeros_(spade.gamma.weight), torch.nn.init.zeros_(spade.gamma.bias)
    torch.nn.init.zeros_(spade.beta.weight), torch.nn.init.ones_(spade.beta.bias)
    x = torch.randn(2, 4, 8, 8)
    expected = torch.nn.functional.group_norm(x, 2) + 1
    assert torch.allclose(spade(x, structure(2, 16, 5)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [
        ("groups", 5),
        ("attention_levels", (2,)),
        ("head_channels", 24),
        ("dropout", 1.0),
        ("res_blocks", 0),
        ("condition_channels", -1),
        ("channels", ()),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        UNetConfig(**{**TINY, field: value})


def test_config_dict_round_trip():
    cfg = UNetConfig(**TINY, condition_channels=3, dropout=0.1)
    restored = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    with pytest.raises(ConfigError, match="colour"):
        UNetConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_paper_size_parameter_counts():
    with torch.device("meta"):
        plain = UNet(UNetConfig())
        learn_sigma = UNet(UNetConfig(out_channels=6))
        cond = UNet(UNetConfig(condition_channels=3))
    # guided-diffusion's 256x256 unconditional model has the same layout with 6 output
    # channels (learn_sigma) and 552,814,086 parameters (its fp32 checkpoint is
    # 2,211,383,297 bytes = 4 bytes x that count + 126,953 bytes of pickle overhead)
    assert count_parameters(learn_sigma) == 552_814_086
    # 3 output channels drop 256 * 3 * 9 weights + 3 biases from the head conv
    assert count_parameters(plain) == 552_814_086 - (256 * 3 * 9 + 3)
    # the conditional net differs only in its norms: each SPADE(C) replaces GroupNorm's 2C
    # affine parameters by conv(3->128) + 2 conv(128->C), all 3x3 with biases
    spades = [m for m in cond.modules() if isinstance(m, SPADE)]
    assert len(spades) == 2 * (2 + 6 * 3 + 5)  # 2 norms x (middle + decoder + up blocks)
    extra = sum((3 * 128 * 9 + 128) + 2 * (128 * c * 9 + c) - 2 * c for c in (s.gamma.out_channels for s in spades))
    assert count_parameters(cond) == count_parameters(plain) + extra


@pytest.mark.parametrize("overrides", [{}, {"condition_channels": 3, "dropout": 0.3}])
def test_gradient_checkpointing_gives_the_same_gradients(overrides):
    size = 16
    x, t = torch.randn(2, 3, size, size), torch.tensor([3, 700])
    cond = structure(2, size, 4) if overrides.get("condition_channels") else None
    grads = {}
    for enabled in (False, True):
        model = tiny_unet(**overrides).train().set_gradient_checkpointing(enabled)
        torch.manual_seed(7)  # the same dropout masks in both runs (and in the recomputation)
        model(x, t, cond).pow(2).mean().backward()
        grads[enabled] = {name: p.grad for name, p in model.named_parameters()}
    for name, grad in grads[False].items():
        assert torch.equal(grad, grads[True][name]), name


def test_gradient_checkpointing_recomputes_blocks_in_training_only():
    model = tiny_unet(condition_channels=3).set_gradient_checkpointing(True)
    blocks = [*model.encoder, model.middle, *model.decoder]
    calls = {"n": 0}

    def counting(forward):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            return forward(*args, **kwargs)

        return wrapper

    for block in blocks:  # (forward hooks are not run when checkpoint recomputes a block)
        block.forward = counting(block.forward)
    x, t, cond = torch.randn(1, 3, 16, 16), torch.tensor([9]), structure(1, 16, 5)

    model.train()(x, t, cond).sum().backward()
    assert calls["n"] == 2 * len(blocks)  # forward, then again in backward
    calls["n"] = 0
    with torch.no_grad():
        model(x, t, cond)  # sampling: nothing to recompute
    assert calls["n"] == len(blocks)
    calls["n"] = 0
    model.eval()(x, t, cond).sum().backward()
    assert calls["n"] == len(blocks)
