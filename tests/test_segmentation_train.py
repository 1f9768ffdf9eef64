"""Hover-Net training: augmentation, the validation split, the two-phase schedule, exact resume,
and that the weights kept by validation are the ones saved."""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import torch

from nudiff.diffusion.training import dihedral
from nudiff.errors import ConfigError, InputDataError
from nudiff.io.images import write_image, write_instance_map
from nudiff.samples import SAMPLE_COLUMNS, write_sample_table
from nudiff.segmentation import HoVerNet, HoVerNetConfig
from nudiff.segmentation import train as train_module
from nudiff.segmentation.augment import augment_pair, colour_jitter
from nudiff.segmentation.train import (
    PhaseSchedule,
    SegmenterTraining,
    load_segmenter,
    train_segmenter,
)
from nudiff.segmentation.validation import BestWeights, split_validation
from nudiff.training.checkpoint import CheckpointStore, load_state, save_state
from nudiff.training.loop import TrainingInterrupted

torch.set_num_threads(1)

TINY = HoVerNetConfig.scaled(1 / 8, encoder_blocks=(1, 1, 1, 1), same_padding=True, decoder_units=(2, 1))
NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}


# ---------------------------------------------------------------- tiny data


def disc_image(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Dark purple discs of radius 4-6 on a pink background, and their instance map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    for k in range(1, 9):
        cy, cx, r = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(4, 7)
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)] = k
    rgb = np.where(inst[..., None] > 0, [90, 40, 130], [235, 180, 210]).astype(np.float64)
    rgb += rng.normal(0, 8, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), inst


def sample_table(tmp_path, n_images: int = 3, size: int = 64, patch: int = 32, stride: int = 16):
    """Real patches of ``n_images`` source images, as :func:`nudiff.samples.real_samples` makes them."""
    rows = []
    for i in range(n_images):
        rgb, inst = disc_image(i, size)
        image, label = tmp_path / "src" / f"img{i}.png", tmp_path / "src" / f"img{i}.tif"
        write_image(image, rgb)
        write_instance_map(label, inst)
        for y in range(0, size - patch + 1, stride):
            for x in range(0, size - patch + 1, stride):
                rows.append(
                    {
                        "sample_id": f"img{i}_y{y}_x{x}",
                        "origin": "real",
                        "image_file": str(image),
                        "label_file": str(label),
                        "index": -1,
                        "y": y,
                        "x": x,
                        "size": patch,
                    }
                )
    path = tmp_path / "samples.csv"
    write_sample_table(pd.DataFrame(rows, columns=SAMPLE_COLUMNS), path)
    return path


def settings(**changes):
    base = {
        "iterations": 6,
        "batch_size": 4,
        "lr": 1e-3,
        "lr_decay_at": None,
        "validate_every": 2,
        "val_fraction": 0.34,
        "checkpoint_every": 2,
        "log_every": 2,
        "seed": 0,
        "watershed": {"min_object_size": 5, "min_marker_size": 2},
    }
    return {**base, **changes}


def run(tmp_path, samples, name, **changes):
    return train_segmenter(
        samples,
        tmp_path / f"{name}.pt",
        network=TINY.to_dict(),
        training=settings(**changes),
        checkpoint_dir=tmp_path / f"ckpt_{name}",
        loss_csv=tmp_path / f"{name}_loss.csv",
        validation_csv=tmp_path / f"{name}_val.csv",
        loss_png=tmp_path / f"{name}.png",
    )


# ---------------------------------------------------------------- augmentation


def test_flips_move_image_and_map_together_and_all_eight_occur():
    rgb, inst = disc_image(0, 32)
    seen = set()
    for seed in range(40):
        out_rgb, out_inst = augment_pair(rgb, inst, torch.Generator().manual_seed(seed), **NO_JITTER)
        ops = [op for op in range(8) if np.array_equal(out_inst, dihedral(inst, op))]
        assert len(ops) == 1  # the random discs have no symmetry, so the op is identifiable
        assert np.array_equal(out_rgb, dihedral(rgb, ops[0]))
        seen.add(ops[0])
    assert seen == set(range(8))


