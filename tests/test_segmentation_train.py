"""Hover-Net training: augmentation, the validation split, the two-phase schedule, exact resume,
and that the weights kept by validation are the ones saved."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from interrupt import sigterm_on_call
from scipy import ndimage

from nudiff.errors import ConfigError, InputDataError
from nudiff.holdout import split_validation
from nudiff.imaging import dihedral
from nudiff.io.images import write_image, write_instance_map
from nudiff.samples import SAMPLE_COLUMNS, read_sample_table, synthetic_samples, write_sample_table
from nudiff.segmentation import batches as batches_module
from nudiff.segmentation.augment import augment_pair, blur_or_noise, colour_jitter, random_affine
from nudiff.segmentation.batches import BatchStream, StepBatches
from nudiff.segmentation.hovernet import HoVerNet, HoVerNetConfig
from nudiff.segmentation.hovernet import train as train_module
from nudiff.segmentation.hovernet.train import HoVerNetTraining, PhaseSchedule, load_hovernet
from nudiff.segmentation.registry import load_segmenter, train_segmenter
from nudiff.segmentation.training_data import load_training_data
from nudiff.segmentation.validation import BestWeights
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


def red_square() -> tuple[np.ndarray, np.ndarray]:
    """A 10x10 nucleus off the centre of a 32 px patch, painted red exactly on its pixels (blue elsewhere)."""
    inst = np.zeros((32, 32), np.int32)
    inst[4:14, 18:28] = 1
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 2] = 255
    rgb[inst > 0] = (255, 0, 0)
    return rgb, inst


def assert_red_where_labelled(rgb: np.ndarray, inst: np.ndarray) -> None:
    """Red pixels (bilinear image) and labelled pixels (nearest-neighbour map) agree except on
    the label's 1-px border band."""
    labelled, red = inst > 0, rgb[..., 0] > 127
    assert labelled.sum() > 20  # the nucleus is still (mostly) in the patch
    band = ndimage.binary_dilation(labelled) & ~ndimage.binary_erosion(labelled)
    assert not ((red ^ labelled) & ~band).any()
    assert (red ^ labelled).sum() <= 0.1 * labelled.sum()


def test_affine_warps_image_and_map_together():
    """Over 12 seeds (rotations up to +-179 degrees), directly and within augment_pair with
    flips, the warped image is red exactly where the warped map is labelled."""
    rgb, inst = red_square()
    for seed in range(12):
        assert_red_where_labelled(*random_affine(rgb, inst, torch.Generator().manual_seed(seed)))
        out = augment_pair(rgb, inst, torch.Generator().manual_seed(seed), affine=True, **NO_JITTER)
        assert_red_where_labelled(*out)


def test_affine_map_keeps_its_ids_and_is_seeded():
    """Nearest neighbour: warped ids are a subset of the input ids (1000 + k, so any interpolation
    would invent new values), background stays 0, dtype kept; same seed, same warp."""
    rgb, inst = disc_image(2, 32)
    inst = np.where(inst > 0, 1000 + inst, 0).astype(np.int32)
    changed = 0
    for seed in range(8):
        out_rgb, out_inst = random_affine(rgb, inst, torch.Generator().manual_seed(seed))
        assert out_inst.dtype == inst.dtype and out_rgb.dtype == np.uint8 and out_rgb.shape == rgb.shape
        assert set(np.unique(out_inst)) <= set(np.unique(inst)) and (out_inst == 0).any()
        again = random_affine(rgb, inst, torch.Generator().manual_seed(seed))
        assert np.array_equal(again[0], out_rgb) and np.array_equal(again[1], out_inst)
        changed += not np.array_equal(out_inst, inst)
    assert changed == 8
    empty = random_affine(rgb, np.zeros_like(inst), torch.Generator().manual_seed(0))[1]
    assert not empty.any()


