"""The shared training loop: resume after a stop gives the weights of an uninterrupted run; the
EMA warm-up, weight snapshots and CPU bf16 autocast."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from nudiff.training.checkpoint import CheckpointStore
from nudiff.training.loop import LoopSettings, TrainingInterrupted, ema_decay_at, make_ema, run_training

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


def train(tmp_path, step_fn, iterations=20, fingerprint=None, callbacks=(), **loop):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    settings = LoopSettings(iterations=iterations, checkpoint_every=5, log_every=5, **{"ema_decay": 0.9, **loop})
    return run_training(
        model,
        opt,
        step_fn,
        settings,
        generator=torch.Generator().manual_seed(1),
        store=CheckpointStore(tmp_path / "ckpt", keep=2),
        fingerprint=fingerprint or {"run": "a"},
        callbacks=callbacks,
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


# ---------------------------------------------------------------- EMA warm-up


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def ema_after(values, decay, warmup):
    """The EMA of a 1-parameter model whose weight is set to ``values`` in turn, one update each."""
    model = Scalar()
    ema = make_ema(model, decay, warmup=warmup)
    for v in values:
        with torch.no_grad():
            model.w.fill_(v)
        ema.update_parameters(model)
    return ema.module.w.item()


def test_ema_decay_at_is_min_of_decay_and_the_warm_up_ratio():
    """(1 + n) / (10 + n) while below the decay (0.1 at n = 0, 0.91 at n = 90), then the decay."""
    assert ema_decay_at(0.9999, 0, warmup=True) == pytest.approx(1 / 10)
    assert ema_decay_at(0.9999, 90, warmup=True) == pytest.approx(91 / 100)
    assert ema_decay_at(0.5, 90, warmup=True) == 0.5
    assert ema_decay_at(0.9999, 0, warmup=False) == 0.9999


def test_warm_ema_follows_the_hand_computed_updates():
    """Weights 1, 3, -2 with decay 0.2. The first update copies the weight (e = 1); the second
    follows 1 earlier update: d = min(0.2, 2/11) = 2/11, e = 2/11 * 1 + 9/11 * 3 = 29/11; the
    third follows 2: d = min(0.2, 3/12) = 0.2, e = 0.2 * 29/11 + 0.8 * (-2) = -59/55."""
    assert ema_after([1.0], 0.2, warmup=True) == pytest.approx(1.0)
    assert ema_after([1.0, 3.0], 0.2, warmup=True) == pytest.approx(29 / 11)
    assert ema_after([1.0, 3.0, -2.0], 0.2, warmup=True) == pytest.approx(-59 / 55)


def test_ema_without_warm_up_is_the_plain_ema():
    """Same weights, decay 0.2 throughout: e = 1, 0.2 + 0.8 * 3 = 2.6, 0.52 - 1.6 = -1.08."""
    assert ema_after([1.0, 3.0], 0.2, warmup=False) == pytest.approx(2.6)
    assert ema_after([1.0, 3.0, -2.0], 0.2, warmup=False) == pytest.approx(-1.08)
    assert make_ema(Scalar(), None) is None


class Recorder:
    """A loop callback that keeps every weight of the model and of its EMA after each step."""

    def __init__(self) -> None:
        self.model, self.ema = [], []

    def after_step(self, step, model, ema):
        self.model.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        self.ema.append(torch.cat([p.detach().flatten() for p in ema.module.parameters()]))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("warmup", [True, False])
def test_the_loop_applies_the_ema_warm_up_it_is_given(tmp_path, warmup):
    """Through run_training, EMA step n (n >= 2) is d * EMA(n - 1) + (1 - d) * weights(n) with
    d = min(0.9, n / (9 + n)) with warm-up (0.9 without); step 1 copies the weights."""
    rec = Recorder()
    train(tmp_path, make_step(), iterations=4, callbacks=[rec], ema_warmup=warmup)
    assert torch.equal(rec.ema[0], rec.model[0])
    for n in range(2, 5):
        d = min(0.9, n / (9 + n)) if warmup else 0.9
        torch.testing.assert_close(rec.ema[n - 1], d * rec.ema[n - 2] + (1 - d) * rec.model[n - 1])


# ---------------------------------------------------------------- snapshots


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_snapshots_are_cpu_copies_at_multiples_and_at_the_last_step(tmp_path):
    """snapshot_every 3 over 8 steps keeps steps 3, 6 and 8. The step-3 snapshot equals the final
    weights of a 3-step run (constant lr: same trajectory), so later steps did not change it:
    a copy, not an alias of the live weights."""
    result = train(tmp_path / "long", make_step(), iterations=8, snapshot_every=3)
    assert [s["step"] for s in result.snapshots] == [3, 6, 8]
    short = train(tmp_path / "short", make_step(), iterations=3)
    assert_same_state(result.snapshots[0]["model"], short.model.state_dict())
    assert_same_state(result.snapshots[0]["ema"], short.ema.module.state_dict())
    last = result.snapshots[-1]
    assert_same_state(last["model"], result.model.state_dict())
    assert_same_state(last["ema"], result.ema.module.state_dict())
    live = {t.data_ptr() for t in result.model.state_dict().values()}
    assert all(t.device.type == "cpu" and t.data_ptr() not in live for t in last["model"].values())
    assert not torch.equal(result.snapshots[0]["model"]["0.weight"], last["model"]["0.weight"])
    # none by default, and the EMA entry is None without an EMA
    assert train(tmp_path / "none", make_step(), iterations=3).snapshots == []
    no_ema = train(tmp_path / "no_ema", make_step(), iterations=3, snapshot_every=3, ema_decay=None)
    assert [s["ema"] for s in no_ema.snapshots] == [None]


@pytest.mark.parametrize("stop_at", [4, 6], ids=["between-snapshots", "at-a-snapshot"])
def test_snapshots_survive_a_resume(tmp_path, stop_at):
    """A run stopped after step 4 (or 6, itself a snapshot step) and resumed ends with the
    snapshots of an uninterrupted run: the same steps, none twice, the same weights."""
    reference = train(tmp_path / "ref", make_step(), iterations=8, snapshot_every=3)
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "run", make_step(stop_at=stop_at), iterations=8, snapshot_every=3)
    resumed = train(tmp_path / "run", make_step(), iterations=8, snapshot_every=3)
    assert [s["step"] for s in resumed.snapshots] == [3, 6, 8]
    for a, b in zip(reference.snapshots, resumed.snapshots):
        assert_same_state(a["model"], b["model"])
        assert_same_state(a["ema"], b["ema"])


def test_snapshot_every_must_be_positive():
    """0 would snapshot never (or divide by zero): refused."""
    with pytest.raises(ValueError, match="snapshot_every"):
        LoopSettings(iterations=3, snapshot_every=0)


# ---------------------------------------------------------------- CPU bf16


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_cpu_bf16_runs_the_step_under_cpu_autocast(tmp_path, cpu_bf16):
    """With cpu_bf16 the step function runs under bf16 autocast on the CPU (a Linear layer then
    returns bf16); without it, autocast is off and the output is float32."""
    seen = []
    inner = make_step()

    def step(model, generator):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), model(DATA[:2]).dtype))
        return inner(model, generator)

    train(tmp_path, step, iterations=2, cpu_bf16=cpu_bf16)
    out_dtype = torch.bfloat16 if cpu_bf16 else torch.float32
    assert [(enabled, out) for enabled, _, out in seen] == [(cpu_bf16, out_dtype)] * 2
    if cpu_bf16:
        assert all(dtype == torch.bfloat16 for _, dtype, _ in seen)
    assert not torch.is_autocast_enabled("cpu")  # switched off again after the loop