def test_colour_jitter_keeps_the_map_aligned_and_is_seeded():
    # each nucleus gets its own colour; jitter maps colours pixel by pixel, so every nucleus of the
    # transformed map must still be one colour
    rgb, inst = disc_image(1, 32)
    palette = np.random.default_rng(0).integers(40, 216, (inst.max() + 1, 3)).astype(np.uint8)
    rgb = palette[inst]
    a = augment_pair(rgb, inst, torch.Generator().manual_seed(3))
    b = augment_pair(rgb, inst, torch.Generator().manual_seed(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    out_rgb, out_inst = a
    assert not np.array_equal(np.sort(out_rgb.reshape(-1)), np.sort(rgb.reshape(-1)))  # colours changed
    for k in range(inst.max() + 1):
        assert len(np.unique(out_rgb[out_inst == k], axis=0)) == 1


def test_colour_operations_have_their_known_effects():
    grey = np.full((8, 8, 3), 120, np.uint8)
    # grey has no hue and equals its own luma: hue and saturation leave it unchanged
    out = colour_jitter(grey, torch.Generator().manual_seed(0), brightness=0, contrast=0, saturation=0.2, hue=0.05)
    assert np.array_equal(out, grey)
    # brightness alone adds one constant in [-26, 26]
    diff = colour_jitter(grey, torch.Generator().manual_seed(1), contrast=0, saturation=0, hue=0).astype(int) - 120
    assert len(np.unique(diff)) == 1 and abs(diff[0, 0, 0]) <= 26 and diff[0, 0, 0] != 0
    # contrast alone keeps each channel's mean (no clipping on mid-range pixels)
    img = np.random.default_rng(0).integers(100, 156, (16, 16, 3)).astype(np.uint8)
    out = colour_jitter(img, torch.Generator().manual_seed(2), brightness=0, saturation=0, hue=0)
    np.testing.assert_allclose(out.mean((0, 1)), img.mean((0, 1)), atol=0.5)
    assert not np.array_equal(out, img)
    with pytest.raises(ValueError, match="hue"):
        colour_jitter(img, torch.Generator(), hue=0.7)


# ---------------------------------------------------------------- validation split


def _table(sources: dict[str, int], synthetic: int = 0) -> pd.DataFrame:
    rows = [
        {"origin": "real", "image_file": name, "y": 16 * i, "x": 0, "size": 32}
        for name, n in sources.items()
        for i in range(n)
    ]
    rows += [{"origin": "synthetic", "image_file": "shard.npz", "y": 0, "x": 0, "size": 32}] * synthetic
    return pd.DataFrame(rows)


def test_validation_holds_out_whole_source_images_and_synthetic_samples_train():
    table = _table({f"img{i}": 5 for i in range(10)}, synthetic=7)
    train, val = split_validation(table, val_fraction=0.2, seed=0)
    assert sorted([*train, *val]) == list(range(len(table)))
    assert set(table.loc[train, "image_file"]).isdisjoint(table.loc[val, "image_file"])
    assert table.loc[val, "image_file"].nunique() == 2 and len(val) == 10  # 20% of 10 images
    assert (table.loc[val, "origin"] == "real").all()
    assert (table["origin"] == "synthetic")[train].sum() == 7
    again = split_validation(table, val_fraction=0.2, seed=0)
    assert np.array_equal(again[1], val)
    other = [tuple(split_validation(table, val_fraction=0.2, seed=s)[1]) for s in range(1, 6)]
    assert any(o != tuple(val) for o in other)


def test_two_source_images_still_give_one_for_validation():
    table = _table({"a": 3, "b": 3})
    train, val = split_validation(table, val_fraction=0.01, seed=0)
    assert table.loc[val, "image_file"].nunique() == 1 and table.loc[train, "image_file"].nunique() == 1


def test_one_source_image_drops_training_patches_that_overlap_validation():
    # a 4 x 4 grid of 32-px patches at stride 16 over one 80x80 image
    table = pd.DataFrame(
        [
            {"origin": "real", "image_file": "a", "y": y, "x": x, "size": 32}
            for y in range(0, 49, 16)
            for x in range(0, 49, 16)
        ]
    )
    train, val = split_validation(table, val_fraction=0.25, seed=3)
    assert len(val) == 4 and len(train) > 0
    for i in train:
        for j in val:
            a, b = table.loc[i], table.loc[j]
            assert abs(a["y"] - b["y"]) >= 32 or abs(a["x"] - b["x"]) >= 32
    assert split_validation(table, val_fraction=0.0, seed=3)[1].size == 0


# ---------------------------------------------------------------- schedule and best weights


def test_phase_schedule_freezes_the_encoder_then_resets_adam_and_steps_the_lr():
    model = HoVerNet(TINY, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    cfg = SegmenterTraining(iterations=10, lr=1.0, lr_decay_at=0.5, freeze_encoder_fraction=0.4)
    schedule = PhaseSchedule(model, optimizer, cfg)
    # phase 1 = steps 1-4 (decay after 2 of them), phase 2 = steps 5-10 (decay after 3)
    assert [schedule.lr_at(s) for s in range(1, 11)] == [1, 1, 0.1, 0.1, 1, 1, 1, 0.1, 0.1, 0.1]
    schedule.before_step()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoders.parameters())
    optimizer.state[next(model.decoders.parameters())]["step"] = torch.tensor(1.0)
    schedule.after_step(4, model, None)
    assert not optimizer.state
    schedule.before_step()
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_best_weights_are_the_first_best_score():
    model = torch.nn.Linear(1, 1)
    scores = iter([0.2, 0.7, 0.7, 0.5])
    keeper = BestWeights(lambda m: {"dice": 0.0, "aji": 0.0, "score": next(scores)}, every=2, iterations=7)
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(step)
        keeper.after_step(step, model, None)
    assert keeper.table()["step"].tolist() == [2, 4, 6, 7]  # every 2 steps and the last
    assert keeper.best_step == 4 and keeper.best_state["weight"].item() == 4.0


# ---------------------------------------------------------------- training runs


def test_loss_falls_and_outputs_are_written(tmp_path):
    samples = sample_table(tmp_path)
    result = run(tmp_path, samples, "m", iterations=30, validate_every=10, checkpoint_every=100)
    losses = pd.read_csv(tmp_path / "m_loss.csv")["loss"]
    assert losses.iloc[-5:].mean() < 0.5 * losses.iloc[:5].mean()
    log = pd.read_csv(tmp_path / "m_val.csv")
    assert list(log.columns) == ["step", "dice", "aji", "score"] and log["step"].tolist() == [10, 20, 30]
    assert np.allclose(log["score"], (log["dice"] + log["aji"]) / 2)
    assert (tmp_path / "m.png").stat().st_size > 0
    assert not (tmp_path / "ckpt_m").exists()
    model, meta = load_segmenter(tmp_path / "m.pt")
    assert meta["input_size"] == 32 and meta["best_step"] == result.best_step and not model.training
    assert meta["best_score"] == pytest.approx(log["score"].max())


def test_saved_weights_are_those_of_the_best_validation_step(tmp_path):
    samples = sample_table(tmp_path)
    result = run(tmp_path, samples, "a", validate_every=1)
    # With a constant lr the trajectory does not depend on the run's length: a run stopped at
    # the best step (validated only there) ends with the weights the first run kept.
    again = run(tmp_path, samples, "b", iterations=result.best_step, validate_every=result.best_step)
    kept, final = load_state(tmp_path / "a.pt"), load_state(tmp_path / "b.pt")
    assert kept["best_step"] == result.best_step and final["best_step"] == again.best_step == result.best_step
    for key, value in kept["state"].items():
        assert torch.equal(value, final["state"][key]), key


def test_resume_after_sigterm_keeps_the_same_best_weights(tmp_path, monkeypatch):
    samples = sample_table(tmp_path)
    changes = {"iterations": 8, "validate_every": 3, "freeze_encoder_fraction": 0.25, "lr_decay_at": 0.5}
    run(tmp_path, samples, "ref", **changes)

    calls = {"n": 0}
    loss = train_module.hovernet_loss

    def stopping_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGTERM)  # what Slurm sends to a preempted job
        return loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "hovernet_loss", stopping_loss)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, samples, "run", **changes)
    assert CheckpointStore(tmp_path / "ckpt_run").steps()[-1] == 5
    monkeypatch.setattr(train_module, "hovernet_loss", loss)
    run(tmp_path, samples, "run", **changes)

    ref, resumed = load_state(tmp_path / "ref.pt"), load_state(tmp_path / "run.pt")
    assert ref["best_step"] == resumed["best_step"] and ref["validation"] == resumed["validation"]
    for key, value in ref["state"].items():
        assert torch.equal(value, resumed["state"][key]), key
    columns = ["step", "loss", "lr"]
    assert pd.read_csv(tmp_path / "ref_loss.csv")[columns].equals(pd.read_csv(tmp_path / "run_loss.csv")[columns])