def test_affine_turns_about_the_patch_centre_within_the_scale_range():
    """A disc at the patch centre stays there (translation is at most 1% = 0.32 px; a rotation
    about a corner would move it away) and its area changes by sx * sy in [0.64, 1.44]."""
    yy, xx = np.mgrid[:32, :32]
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) <= 36).astype(np.int32)
    areas = []
    for seed in range(10):
        out = random_affine(np.zeros((32, 32, 3), np.uint8), disc, torch.Generator().manual_seed(seed))[1]
        cy, cx = ndimage.center_of_mass(out)
        assert abs(cy - 15.5) < 1.0 and abs(cx - 15.5) < 1.0
        areas.append(out.sum() / disc.sum())
    assert 0.6 < min(areas) and max(areas) < 1.5 and max(areas) - min(areas) > 0.1


def test_blur_keeps_a_constant_image_and_noise_is_centred():
    """Blur (Gaussian or median, 2 of 3 draws) leaves a constant image exactly constant; the
    noise draws (1 of 3) add zero-mean noise of std <= 0.05 x 255. Shape and dtype are kept."""
    grey = np.full((16, 16, 3), 128, np.uint8)
    constant = 0
    for seed in range(60):
        out = blur_or_noise(grey, torch.Generator().manual_seed(seed))
        assert out.shape == grey.shape and out.dtype == np.uint8
        assert np.array_equal(out, blur_or_noise(grey, torch.Generator().manual_seed(seed)))
        if np.array_equal(out, grey):
            constant += 1
        else:
            assert abs(out.mean() - 128) < 3 and np.abs(out.astype(int) - 128).max() <= 80
    assert 27 <= constant <= 54  # ~2/3 of 60 (blur, plus noise of std < 0.5 that rounds away)


def test_blur_or_noise_clips_to_uint8():
    """Noise on a white (black) image is clipped at 255 (0), never wrapped around."""
    for value, ok in ((255, lambda o: o.min() >= 175), (0, lambda o: o.max() <= 80)):
        image = np.full((16, 16, 3), value, np.uint8)
        outs = [blur_or_noise(image, torch.Generator().manual_seed(seed)) for seed in range(30)]
        assert all(ok(o) for o in outs)
        assert any(not np.array_equal(o, image) for o in outs)  # some draws did add noise


def test_augment_pair_with_affine_and_blur_is_seeded_and_keeps_ids():
    """The full augmentation (affine, flips, blur/noise, jitter) is a function of the generator's
    state; its map holds only input ids; switching the affine warp off changes the result."""
    rgb, inst = disc_image(4, 32)
    for seed in range(4):
        a = augment_pair(rgb, inst, torch.Generator().manual_seed(seed), affine=True, blur_noise=True)
        b = augment_pair(rgb, inst, torch.Generator().manual_seed(seed), affine=True, blur_noise=True)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert set(np.unique(a[1])) <= set(np.unique(inst))
        plain = augment_pair(rgb, inst, torch.Generator().manual_seed(seed), blur_noise=True)
        assert not np.array_equal(plain[1], a[1])


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
    cfg = HoVerNetTraining(iterations=10, lr=1.0, lr_decay_at=0.5, freeze_encoder_fraction=0.4)
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
    model, meta = load_hovernet(tmp_path / "m.pt")
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

    loss = train_module.hovernet_loss
    monkeypatch.setattr(train_module, "hovernet_loss", sigterm_on_call(loss, 5))
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
    monkeypatch.setattr(train_module, "hovernet_loss", sigterm_on_call(loss, 1))
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, samples, "f", iterations=4, freeze_encoder_fraction=0.5)
    trained = load_state(CheckpointStore(tmp_path / "ckpt_f").latest())["model"]
    initial = HoVerNet(TINY, generator=torch.Generator().manual_seed(0)).state_dict()
    names = dict(HoVerNet(TINY).named_parameters())
    for key in names:
        same = torch.equal(trained[key], initial[key])
        assert same == key.startswith("encoder."), key


# ---------------------------------------------------------------- epochs and mixing


def with_synthetic(tmp_path, samples, n: int, name: str = "mixed"):
    """``samples`` plus ``n`` synthetic pairs (discs of other seeds) from a shard file, appended."""
    pairs = [disc_image(100 + k, 32) for k in range(n)]
    shard = tmp_path / f"{name}_shard.npz"
    np.savez(shard, images=np.stack([p[0] for p in pairs]), instances=np.stack([p[1] for p in pairs]))
    table = pd.concat([read_sample_table(samples), synthetic_samples(shard, n, 32, prefix=name)], ignore_index=True)
    path = tmp_path / f"{name}.csv"
    write_sample_table(table[SAMPLE_COLUMNS], path)
    return path, {p[0].tobytes() for p in pairs}


