"""Shared fixtures: a tiny generated dataset, prepared and cut into labelled patches."""

from __future__ import annotations

import pytest
import torch

from nudiff.datasets.demo import make_demo_dataset
from nudiff.datasets.prepare import prepare_dataset
from nudiff.datasets.sources import list_source_items
from nudiff.patches import build_patch_index
from nudiff.samples import real_samples, write_sample_table


def pytest_configure(config):
    # Module- and session-scoped fixtures (tiny trained models) run before the per-test
    # fixture below: one thread for them too, or they oversubscribe the 2 cores.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run side by side (pytest -n 2) on 2 cores: one thread each avoids oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A prepared demo dataset: 2 training and 1 test image of 64x64."""
    root = tmp_path_factory.mktemp("tiny")
    make_demo_dataset(root / "source", seed=3, n_train=2, n_test=1, image_size=64)
    prepare_dataset(list_source_items("folder", root / "source"), root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_labelled_csv(tiny_prepared):
    """A sample table of the 32x32 patches (stride 32) of the tiny training images."""
    from nudiff.datasets.prepare import read_manifest

    manifest = read_manifest(tiny_prepared / "manifest.csv")
    index = build_patch_index(manifest, size=32, stride=32)
    path = tiny_prepared.parent / "labelled.csv"
    write_sample_table(real_samples(index, manifest), path)
    return path
