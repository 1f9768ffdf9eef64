"""PFF-Net's training recipe and targets (the network itself: tests/test_pffnet.py)."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nudiff.errors import ConfigError
from nudiff.segmentation.pffnet.train import (
    PFFNetTraining,
    WarmupStepSchedule,
    instance_targets,
    sgd_with_bias_groups,
)


def test_instance_targets_boxes_masks_and_empty_patches():
    inst = np.zeros((16, 20), dtype=np.int32)
    inst[2:5, 3:9] = 1
    inst[10:16, 15:20] = 4  # ids need not be consecutive
    targets = instance_targets(inst)
    assert targets["boxes"].tolist() == [[3, 2, 9, 5], [15, 10, 20, 16]]  # x2, y2 one past the last pixel
    assert targets["labels"].tolist() == [1, 1]
    assert targets["masks"].shape == (2, 16, 20) and targets["masks"].dtype == torch.uint8
    assert targets["masks"][1].sum() == 30 and targets["masks"][0][2, 3] == 1
    empty = instance_targets(np.zeros((8, 8), dtype=np.int32))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 8, 8) and len(empty["labels"]) == 0


def test_schedule_is_warmup_then_step_decay():
    cfg = PFFNetTraining(iterations=100, lr=0.3, warmup_steps=10, warmup_factor=1 / 3, lr_steps=(0.5, 0.8), gamma=0.1)
    schedule = WarmupStepSchedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), cfg)
    assert schedule.lr_at(1) == pytest.approx(0.1)  # a third of the lr
    assert schedule.lr_at(6) == pytest.approx(0.3 * (1 / 3 + (2 / 3) * 0.5))  # half-way up
    assert schedule.lr_at(11) == pytest.approx(0.3)
    assert schedule.lr_at(50) == pytest.approx(0.3) and schedule.lr_at(51) == pytest.approx(0.03)
    assert schedule.lr_at(81) == pytest.approx(0.003)


def test_schedule_after_synthetic_pretraining_is_the_schedule_without_it():
    """3 pre-training steps (warmed up, then the full lr); after them the momentum is dropped,
    torch's RNG is re-seeded, and the schedule of a 10-step run follows, shifted by 3."""
    cfg = PFFNetTraining(iterations=13, lr=0.3, warmup_steps=2, warmup_factor=0.5, lr_steps=(0.5,), gamma=0.1, seed=4)
    plain = WarmupStepSchedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), replace(cfg, iterations=10))
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0, momentum=0.9)
    schedule = WarmupStepSchedule(optimizer, cfg, pretrain_steps=3)
    assert [schedule.lr_at(s) for s in (1, 2, 3)] == pytest.approx([0.15, 0.225, 0.3])
    assert [schedule.lr_at(s) for s in range(4, 14)] == pytest.approx([plain.lr_at(s) for s in range(1, 11)])
    assert schedule.lr_at(8) == pytest.approx(0.3) and schedule.lr_at(9) == pytest.approx(0.03)
    optimizer.state[weight]["momentum_buffer"] = torch.ones(1)
    schedule.after_step(2, None, None)
    assert optimizer.state  # kept during pre-training
    schedule.after_step(3, None, None)
    assert not optimizer.state
    drawn = torch.rand(3)
    torch.manual_seed(4)
    assert torch.equal(drawn, torch.rand(3))


def test_synthetic_pretraining_then_the_labelled_runs_targets(tmp_path, monkeypatch):
    """8 synthetic rows, batches of 2, 0.5 epochs: ceil(0.5 * 8 / 2) = 2 synthetic steps, then
    the labelled run's steps with the same instance targets, step for step."""
    samples = sample_table(tmp_path)
    mixed, _ = with_synthetic(tmp_path, samples, 8)
    targets = pffnet_train.instance_targets

    def recorded(samples_csv, name, **changes):
        seen = []

        def record(inst):
            seen.append(np.array(inst, copy=True))
            return targets(inst)

        monkeypatch.setattr(pffnet_train, "instance_targets", record)
        pff_run(tmp_path, samples_csv, name, mixing="paired", **changes)
        return seen

    labelled = recorded(samples, "labelled")
    pretrained = recorded(mixed, "pretrained", synthetic_per_batch=0, synthetic_pretrain_epochs=0.5)
    assert pd.read_csv(tmp_path / "pretrained_loss.csv")["step"].tolist() == list(range(1, 11))
    assert len(pretrained) == len(labelled) + 4
    assert all(np.array_equal(a, b) for a, b in zip(labelled, pretrained[4:]))


def test_biases_get_twice_the_lr_and_no_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 1, 1))
    cfg = PFFNetTraining(lr=0.01, weight_decay=1e-4, warmup_steps=0)
    optimizer = sgd_with_bias_groups(model, cfg)
    weights, biases = optimizer.param_groups
    assert len(weights["params"]) == 3 and len(biases["params"]) == 3  # conv, norm, conv
    assert weights["weight_decay"] == 1e-4 and biases["weight_decay"] == 0.0
    schedule = WarmupStepSchedule(optimizer, cfg)
    schedule.before_step()
    assert weights["lr"] == pytest.approx(0.01) and biases["lr"] == pytest.approx(0.02)
    assert optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"lr_steps": [0.8, 0.5]}, "lr_steps"),
        ({"lr_steps": [1.0]}, "lr_steps"),
        ({"momentum": 1.0}, "momentum"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"cpu_bf16": "sometimes"}, "cpu_bf16"),
        ({"mixing": "interleaved"}, "mixing"),
    ],
)
def test_bad_settings_name_their_key(changes, key):
    with pytest.raises(ConfigError, match=key):
        PFFNetTraining(**changes)