def recorded_run(tmp_path, monkeypatch, samples, name, **changes):
    """Train, recording every augment_pair call (input image, output pair) and, per step, the
    targets the loss gets."""
    calls, steps = [], []
    augment, loss = batches_module.augment_pair, train_module.hovernet_loss

    def recording_augment(rgb, inst, generator, **kwargs):
        out = augment(rgb, inst, generator, **kwargs)
        calls.append((rgb.tobytes(), *out))
        return out

    def recording_loss(outputs, targets, **kwargs):
        steps.append({k: v.detach().clone() for k, v in targets.items()})
        return loss(outputs, targets, **kwargs)

    monkeypatch.setattr(batches_module, "augment_pair", recording_augment)
    monkeypatch.setattr(train_module, "hovernet_loss", recording_loss)
    run(tmp_path, samples, name, validate_every=100, **changes)
    monkeypatch.setattr(batches_module, "augment_pair", augment)
    monkeypatch.setattr(train_module, "hovernet_loss", loss)
    return calls, steps


def test_paired_mixing_draws_the_real_batches_of_the_labelled_run(tmp_path, monkeypatch):
    """18 real training patches (3 images, 1 held out) + 8 synthetic ones, batches of 4, paired:
    each step draws the 4 real samples, with the same augmentations, that a run on the real rows
    alone draws with the same seed, then round(4 * 8 / 18) = 2 synthetic ones (floor would
    give 1; counting synthetic rows in the denominator would give round(32 / 26) = 1). With
    epochs 0.5 both runs take ceil(0.5 * 18 / 4) = 3 steps (not the 6 iterations set)."""
    samples = sample_table(tmp_path)
    mixed, synthetic_images = with_synthetic(tmp_path, samples, 8)
    real_calls, real_steps = recorded_run(tmp_path, monkeypatch, samples, "real", epochs=0.5)
    mixed_calls, mixed_steps = recorded_run(tmp_path, monkeypatch, mixed, "mixed", epochs=0.5, mixing="paired")

    for name in ("real", "mixed"):
        assert pd.read_csv(tmp_path / f"{name}_loss.csv")["step"].tolist() == [1, 2, 3]
    assert len(real_calls) == 3 * 4 and len(mixed_calls) == 3 * 6
    for step in range(3):
        real, mixed_batch = real_calls[4 * step : 4 * step + 4], mixed_calls[6 * step : 6 * step + 6]
        for (a_in, a_rgb, a_inst), (b_in, b_rgb, b_inst) in zip(real, mixed_batch[:4]):
            assert a_in == b_in and np.array_equal(a_rgb, b_rgb) and np.array_equal(a_inst, b_inst)
        assert all(c[0] in synthetic_images for c in mixed_batch[4:])
        assert not any(c[0] in synthetic_images for c in real)
        assert mixed_steps[step]["np"].shape[0] == 6
        for key in ("np", "hv"):
            assert torch.equal(mixed_steps[step][key][:4], real_steps[step][key])
    assert len({c[0] for c in real_calls}) > 3  # many patches were drawn, not one repeated batch


def test_paired_mixing_rounds_the_synthetic_share_and_pooled_epochs_count_every_row(tmp_path, monkeypatch):
    """5 synthetic rows with 18 real: round(4 * 5 / 18) = round(1.11) = 1 extra sample per step
    (ceil would give 2). Pooled, epochs count every training row: ceil(1 * (18 + 5) / 4) = 6
    steps (the real rows alone would give 5), each batch just the 4 samples."""
    samples = sample_table(tmp_path)
    mixed, _ = with_synthetic(tmp_path, samples, 5)
    _, steps = recorded_run(tmp_path, monkeypatch, mixed, "paired", iterations=1, mixing="paired")
    assert [s["np"].shape[0] for s in steps] == [5]
    _, steps = recorded_run(tmp_path, monkeypatch, mixed, "pooled", epochs=1)
    assert [s["np"].shape[0] for s in steps] == [4] * 6
    assert pd.read_csv(tmp_path / "pooled_loss.csv")["step"].tolist() == list(range(1, 7))


