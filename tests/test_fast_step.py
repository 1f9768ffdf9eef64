"""The fast training step (channels_last, fused AdamW, bf16 autocast) learns what float32 does.

Each run trains a tiny U-Net through ``run_training`` for a few steps on one fixed batch,
from the same seed, with the options of the run; the reference is the plain float32 step.

* ``channels_last`` and ``fused_adamw`` change only the order of float32 operations: the
  losses agree to 1e-6 and the weights to 1e-3 of their update (observed: 6e-5 and 9e-6).
* ``cpu_bf16`` rounds activations and gradients to bf16: the losses agree to 1e-3
  (observed 3e-5) and the weight update to 25% of its norm (observed 7-8% after 4 steps;
  AdamW's first steps normalise every gradient, so the rounding of near-zero gradients
  shows in full there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interrupt import sigterm_on_call
from tiny_models import TRAINING_NET

import nudiff.diffusion.training as training
from nudiff.diffusion import UNet, UNetConfig, l_simple, linear_schedule
from nudiff.diffusion.training import DiffusionTraining, make_optimizer, prepare_for_training, to_layout
from nudiff.training.checkpoint import CheckpointStore
from nudiff.training.loop import TrainingInterrupted, run_training

STEPS = 4


def train_steps(tmp_path, kind: str, **options):
    cfg = DiffusionTraining(
        iterations=STEPS, lr=2e-3, weight_decay=0.0, ema_decay=0.9, checkpoint_every=10_000, **options
    )
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{**TRAINING_NET, "condition_channels": 3 if kind == "image" else 0}))
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prepare_for_training(model, cfg, "cpu")
    optimizer = make_optimizer(model, cfg)
    data = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 3, 32, 32, generator=data) * 2 - 1
    cond = torch.rand(2, 3, 32, 32, generator=data).sign()
    schedule = linear_schedule(50)

    def step(net, generator):
        c = to_layout(cond, "cpu", cfg) if kind == "image" else None
        return l_simple(net, to_layout(x0, "cpu", cfg), schedule, generator=generator, cond=c)

    result = run_training(
        model,
        optimizer,
        step,
        cfg.loop_settings(),
        generator=torch.Generator().manual_seed(0),
        store=CheckpointStore(tmp_path / "_".join(options) or "ref", keep=1),
        fingerprint={},
    )
    weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    ema = {k: v.detach().clone() for k, v in result.ema.module.state_dict().items()}
    return result.history["loss"].to_numpy(), init, weights, ema


def relative_update_difference(weights, reference, init) -> float:
    """||w - w_ref|| / ||w_ref - w_0|| over all floating-point tensors."""
    keys = [k for k in reference if reference[k].is_floating_point()]
    diff = sum(((weights[k] - reference[k]).double() ** 2).sum() for k in keys) ** 0.5
    update = sum(((reference[k] - init[k]).double() ** 2).sum() for k in keys) ** 0.5
    return float(diff / update)


@pytest.fixture(scope="module", params=["structure", "image"])
def reference(request, tmp_path_factory):
    kind = request.param
    return kind, train_steps(tmp_path_factory.mktemp("ref"), kind)


@pytest.mark.parametrize(
    "options",
    [{"channels_last": True}, {"fused_adamw": True}, {"channels_last": True, "fused_adamw": True}],
    ids=["channels_last", "fused_adamw", "both"],
)
def test_layout_and_fused_optimiser_match_float32(tmp_path, reference, options):
    kind, (ref_loss, init, ref_weights, ref_ema) = reference
    loss, _, weights, ema = train_steps(tmp_path, kind, **options)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=0)
    assert relative_update_difference(weights, ref_weights, init) < 1e-3
    assert relative_update_difference(ema, ref_ema, init) < 1e-3
    if options.get("channels_last"):
        conv = next(p for p in _rebuilt(kind, weights).parameters() if p.ndim == 4)
        assert conv.is_contiguous()  # a saved state dict loads into a plain (contiguous) model


def _rebuilt(kind, weights):
    model = UNet(UNetConfig(**{**TRAINING_NET, "condition_channels": 3 if kind == "image" else 0}))
    model.load_state_dict(weights)
    return model


def test_bf16_fast_path_learns_the_same_beyond_rounding(tmp_path, reference):
    kind, (ref_loss, init, ref_weights, ref_ema) = reference
    loss, _, weights, ema = train_steps(tmp_path, kind, cpu_bf16=True, channels_last=True, fused_adamw=True)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-3, atol=0)
    assert relative_update_difference(weights, ref_weights, init) < 0.25
    assert relative_update_difference(ema, ref_ema, init) < 0.25
    assert all(v.dtype == ref_weights[k].dtype for k, v in weights.items())  # weights stay float32


def test_fast_path_resumes_to_the_same_weights(tmp_path, tiny_labelled_csv, monkeypatch):
    fast = {"cpu_bf16": True, "channels_last": True, "fused_adamw": True}
    settings = {
        "iterations": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "ema_decay": 0.9,
        "checkpoint_every": 2,
        "log_every": 2,
        "seed": 0,
        **fast,
    }

    def train(out_dir):
        return training.train_diffusion_model(
            "image",
            tiny_labelled_csv,
            out_dir / "image.pt",
            network=TRAINING_NET,
            training=settings,
            schedule={"timesteps": 50},
            checkpoint_dir=out_dir / "ckpt",
        )

    train(tmp_path / "reference")
    original = training.l_simple
    monkeypatch.setattr(training, "l_simple", sigterm_on_call(original, 3))
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "killed")
    monkeypatch.setattr(training, "l_simple", original)
    assert len(train(tmp_path / "killed")) == 4
    reference = torch.load(tmp_path / "reference" / "image.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "image.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, value in reference[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs"
