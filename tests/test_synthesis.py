"""Sampling synthetic pairs in shards, and the augmented set built from them."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from tiny_models import TRAINING_NET

import nudiff.diffusion.colour_transfer as colour_transfer
import nudiff.diffusion.synthesis as synthesis
from nudiff.diffusion.augmented_set import build_augmented_set
from nudiff.diffusion.count_matching import match_counts
from nudiff.diffusion.quality import colour_statistics
from nudiff.diffusion.synthesis import (
    CleanupSettings,
    SamplingSettings,
    sample_images,
    sample_structures,
    shard_indices,
)
from nudiff.diffusion.training import train_diffusion_model
from nudiff.imaging import transfer_colour
from nudiff.samples import SampleReader, read_sample_table, real_pairs
from nudiff.structure import (
    clean_instances,
    instances_from_structure,
    nuclei_structure,
    structure_to_model_range,
)

TRAINING = {"iterations": 3, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "ema_decay": 0.9, "seed": 0}
SAMPLING = SamplingSettings(sampler="ddim", steps=5, batch_size=2, seed=7)
# A watershed that keeps tiny objects, so an untrained model still yields some nuclei.
WATERSHED = {"min_object_size": 0, "min_marker_size": 0, "opening_size": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_labelled_csv):
    root = tmp_path_factory.mktemp("models")
    for kind in ("structure", "image"):
        train_diffusion_model(
            kind,
            tiny_labelled_csv,
            root / f"{kind}.pt",
            network=TRAINING_NET,
            training=TRAINING,
            schedule={"timesteps": 20},
            checkpoint_dir=root / f"ckpt_{kind}",
        )
    return root


def test_shards_partition_the_samples():
    parts = [shard_indices(10, 3, k) for k in range(3)]
    assert np.concatenate(parts).tolist() == list(range(10))
    assert [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(ValueError):
        shard_indices(10, 3, 3)


def test_a_shard_does_not_depend_on_the_others(models, tmp_path):
    # shard 1 of 3 alone, then all shards in another order: shard 1 is bit-identical
    alone = tmp_path / "alone.npz"
    sample_structures(
        models / "structure.pt", alone, n_total=5, n_shards=3, shard=1, sampling=SAMPLING, watershed=WATERSHED
    )
    for k in (2, 0, 1):
        sample_structures(
            models / "structure.pt",
            tmp_path / f"s{k}.npz",
            n_total=5,
            n_shards=3,
            shard=k,
            sampling=SAMPLING,
            watershed=WATERSHED,
        )
    with np.load(alone) as a, np.load(tmp_path / "s1.npz") as b:
        assert a["sample_index"].tolist() == [2, 3]
        for key in ("structures", "instances", "n_nuclei"):
            assert np.array_equal(a[key], b[key])
    # and a sample is the same whatever the shard count: sample 2 of one single shard
    single = tmp_path / "single.npz"
    sample_structures(
        models / "structure.pt", single, n_total=5, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED
    )
    with np.load(single) as s, np.load(alone) as a:
        np.testing.assert_allclose(s["structures"][2], a["structures"][0], atol=1e-5)


def test_oversampling_keeps_the_candidates_that_follow_the_labelled_counts(models, tmp_path, tiny_labelled_csv):
    # k = 2: shard 1 of 2 (samples 2, 3 of 4) draws candidates 2, 3, 6, 7; candidates 2, 3 are
    # the structures k = 1 draws, and the kept ones are those match_counts chooses
    plain, over = tmp_path / "plain.npz", tmp_path / "over.npz"
    common = dict(n_total=4, n_shards=2, shard=1, sampling=SAMPLING, watershed=WATERSHED)
    sample_structures(models / "structure.pt", plain, **common)
    sample_structures(models / "structure.pt", over, oversample=2, labelled_csv=tiny_labelled_csv, **common)
    extra = tmp_path / "extra.npz"  # candidates 6, 7 are samples 6, 7 of an 8-sample run
    sample_structures(
        models / "structure.pt", extra, n_total=8, n_shards=4, shard=3, sampling=SAMPLING, watershed=WATERSHED
    )
    with np.load(plain) as p, np.load(over) as o, np.load(extra) as e:
        assert p["sample_index"].tolist() == [2, 3] and e["sample_index"].tolist() == [6, 7]
        counts = np.concatenate([p["n_nuclei"], e["n_nuclei"]])
        real = [int(np.count_nonzero(np.unique(m))) for m in real_pairs(tiny_labelled_csv)[1]]
        keep = match_counts(counts, [c for c in real if c > 0], 2)
        assert o["sample_index"].tolist() == np.array([2, 3, 6, 7])[keep].tolist()
        instances = np.concatenate([p["instances"], e["instances"]])
        assert np.array_equal(o["instances"], instances[keep])
        assert o["n_nuclei"].tolist() == counts[keep].tolist()
    with pytest.raises(ValueError, match="needs labelled_csv"):
        sample_structures(models / "structure.pt", tmp_path / "x.npz", oversample=2, **common)


def test_channels_last_sampling_changes_rounding_only(models, tmp_path):
    from dataclasses import replace

    nhwc = replace(SAMPLING, channels_last=True)
    plain, fast = tmp_path / "plain.npz", tmp_path / "fast.npz"
    for path, sampling in ((plain, SAMPLING), (fast, nhwc)):
        sample_structures(
            models / "structure.pt", path, n_total=3, n_shards=1, shard=0, sampling=sampling, watershed=WATERSHED
        )
    with np.load(plain) as p, np.load(fast) as f:
        np.testing.assert_allclose(f["sampled_structures"], p["sampled_structures"], atol=1e-4)
    images = {}
    for name, sampling in (("plain", SAMPLING), ("fast", nhwc)):
        sample_images(models / "image.pt", plain, tmp_path / f"pairs_{name}.npz", sampling=sampling)
        with np.load(tmp_path / f"pairs_{name}.npz") as pairs:
            images[name] = pairs["images"].astype(int)
    assert images["plain"].shape == images["fast"].shape
    assert np.abs(images["plain"] - images["fast"]).max() <= 1  # uint8: at most one level of rounding


def test_pairs_and_augmented_set(models, tmp_path, tiny_labelled_csv):
    structures = tmp_path / "structures.npz"
    sample_structures(
        models / "structure.pt", structures, n_total=4, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED
    )
    pairs = tmp_path / "pairs.npz"
    n_pairs = sample_images(models / "image.pt", structures, pairs, sampling=SAMPLING)
    with np.load(structures) as s, np.load(pairs) as p:
        kept = s["n_nuclei"] > 0
        assert n_pairs == kept.sum() == len(p["images"]) > 0
        assert p["images"].dtype == np.uint8 and p["images"].shape[1:] == (32, 32, 3)
        assert np.array_equal(p["instances"], s["instances"][kept])

    augmented = build_augmented_set(tiny_labelled_csv, [pairs], tmp_path / "augmented.csv")
    labelled = read_sample_table(tiny_labelled_csv)
    assert len(augmented) == len(labelled) + n_pairs
    reader = SampleReader(read_sample_table(tmp_path / "augmented.csv"))
    rgb, inst = reader[len(reader) - 1]  # the last row is synthetic
    assert rgb.shape == (32, 32, 3) and inst.shape == (32, 32)


def test_colour_transfer_gives_each_image_the_colours_of_a_real_patch(models, tmp_path, tiny_labelled_csv):
    """With a colour reference, ``images`` are the sampled images (kept as ``sampled_images``)
    with the CIELAB mean and std of the real patch ``colour_reference`` names, drawn per sample
    among the real patches nearest in nuclear area fraction (the same sample draws the same
    patch in another run); labels and structures are untouched."""
    structures = tmp_path / "structures.npz"
    sample_structures(
        models / "structure.pt", structures, n_total=4, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED
    )
    plain, moved = tmp_path / "plain.npz", tmp_path / "moved.npz"
    sample_images(models / "image.pt", structures, plain, sampling=SAMPLING)
    sample_images(models / "image.pt", structures, moved, sampling=SAMPLING, colour_reference=tiny_labelled_csv)
    reference = colour_transfer.real_colours(tiny_labelled_csv)
    with np.load(plain) as p, np.load(moved) as m:
        assert "sampled_images" not in p.files and np.array_equal(m["sampled_images"], p["images"])
        for key in ("sample_index", "instances", "structures"):
            assert np.array_equal(m[key], p[key])
        rows = m["colour_reference"]
        assert rows.shape == (len(m["images"]),) and rows.min() >= 0 and rows.max() < len(reference)
        k = max(1, round(colour_transfer.COLOUR_NEIGHBOURS * len(reference)))
        for inst, r in zip(m["instances"], rows):
            gaps = np.abs(reference["foreground_fraction"] - (inst > 0).mean())
            assert gaps[r] <= np.sort(gaps)[k - 1]  # among the k nearest
        got = colour_statistics(m["images"])
        reference = reference.drop(columns="foreground_fraction")
        for k, r in enumerate(rows):
            # rounding to uint8 and clipping to sRGB keep it from being exact
            np.testing.assert_allclose(got.iloc[k, :3], reference.iloc[r, :3], atol=2.0)
            np.testing.assert_allclose(got.iloc[k, 3:], reference.iloc[r, 3:], rtol=0.2, atol=1.0)
        first_rows = rows.copy()
    sample_images(models / "image.pt", structures, moved, sampling=SAMPLING, colour_reference=tiny_labelled_csv)
    with np.load(moved) as m:
        assert np.array_equal(m["colour_reference"], first_rows)


def test_colour_donors_are_near_in_nuclear_fraction_and_seeded():
    """Donors come from the nearest tenth by foreground fraction (here: 2 of 20), vary with
    the sample index, and repeat for the same (seed, index)."""
    reference = pd.DataFrame({"foreground_fraction": np.linspace(0.0, 0.95, 20)})
    fractions, indices = np.full(50, 0.51), np.arange(50)
    rows = colour_transfer.colour_donors(fractions, indices, reference, seed=3)
    assert set(rows) == {10, 11}  # fractions 0.5 and 0.55, the two nearest to 0.51
    assert np.array_equal(rows, colour_transfer.colour_donors(fractions, indices, reference, seed=3))
    assert not np.array_equal(rows, colour_transfer.colour_donors(fractions, indices, reference, seed=4))


def test_transfer_colour_moves_the_lab_moments():
    """A pale cyan patch takes the CIELAB mean and std of a pink one; a flat patch takes the mean."""
    rng = np.random.default_rng(1)
    pink = np.clip(np.array([200.0, 130, 180]) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    cyan = np.clip(np.array([215.0, 235, 235]) + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
    target = colour_statistics([pink]).iloc[0]
    moved = transfer_colour(cyan, target[["L_mean", "a_mean", "b_mean"]], target[["L_std", "a_std", "b_std"]])
    got = colour_statistics([moved]).iloc[0]
    np.testing.assert_allclose(got, target, atol=1.0)
    flat = transfer_colour(np.full((4, 4, 3), 128, np.uint8), [60.0, 25.0, -10.0], [5.0, 5.0, 5.0])
    np.testing.assert_allclose(colour_statistics([flat]).iloc[0, :3], [60, 25, -10], atol=1.0)
    assert np.ptp(flat.reshape(-1, 3), axis=0).max() == 0


def test_images_need_the_image_model(models, tmp_path):
    structures = tmp_path / "structures.npz"
    sample_structures(
        models / "structure.pt", structures, n_total=2, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED
    )
    with pytest.raises(ValueError, match="expected 'image'"):
        sample_images(models / "structure.pt", structures, tmp_path / "pairs.npz", sampling=SAMPLING)
    assert not (tmp_path / "pairs.npz").exists()


def test_a_killed_sampling_job_resumes_from_its_finished_batches(models, tmp_path, monkeypatch):
    import nudiff.diffusion.synthesis as synthesis

    kwargs = dict(n_total=5, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED)
    sample_structures(models / "structure.pt", tmp_path / "reference.npz", **kwargs)

    original, calls = synthesis.sample, {"n": 0}

    def dies_on_second_batch(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")  # what a kill mid-batch looks like to the job
        return original(*args, **kw)

    monkeypatch.setattr(synthesis, "sample", dies_on_second_batch)
    resume = tmp_path / "ckpt" / "resume.npz"
    with pytest.raises(KeyboardInterrupt):
        sample_structures(models / "structure.pt", tmp_path / "out.npz", resume_file=resume, **kwargs)
    assert resume.is_file() and not (tmp_path / "out.npz").exists()

    monkeypatch.setattr(synthesis, "sample", original)
    calls["n"] = 0
    counting = lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), original(*a, **k))[1]  # noqa: E731
    monkeypatch.setattr(synthesis, "sample", counting)
    sample_structures(models / "structure.pt", tmp_path / "out.npz", resume_file=resume, **kwargs)
    assert calls["n"] == 2  # batches 2 and 3 of 3 (batch size 2); the first was kept
    assert not resume.exists()
    with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "out.npz") as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


# ---------------------------------------------------------------- consistent pairs


@pytest.fixture(scope="module")
def pairs(models, tmp_path_factory):
    """A structures shard of 4 samples and its pairs, with every condition guided_eps was given."""
    root = tmp_path_factory.mktemp("pairs")
    sample_structures(
        models / "structure.pt", root / "s.npz", n_total=4, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED
    )
    conds = []
    original = synthesis.guided_eps

    def recording(model, x, t, cond, scale):
        conds.append(cond.detach().clone())
        return original(model, x, t, cond, scale)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthesis, "guided_eps", recording)
        sample_images(models / "image.pt", root / "s.npz", root / "p.npz", sampling=SAMPLING)
    with np.load(root / "s.npz") as st, np.load(root / "p.npz") as p:
        return {k: st[k] for k in st.files}, {k: p[k] for k in p.files}, conds


def test_every_label_has_the_structure_its_image_was_conditioned_on(pairs):
    """In both shards, structures[i] is exactly nuclei_structure(instances[i]) for every sample,
    and the pairs shard keeps the structures shard's raw and cleaned arrays of the kept samples."""
    structures_shard, pairs_shard, _ = pairs
    assert len(pairs_shard["images"]) > 0
    for shard in (structures_shard, pairs_shard):
        assert shard["structures"].dtype == np.float32
        for structure, inst in zip(shard["structures"], shard["instances"]):
            assert np.array_equal(structure, nuclei_structure(inst).astype(np.float32))
    kept = structures_shard["n_nuclei"] > 0
    assert np.array_equal(structures_shard["n_nuclei"], structures_shard["instances"].max(axis=(1, 2)))
    for key in ("sample_index", "sampled_structures", "instances", "structures"):
        assert np.array_equal(pairs_shard[key], structures_shard[key][kept]), key