def test_paired_mixing_never_rounds_the_synthetic_pairs_away(tmp_path, monkeypatch):
    """2 synthetic rows with 18 real, batches of 4: round(4 * 2 / 18) = round(0.44) = 0 would
    make the augmented run its labelled twin; it gets 1 synthetic sample per step instead."""
    samples = sample_table(tmp_path)
    mixed, synthetic_images = with_synthetic(tmp_path, samples, 2)
    calls, steps = recorded_run(tmp_path, monkeypatch, mixed, "few", iterations=2, mixing="paired")
    assert [s["np"].shape[0] for s in steps] == [5, 5]
    assert [c[0] in synthetic_images for c in calls] == [False] * 4 + [True] + [False] * 4 + [True]


def test_a_set_synthetic_count_per_batch_replaces_the_proportional_share(tmp_path, monkeypatch):
    """8 synthetic rows with 18 real, batches of 4: auto would add round(32 / 18) = 2 synthetic
    samples per step; synthetic_per_batch 1 adds exactly one, after the same 4 real ones."""
    samples = sample_table(tmp_path)
    mixed, synthetic_images = with_synthetic(tmp_path, samples, 8)
    calls, steps = recorded_run(
        tmp_path, monkeypatch, mixed, "one", iterations=2, mixing="paired", synthetic_per_batch=1
    )
    assert [s["np"].shape[0] for s in steps] == [5, 5]
    assert [c[0] in synthetic_images for c in calls] == ([False] * 4 + [True]) * 2


def test_synthetic_pretraining_comes_first_then_the_labelled_runs_steps(tmp_path, monkeypatch):
    """8 synthetic rows, batches of 4, synthetic_pretrain_epochs 1: ceil(8 / 4) = 2 steps of 4
    synthetic samples, then exactly the 3 steps (same real samples, same augmentations, same
    targets) of the run on the real rows alone; synthetic_per_batch 0 adds no extras to them."""
    samples = sample_table(tmp_path)
    mixed, synthetic_images = with_synthetic(tmp_path, samples, 8)
    real_calls, real_steps = recorded_run(tmp_path, monkeypatch, samples, "real", epochs=0.5, mixing="paired")
    calls, steps = recorded_run(
        tmp_path,
        monkeypatch,
        mixed,
        "pretrained",
        epochs=0.5,
        mixing="paired",
        synthetic_per_batch=0,
        synthetic_pretrain_epochs=1,
    )
    assert pd.read_csv(tmp_path / "pretrained_loss.csv")["step"].tolist() == [1, 2, 3, 4, 5]
    assert all(c[0] in synthetic_images for c in calls[:8])
    assert len(calls[8:]) == len(real_calls) == 12
    for (a_in, a_rgb, a_inst), (b_in, b_rgb, b_inst) in zip(real_calls, calls[8:]):
        assert a_in == b_in and np.array_equal(a_rgb, b_rgb) and np.array_equal(a_inst, b_inst)
    for step in range(3):
        for key in ("np", "hv"):
            assert torch.equal(steps[2 + step][key], real_steps[step][key])