def test_defaults_are_pffnet_recipe_and_epochs_scale_it():
    cfg = PFFNetTraining()
    assert (cfg.iterations, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (25600, 1, 0.003, 0.9, 1e-4)
    assert (cfg.warmup_steps, cfg.lr_steps, cfg.gamma, cfg.bias_lr_factor) == (500, (0.75,), 0.1, 2.0)
    assert PFFNetTraining(epochs=2, batch_size=2).with_epochs(9).iterations == 9


# ---------------------------------------------------------------- whole runs on a tiny table

from interrupt import sigterm_on_call  # noqa: E402
from test_pffnet import TINY  # noqa: E402
from test_segmentation_train import disc_image, sample_table, with_synthetic  # noqa: E402

from nudiff.segmentation.pffnet import train as pffnet_train  # noqa: E402
from nudiff.segmentation.pffnet.inference import predict_pffnet_instances  # noqa: E402
from nudiff.segmentation.registry import load_segmenter, train_segmenter  # noqa: E402
from nudiff.training.checkpoint import CheckpointStore, load_state  # noqa: E402
from nudiff.training.loop import TrainingInterrupted  # noqa: E402


def pff_settings(**changes):
    base = {
        "iterations": 8,
        "batch_size": 2,
        "lr": 0.01,
        "warmup_steps": 2,
        "lr_steps": [0.75],
        "validate_every": 4,
        "val_fraction": 0.34,
        "checkpoint_every": 2,
        "log_every": 2,
        "seed": 0,
        "inference": {"score_threshold": 0.05},
    }
    return {**base, **changes}


def pff_run(tmp_path, samples, name, **changes):
    return train_segmenter(
        samples,
        tmp_path / f"{name}.pt",
        model="pffnet",
        network=TINY.to_dict(),
        training=pff_settings(**changes),
        checkpoint_dir=tmp_path / f"ckpt_{name}",
        loss_csv=tmp_path / f"{name}_loss.csv",
        validation_csv=tmp_path / f"{name}_val.csv",
        loss_png=tmp_path / f"{name}.png",
    )


def test_pffnet_training_writes_its_outputs_and_the_model_loads(tmp_path):
    samples = sample_table(tmp_path)
    state = torch.get_rng_state()
    result = pff_run(tmp_path, samples, "m")
    assert torch.equal(torch.get_rng_state(), state)  # the run's seeded RNG did not leak out
    log = pd.read_csv(tmp_path / "m_val.csv")
    assert log["step"].tolist() == [4, 8] and np.isfinite(log["score"]).all()
    assert (tmp_path / "m.png").stat().st_size > 0 and not (tmp_path / "ckpt_m").exists()
    model, meta = load_segmenter(tmp_path / "m.pt")
    assert meta["model"] == "pffnet" and meta["best_step"] == result.best_step and not model.training
    rgb = disc_image(7, 48)[0]
    a = predict_pffnet_instances(model, rgb, score_threshold=0.05)
    b = predict_pffnet_instances(model, rgb, score_threshold=0.05)
    assert a.shape == (48, 48) and a.dtype == np.int32 and np.array_equal(a, b)


def test_pffnet_resumes_after_sigterm_to_the_same_weights(tmp_path, monkeypatch):
    samples = sample_table(tmp_path)
    pff_run(tmp_path, samples, "ref")
    targets = pffnet_train.instance_targets
    monkeypatch.setattr(pffnet_train, "instance_targets", sigterm_on_call(targets, 9))  # 2 per step: step 5
    with pytest.raises(TrainingInterrupted):
        pff_run(tmp_path, samples, "run")
    assert CheckpointStore(tmp_path / "ckpt_run").steps()[-1] == 5
    monkeypatch.setattr(pffnet_train, "instance_targets", targets)
    pff_run(tmp_path, samples, "run")
    ref, resumed = load_state(tmp_path / "ref.pt"), load_state(tmp_path / "run.pt")
    assert ref["best_step"] == resumed["best_step"] and ref["validation"] == resumed["validation"]
    for key, value in ref["state"].items():
        assert torch.equal(value, resumed["state"][key]), key
    columns = ["step", "loss", "lr"]
    assert pd.read_csv(tmp_path / "ref_loss.csv")[columns].equals(pd.read_csv(tmp_path / "run_loss.csv")[columns])


def test_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'maskrcnn'"):
        train_segmenter(
            tmp_path / "x.csv",
            tmp_path / "m.pt",
            model="maskrcnn",
            network={},
            training={},
            checkpoint_dir=tmp_path / "c",
        )
