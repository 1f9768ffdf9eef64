"""Training the diffusion models through the workflow's entry point: outputs, resume, guards."""

from __future__ import annotations

import pytest
import torch
from interrupt import sigterm_on_call
from tiny_models import TRAINING_NET

import nudiff.diffusion.training as training
from nudiff.diffusion.training import (
    load_diffusion_model,
    train_diffusion_model,
)
from nudiff.errors import ConfigError, InputDataError
from nudiff.imaging import dihedral
from nudiff.training.loop import TrainingInterrupted
from nudiff.training.lr_schedule import cosine_lr

TINY_TRAINING = {
    "iterations": 6,
    "batch_size": 2,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "ema_decay": 0.9,
    "checkpoint_every": 2,
    "log_every": 2,
    "seed": 0,
}


def train(kind, labelled, out_dir, **extra):
    return train_diffusion_model(
        kind,
        labelled,
        out_dir / f"{kind}.pt",
        network=TRAINING_NET,
        training={**TINY_TRAINING, **extra},
        schedule={"timesteps": 50},
        checkpoint_dir=out_dir / "ckpt",
        loss_csv=out_dir / "loss.csv",
        loss_png=out_dir / "loss.png",
    )


def test_dihedral_group_is_complete_and_invertible():
    a = torch.arange(12).reshape(3, 4).numpy()
    a = a[:3, :3]
    images = {dihedral(a, op).tobytes() for op in range(8)}
    assert len(images) == 8  # eight distinct symmetries of a generic square
    with pytest.raises(ValueError):
        dihedral(a, 8)


@pytest.mark.parametrize("kind", ["structure", "image"])
def test_training_writes_a_model_that_rebuilds(tmp_path, tiny_labelled_csv, kind):
    history = train(kind, tiny_labelled_csv, tmp_path)
    assert history["step"].tolist() == list(range(1, 7))
    model, schedule, saved = load_diffusion_model(tmp_path / f"{kind}.pt", expect=kind)
    assert saved["patch_size"] == 32 and schedule.num_timesteps == 50
    assert model.config.condition_channels == (3 if kind == "image" else 0)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert not (tmp_path / "ckpt").exists()  # checkpoints go once the model is safe


@pytest.mark.parametrize(
    ("resume_with_checkpointing", "lr_schedule"),
    [(False, "constant"), (True, "constant"), (False, "cosine")],
    ids=["as-before", "checkpointing-on", "cosine-lr"],
)
def test_killed_training_resumes_to_the_same_weights(
    tmp_path, tiny_labelled_csv, monkeypatch, resume_with_checkpointing, lr_schedule
):
    # a run killed for memory may be resumed with gradient checkpointing switched on:
    # it still resumes (not restarts) and ends with the uninterrupted run's weights;
    # a cosine lr resumes at the lr of the step it stopped at
    reference_history = train(
        "image", tiny_labelled_csv, tmp_path / "reference", drop_rate=0.5, lr_schedule=lr_schedule
    )

    original = training.l_simple
    monkeypatch.setattr(training, "l_simple", sigterm_on_call(original, 4))
    with pytest.raises(TrainingInterrupted):
        train("image", tiny_labelled_csv, tmp_path / "killed", drop_rate=0.5, lr_schedule=lr_schedule)
    assert not (tmp_path / "killed" / "image.pt").exists()
    resumed_steps = []

    def counted(*args, **kwargs):
        resumed_steps.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "l_simple", counted)
    history = train(
        "image",
        tiny_labelled_csv,
        tmp_path / "killed",
        drop_rate=0.5,
        gradient_checkpointing=resume_with_checkpointing,
        lr_schedule=lr_schedule,
    )
    # steps 1-4 came from the checkpoint written at the signal; only 5 and 6 ran again
    assert len(history) == 6 and len(resumed_steps) == 2
    assert history["lr"].tolist() == reference_history["lr"].tolist()

    reference = torch.load(tmp_path / "reference" / "image.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "image.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, value in reference[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs"


def test_structure_model_refuses_a_drop_rate(tmp_path, tiny_labelled_csv):
    with pytest.raises(ConfigError, match="drop_rate"):
        train("structure", tiny_labelled_csv, tmp_path, drop_rate=0.2)


def test_cosine_lr_anneals_each_step_from_lr_towards_zero(tmp_path, tiny_labelled_csv):
    history = train("structure", tiny_labelled_csv, tmp_path, lr_schedule="cosine")
    expected = [cosine_lr(TINY_TRAINING["lr"], step, 6) for step in range(6)]
    assert history["lr"].tolist() == pytest.approx(expected)
    assert expected[0] == TINY_TRAINING["lr"] and expected[-1] < 0.1 * TINY_TRAINING["lr"]
    constant = train("structure", tiny_labelled_csv, tmp_path / "constant")
    assert set(constant["lr"]) == {TINY_TRAINING["lr"]}


def test_an_unknown_lr_schedule_is_named(tmp_path, tiny_labelled_csv):
    with pytest.raises(ConfigError, match="lr_schedule.*'linear'"):
        train("structure", tiny_labelled_csv, tmp_path, lr_schedule="linear")
    assert not (tmp_path / "structure.pt").exists()


def test_unknown_training_key_is_named(tmp_path, tiny_labelled_csv):
    with pytest.raises(ConfigError, match="learning_rate"):
        train("structure", tiny_labelled_csv, tmp_path, learning_rate=0.1)


def test_a_snapshot_loads_the_weights_of_its_step(tmp_path, tiny_labelled_csv):
    """snapshot_every 2 over 6 steps keeps steps 2, 4 and 6. With a constant lr the step-2
    snapshot (raw and EMA) is the final state of a 2-step run; step 6 is the final state; an
    unknown step is refused with the steps there are."""
    train("structure", tiny_labelled_csv, tmp_path / "long", snapshot_every=2)
    train("structure", tiny_labelled_csv, tmp_path / "short", iterations=2)
    long, short = tmp_path / "long" / "structure.pt", tmp_path / "short" / "structure.pt"
    assert [s["step"] for s in torch.load(long, weights_only=True)["snapshots"]] == [2, 4, 6]

    def weights(path, **kwargs):
        return load_diffusion_model(path, **kwargs)[0].state_dict()

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    for kind in ("model", "ema"):
        assert same(weights(long, weights=kind, step=2), weights(short, weights=kind))
        assert same(weights(long, weights=kind, step=6), weights(long, weights=kind))
        assert not same(weights(long, weights=kind, step=2), weights(long, weights=kind, step=4))
    # the snapshot's EMA is its own (warm-up: 2/11 of step 1 + 9/11 of step 2), not its raw weights
    assert not same(weights(long, weights="ema", step=2), weights(long, weights="model", step=2))
    with pytest.raises(InputDataError, match=r"step 3 .*\[2, 4, 6\]"):
        load_diffusion_model(long, step=3)
    with pytest.raises(InputDataError, match=r"\[\]"):
        load_diffusion_model(short, step=2)  # trained without snapshots