def test_real_pretraining_takes_the_synthetic_runs_steps_on_real_patches_then_the_same_steps(tmp_path, monkeypatch):
    """The control of synthetic pre-training (pretrain_source real): the same 2 pre-training
    steps (1 epoch over the 8 synthetic rows' count), each of 4 real samples and none
    synthetic, from the pre-training stream (not a copy of the first real steps); then exactly
    the 3 steps of the run on the real rows alone, like the synthetic pre-training's."""
    samples = sample_table(tmp_path)
    mixed, synthetic_images = with_synthetic(tmp_path, samples, 8)
    real_calls, real_steps = recorded_run(tmp_path, monkeypatch, samples, "real", epochs=0.5, mixing="paired")
    recipe = dict(epochs=0.5, mixing="paired", synthetic_per_batch=0, synthetic_pretrain_epochs=1)
    calls, steps = recorded_run(tmp_path, monkeypatch, mixed, "control", pretrain_source="real", **recipe)
    assert pd.read_csv(tmp_path / "control_loss.csv")["step"].tolist() == [1, 2, 3, 4, 5]
    assert len(calls) == 8 + 12 and not any(c[0] in synthetic_images for c in calls)
    assert [c[0] for c in calls[:4]] != [c[0] for c in real_calls[:4]]
    for (a_in, a_rgb, a_inst), (b_in, b_rgb, b_inst) in zip(real_calls, calls[8:]):
        assert a_in == b_in and np.array_equal(a_rgb, b_rgb) and np.array_equal(a_inst, b_inst)
    for step in range(3):
        for key in ("np", "hv"):
            assert torch.equal(steps[2 + step][key], real_steps[step][key])


def test_a_fixed_validation_table_replaces_the_seeded_split(tmp_path):
    """Given validation_samples, every row of the training table trains and the validation
    patches are those of the given table; a patch on both sides is refused."""
    samples = sample_table(tmp_path)
    table = read_sample_table(samples)
    held = tmp_path / "held.csv"
    write_sample_table(table.iloc[:3][SAMPLE_COLUMNS], held)
    rest = tmp_path / "rest.csv"
    write_sample_table(table.iloc[3:][SAMPLE_COLUMNS], rest)
    data = load_training_data(rest, HoVerNetTraining(iterations=1, val_fraction=0.5), "t", validation_samples=held)
    assert len(data.rgb) == len(table) - 3 and len(data.val_rgb) == 3
    with pytest.raises(InputDataError, match="also train"):
        load_training_data(samples, HoVerNetTraining(iterations=1), "t", validation_samples=held)


def test_validation_images_train_join_the_training_patches_and_keep_the_last_weights(tmp_path):
    """validation_images: train (PFF-Net's reference): the held-out patches train too, nothing is
    validated, the saved weights are those of the last step and the validation log is empty."""
    samples = sample_table(tmp_path)
    table = read_sample_table(samples)
    held, rest = tmp_path / "held.csv", tmp_path / "rest.csv"
    write_sample_table(table.iloc[:3][SAMPLE_COLUMNS], held)
    write_sample_table(table.iloc[3:][SAMPLE_COLUMNS], rest)
    cfg = HoVerNetTraining(iterations=1, validation_images="train")
    data = load_training_data(rest, cfg, "t", validation_samples=held)
    assert len(data.rgb) == len(table) and len(data.val_rgb) == 0
    assert len(load_training_data(samples, cfg, "t").val_rgb) == 0  # no seeded split either
    kept = train_segmenter(
        rest,
        tmp_path / "m.pt",
        network=TINY.to_dict(),
        training=settings(validation_images="train"),
        checkpoint_dir=tmp_path / "ckpt",
        validation_csv=tmp_path / "val.csv",
        validation_samples=held,
    )
    assert kept.best_step == 6 and kept.best_score is None
    assert load_state(tmp_path / "m.pt")["best_step"] == 6
    log = pd.read_csv(tmp_path / "val.csv")
    assert list(log.columns[:2]) == ["step", "dice"] and log.empty
    with pytest.raises(ConfigError, match="validation_images"):
        HoVerNetTraining(validation_images="hold")