def test_images_are_conditioned_on_the_structure_of_their_label(pairs):
    """guided_eps gets, for the pairs of each batch of 2 in turn, structure_to_model_range of
    nuclei_structure(instances) channels first; not the raw sampled structure (whose soft
    semantic channel differs)."""
    _, pairs_shard, conds = pairs
    instances = pairs_shard["instances"]
    expected = [
        torch.from_numpy(
            structure_to_model_range(np.stack([nuclei_structure(i) for i in instances[k : k + 2]]).astype(np.float32))
        ).permute(0, 3, 1, 2)
        for k in range(0, len(instances), SAMPLING.batch_size)
    ]
    seen = []  # the distinct conditions in call order: one per batch
    for cond in conds:
        if not seen or not torch.equal(cond, seen[-1]):
            seen.append(cond)
    assert len(seen) == len(expected) and len(conds) >= len(expected) * SAMPLING.steps
    for got, want in zip(seen, expected):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    raw = structure_to_model_range(pairs_shard["sampled_structures"][:2])
    assert not np.allclose(raw, seen[0].permute(0, 2, 3, 1).numpy())


def test_labels_are_the_cleaned_watershed_of_the_sampled_structures(pairs):
    """instances = clean_instances(watershed(sampled_structures)) with the default cleanup: every
    nucleus has at least min_area pixels, is one 8-connected piece without background holes, and
    ids run 1..n."""
    structures_shard, _, _ = pairs
    cleanup = CleanupSettings()
    n_checked = 0
    for raw, inst in zip(structures_shard["sampled_structures"], structures_shard["instances"]):
        assert np.array_equal(inst, clean_instances(instances_from_structure(raw, **WATERSHED), **asdict(cleanup)))
        ids = np.unique(inst[inst > 0])
        assert ids.tolist() == list(range(1, len(ids) + 1))
        for k in ids:
            mask = inst == k
            assert mask.sum() >= cleanup.min_area
            assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 1
            assert not (ndimage.binary_fill_holes(mask) & (inst == 0)).any()
            n_checked += 1
    assert n_checked > 0


