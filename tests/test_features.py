"""ResNet50 patch features: shape, determinism, and weights that never download."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from nudiff.errors import ConfigError
from nudiff.features import extract_features, load_resnet50


def patches(n=3, size=32):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_features_are_2048_d_and_seeded():
    a = extract_features(patches(), weights="none", resize=32, crop=32, batch_size=2, seed=1)
    b = extract_features(patches(), weights="none", resize=32, crop=32, batch_size=3, seed=1)
    assert a.shape == (3, 2048) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # batching changes a patch only by float rounding
    c = extract_features(patches(), weights="none", resize=32, crop=32, seed=2)
    assert not np.allclose(a, c)


def test_untrained_weights_are_logged_loudly(caplog):
    load_resnet50("none")
    assert any("UNTRAINED RESNET50" in r.message for r in caplog.records)


def test_a_weights_file_is_loaded(tmp_path):
    torch.manual_seed(5)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    model = load_resnet50(tmp_path / "resnet50.pth")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_missing_imagenet_cache_names_the_file_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="features.weights") as err:
        load_resnet50("imagenet")
    assert str(tmp_path) in str(err.value)


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.pth"):
        load_resnet50(tmp_path / "nope.pth")