def test_phase_schedule_after_synthetic_pretraining_is_the_schedule_without_it():
    """3 pre-training steps at the full lr with the encoder trained, a fresh Adam state after
    them, then the phases of test_phase_schedule_... shifted by 3."""
    model = HoVerNet(TINY, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    cfg = HoVerNetTraining(iterations=13, lr=1.0, lr_decay_at=0.5, freeze_encoder_fraction=0.4)
    schedule = PhaseSchedule(model, optimizer, cfg, pretrain_steps=3)
    assert [schedule.lr_at(s) for s in range(1, 14)] == [1, 1, 1] + [1, 1, 0.1, 0.1, 1, 1, 1, 0.1, 0.1, 0.1]
    schedule.before_step()
    assert all(p.requires_grad for p in model.encoder.parameters())
    optimizer.state[next(model.decoders.parameters())]["step"] = torch.tensor(1.0)
    schedule.after_step(3, model, None)
    assert not optimizer.state
    schedule.before_step()  # step 4: phase 1, encoder frozen
    assert not any(p.requires_grad for p in model.encoder.parameters())
    optimizer.state[next(model.decoders.parameters())]["step"] = torch.tensor(1.0)
    schedule.after_step(7, model, None)
    assert not optimizer.state
    schedule.before_step()
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_synthetic_settings_are_checked(tmp_path):
    """Bad counts name their key; an augmented paired run that would never see its synthetic
    pairs is refused, naming the table."""
    for bad in (-1, 1.5, True, "all"):
        with pytest.raises(ConfigError, match="synthetic_per_batch"):
            HoVerNetTraining(synthetic_per_batch=bad)
    for bad in (-1, True, "1"):
        with pytest.raises(ConfigError, match="synthetic_pretrain_epochs"):
            HoVerNetTraining(synthetic_pretrain_epochs=bad)
    samples = sample_table(tmp_path)
    mixed, _ = with_synthetic(tmp_path, samples, 4)
    with pytest.raises(ConfigError, match="never be trained on"):
        run(tmp_path, mixed, "unused", mixing="paired", synthetic_per_batch=0)


def test_mixing_and_epochs_are_checked(tmp_path):
    """Bad mixing or epochs name their key; epochs give ceil(epochs * n / batch_size) steps;
    paired mixing needs real samples."""
    with pytest.raises(ConfigError, match="training.mixing"):
        HoVerNetTraining(mixing="interleaved")
    with pytest.raises(ConfigError, match="training.epochs"):
        HoVerNetTraining(epochs=0)
    assert HoVerNetTraining(epochs=2.5, batch_size=4).with_epochs(18).iterations == 12  # ceil(11.25)
    assert HoVerNetTraining(iterations=7).with_epochs(18).iterations == 7  # no epochs: unchanged
    # paired mixing without any real sample to pair with is refused
    synthetic_only = tmp_path / "synthetic.csv"
    shard = tmp_path / "s.npz"
    rgb, inst = disc_image(0, 32)
    np.savez(shard, images=rgb[None], instances=inst[None])
    write_sample_table(synthetic_samples(shard, 1, 32, prefix="s")[SAMPLE_COLUMNS], synthetic_only)
    with pytest.raises(InputDataError, match="paired"):
        run(tmp_path, synthetic_only, "x", mixing="paired")


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
        load_hovernet(tmp_path / "other.pt")
    save_state(tmp_path / "unknown.pt", {"model": "unet"})
    with pytest.raises(InputDataError, match="unknown.pt"):
        load_segmenter(tmp_path / "unknown.pt")


# ---------------------------------------------------------------- batches by step and loader workers


def step_batches(seed: int = 0, **changes) -> StepBatches:
    """Paired batches of 3 real + 2 synthetic 32-px samples with every augmentation on."""
    pairs = [disc_image(k, 32) for k in range(6)]
    rgb, inst = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    jitter = {"affine": True, "blur_noise": True}
    base = {"batch_size": 3, "seed": seed, "augment": True, "jitter": jitter}
    extra = {"synthetic_rows": np.array([4, 5]), "per_batch_synthetic": 2}
    return StepBatches(rgb, inst, np.arange(4), **{**base, **extra, **changes})


def collect(batches: StepBatches, first: int, last: int, workers: int) -> list[dict]:
    return list(BatchStream(batches, first, last, workers=workers))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        for key in ("images", "structures"):
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), (x["step"], key)


def test_batches_are_the_same_with_and_without_loader_workers():
    """Steps 1..6 built in this process, by 2 worker processes and one by one by index agree bit
    for bit; the batches hold 3 + 2 samples, differ from step to step and from seed to seed."""
    batches = step_batches()
    here, workers = collect(batches, 1, 6, 0), collect(batches, 1, 6, 2)
    assert_same_batches(here, workers)
    assert_same_batches(here, [batches[k] for k in range(1, 7)])
    assert here[0]["images"].shape == (5, 3, 32, 32) and here[0]["images"].dtype == torch.uint8
    assert here[0]["structures"].shape == (5, 3, 32, 32)
    assert len({x["images"].numpy().tobytes() for x in here}) == 6
    assert not torch.equal(step_batches(seed=1)[1]["images"], here[0]["images"])