def test_a_resume_file_of_other_cleanup_settings_is_ignored(models, tmp_path, monkeypatch):
    """A job killed after its first batch under the default cleanup, rerun with another cleanup,
    samples all 3 batches again and writes what a fresh run with that cleanup writes."""
    other = CleanupSettings(min_area=0, fill_holes=False, largest_fragment=False)
    kwargs = dict(n_total=5, n_shards=1, shard=0, sampling=SAMPLING, watershed=WATERSHED)
    sample_structures(models / "structure.pt", tmp_path / "reference.npz", cleanup=other, **kwargs)

    original, calls = synthesis.sample, {"n": 0}

    def dies_on_second_batch(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kw)

    monkeypatch.setattr(synthesis, "sample", dies_on_second_batch)
    resume = tmp_path / "resume.npz"
    with pytest.raises(KeyboardInterrupt):
        sample_structures(models / "structure.pt", tmp_path / "out.npz", resume_file=resume, **kwargs)
    with np.load(resume) as saved, np.load(tmp_path / "reference.npz") as reference:
        # the finished batch of the default cleanup is not what the other cleanup gives
        assert not np.array_equal(saved["0/instances"], reference["instances"][:2])
    calls["n"] = 0
    counting = lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), original(*a, **k))[1]  # noqa: E731
    monkeypatch.setattr(synthesis, "sample", counting)
    sample_structures(models / "structure.pt", tmp_path / "out.npz", resume_file=resume, cleanup=other, **kwargs)
    assert calls["n"] == 3
    with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "out.npz") as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