def test_frozen_phase_leaves_encoder_parameters_untouched(tmp_path, monkeypatch):
    samples = sample_table(tmp_path)
    loss = train_module.hovernet_loss

    def stop_after_first(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "hovernet_loss", stop_after_first)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, samples, "f", iterations=4, freeze_encoder_fraction=0.5)
    trained = load_state(CheckpointStore(tmp_path / "ckpt_f").latest())["model"]
    initial = HoVerNet(TINY, generator=torch.Generator().manual_seed(0)).state_dict()
    names = dict(HoVerNet(TINY).named_parameters())
    for key in names:
        same = torch.equal(trained[key], initial[key])
        assert same == key.startswith("encoder."), key


def test_bad_settings_and_files_are_named(tmp_path):
    samples = sample_table(tmp_path, n_images=2)
    with pytest.raises(ConfigError, match="training.lr_decay_at"):
        run(tmp_path, samples, "x", lr_decay_at=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        run(tmp_path, samples, "x", learning_rate=1.0)
    with pytest.raises(ConfigError, match="network"):
        train_segmenter(
            samples,
            tmp_path / "x.pt",
            network={**TINY.to_dict(), "depth": 3},
            training=settings(),
            checkpoint_dir=tmp_path / "c",
        )
    save_state(tmp_path / "other.pt", {"model": "pffnet"})
    with pytest.raises(InputDataError, match="other.pt"):
        load_segmenter(tmp_path / "other.pt")