def test_a_resumed_stream_continues_with_the_same_batches():
    """Starting at step 4 (a resume) gives the batches 4..8 of the stream started at step 1,
    with any workers on either side, and leaves torch's global RNG (checkpointed) untouched."""
    batches = step_batches()
    full = collect(batches, 1, 8, 0)
    before = torch.get_rng_state()
    resumed = collect(batches, 4, 8, 2)
    assert torch.equal(torch.get_rng_state(), before)
    assert_same_batches(full[3:], resumed)
    assert_same_batches(full[3:], collect(batches, 4, 8, 1))


def test_real_samples_of_a_step_do_not_depend_on_the_synthetic_extras():
    """The real part of a paired batch is the batch of a run without synthetic rows (the
    labelled twin), step by step; the extras come from their own stream."""
    paired, labelled = step_batches(), step_batches(synthetic_rows=None, per_batch_synthetic=0)
    for k in range(1, 5):
        a, b = paired[k], labelled[k]
        assert a["images"].shape[0] == 5 and b["images"].shape[0] == 3
        assert torch.equal(a["images"][:3], b["images"]) and torch.equal(a["structures"][:3], b["structures"])


EXIT_WITH_AN_OPEN_STREAM = """
import numpy as np
from nudiff.segmentation.batches import BatchStream, StepBatches

rng = np.random.default_rng(0)
rgb, inst = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 3, (4, 32, 32))
batches = StepBatches(rgb, inst, np.arange(4), batch_size=2, seed=0, augment=True, jitter={})
stream = BatchStream(batches, 1, 100, workers=2)
assert next(stream)["step"] == 1
print("left open")
"""


def test_closing_a_stream_stops_its_workers_and_exit_closes_open_ones():
    """close() ends the workers; a process that exits with a stream open (a run stopped by a
    signal) still exits, although its workers ignore the SIGTERM of multiprocessing's exit handler."""
    earlier = set(multiprocessing.active_children())
    stream = BatchStream(step_batches(), 1, 50, workers=2)
    assert next(stream)["step"] == 1
    workers = [w for w in multiprocessing.active_children() if w not in earlier]
    assert len(workers) == 2
    stream.close()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    with pytest.raises(StopIteration):
        next(stream)
    done = subprocess.run([sys.executable, "-c", EXIT_WITH_AN_OPEN_STREAM], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "left open", done.stderr


def test_training_with_loader_workers_gives_the_same_weights(tmp_path):
    """2 loader workers train the same weights and losses as batches built in the process."""
    samples = sample_table(tmp_path)
    run(tmp_path, samples, "w0", loader_workers=0, iterations=4)
    run(tmp_path, samples, "w2", loader_workers=2, iterations=4)
    a, b = load_state(tmp_path / "w0.pt"), load_state(tmp_path / "w2.pt")
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key
    columns = ["step", "loss", "lr"]
    assert pd.read_csv(tmp_path / "w0_loss.csv")[columns].equals(pd.read_csv(tmp_path / "w2_loss.csv")[columns])


def test_channels_last_training_changes_rounding_only(tmp_path):
    samples = sample_table(tmp_path)
    run(tmp_path, samples, "plain", iterations=3)
    run(tmp_path, samples, "nhwc", iterations=3, channels_last=True)
    # the first loss is the same up to float rounding; Adam's normalised steps then carry
    # that rounding into the weights (about 1e-3 after 3 steps here)
    losses = [pd.read_csv(tmp_path / f"{name}_loss.csv")["loss"] for name in ("plain", "nhwc")]
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-2)
    a, b = load_state(tmp_path / "plain.pt"), load_state(tmp_path / "nhwc.pt")
    for key, value in a["state"].items():
        torch.testing.assert_close(b["state"][key].contiguous(), value, rtol=1e-2, atol=1e-2, msg=key)


