"""The shared training loop: resume after a stop gives the weights of an uninterrupted run."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from nudiff.training.checkpoint import CheckpointStore
from nudiff.training.loop import LoopSettings, TrainingInterrupted, run_training

DATA = torch.linspace(-1, 1, 64).reshape(16, 4)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # Dropout makes the global RNG matter, so its state must be restored too.
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4))


def make_step(stop_at: int | None = None):
    calls = {"n": 0}

    def step(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == stop_at:
            signal.raise_signal(signal.SIGTERM)  # what Slurm sends to a preempted job
        idx = torch.randint(0, len(DATA), (4,), generator=generator)
        noise = torch.randn(4, 4, generator=generator)
        x = DATA[idx]
        return ((model(x + 0.1 * noise) - x) ** 2).mean()

    return step


def train(tmp_path, step_fn, iterations=20, fingerprint=None):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    settings = LoopSettings(iterations=iterations, checkpoint_every=5, log_every=5, ema_decay=0.9)
    return run_training(
        model,
        opt,
        step_fn,
        settings,
        generator=torch.Generator().manual_seed(1),
        store=CheckpointStore(tmp_path / "ckpt", keep=2),
        fingerprint=fingerprint or {"run": "a"},
    )


def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
    reference = train(tmp_path / "ref", make_step())

    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "run", make_step(stop_at=8))
    assert CheckpointStore(tmp_path / "run" / "ckpt").steps()[-1] == 8
    resumed = train(tmp_path / "run", make_step())

    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(reference.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history["step"].tolist() == list(range(1, 21))
    assert resumed.history["loss"].tolist() == reference.history["loss"].tolist()


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    train(tmp_path, make_step(), iterations=23)
    # saved at 5, 10, 15, 20 (not at the last step, which the caller writes as the model)
    assert CheckpointStore(tmp_path / "ckpt").steps() == [15, 20]


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
    train(tmp_path, make_step(), iterations=12)
    fresh = train(tmp_path, make_step(), iterations=12, fingerprint={"run": "b"})
    assert fresh.history["step"].tolist() == list(range(1, 13))  # started from step 1


def test_loss_falls(tmp_path):
    result = train(tmp_path, make_step(), iterations=60)
    losses = result.history["loss"]
    assert losses.iloc[-10:].mean() < 0.5 * losses.iloc[:10].mean()


def test_nan_loss_is_reported(tmp_path):
    def bad(model, generator):
        return model(DATA).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="step 1"):
        train(tmp_path, bad)