def test_a_run_stopped_with_workers_resumes_with_other_workers_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped at step 3 with 2 workers, resumed with 1 (the checkpoint is kept: the workers are
    not part of its fingerprint): the weights of an uninterrupted run without workers."""
    samples = sample_table(tmp_path)
    run(tmp_path, samples, "ref", loader_workers=0, validate_every=3)
    loss = train_module.hovernet_loss
    stopping_loss = sigterm_on_call(loss, 3)
    monkeypatch.setattr(train_module, "hovernet_loss", stopping_loss)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, samples, "run", loader_workers=2, validate_every=3)
    run(tmp_path, samples, "run", loader_workers=1, validate_every=3)
    assert stopping_loss.calls == 6  # steps 4-6 only: resumed, not restarted
    ref, resumed = load_state(tmp_path / "ref.pt"), load_state(tmp_path / "run.pt")
    for key, value in ref["state"].items():
        assert torch.equal(value, resumed["state"][key]), key
    history = pd.read_csv(tmp_path / "run_loss.csv")
    assert history["step"].tolist() == list(range(1, 7))
    assert history["loss"].equals(pd.read_csv(tmp_path / "ref_loss.csv")["loss"])


def test_a_stop_signal_to_every_process_of_the_job_still_checkpoints(tmp_path, monkeypatch):
    """Slurm sends SIGTERM to every process of a job, the loader workers too: they ignore it, the
    training process checkpoints after its step, and the resumed run ends like an uninterrupted one."""
    samples = sample_table(tmp_path)
    run(tmp_path, samples, "ref", loader_workers=0, iterations=4)
    calls = {"n": 0}
    loss = train_module.hovernet_loss
    earlier = set(multiprocessing.active_children())  # workers of earlier tests not yet collected

    def stop_everyone(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            workers = [w for w in multiprocessing.active_children() if w not in earlier]
            assert len(workers) == 2
            for worker in workers:
                os.kill(worker.pid, signal.SIGTERM)
            time.sleep(1.0)  # a worker killed by it would be reported here, by the loader's SIGCHLD handler
            assert all(worker.is_alive() for worker in workers)
            signal.raise_signal(signal.SIGTERM)
        return loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "hovernet_loss", stop_everyone)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, samples, "run", loader_workers=2, iterations=4)
    assert CheckpointStore(tmp_path / "ckpt_run").steps()[-1] == 2
    run(tmp_path, samples, "run", loader_workers=2, iterations=4)
    ref, resumed = load_state(tmp_path / "ref.pt"), load_state(tmp_path / "run.pt")
    for key, value in ref["state"].items():
        assert torch.equal(value, resumed["state"][key]), key


def test_loader_workers_setting():
    """'auto' is the job's threads - 1 on CUDA (0 with one thread) and 0 on the CPU; a number is
    taken as it is; anything else names the key. The schema's defaults are the dataclass's."""
    assert HoVerNetTraining().loader_workers == "auto"
    assert HoVerNetTraining().workers("cpu") == 0
    assert HoVerNetTraining(loader_workers=3).workers("cpu") == 3
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert HoVerNetTraining().workers("cuda") == 3
        torch.set_num_threads(1)
        assert HoVerNetTraining().workers("cuda:0") == 0
    finally:
        torch.set_num_threads(previous)
    for bad in (-1, "many", True, 1.5):
        with pytest.raises(ConfigError, match="training.loader_workers"):
            HoVerNetTraining(loader_workers=bad)
    assert "loader_workers" not in HoVerNetTraining(loader_workers=2).fingerprint()
    assert HoVerNetTraining(loader_workers=2).fingerprint() == HoVerNetTraining().fingerprint()
    schema = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())
    properties = schema["$defs"]["segmenter_training"]["properties"]
    defaults = asdict(HoVerNetTraining())
    for name, spec in properties.items():
        expected = defaults[name]
        if isinstance(expected, float):  # the schema rounds 26/255 and 8/180
            expected = pytest.approx(expected, abs=1e-5)
        assert spec["default"] == expected, name
