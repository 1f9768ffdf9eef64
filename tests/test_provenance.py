"""Tests of the provenance record: keys, seeds, git state, checksums, JSON and HTML output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from nudiff.errors import InputDataError
from nudiff.provenance import (
    NOT_INSTALLED,
    collect_provenance,
    find_seeds,
    git_state,
    manifest_checksums,
    package_versions,
    record_provenance,
)

CONFIG = {
    "datasets": {"demo": {"format": "demo", "demo": {"seed": 0, "n_train": 8}}},
    "features": {"seed": 1, "weights": "none"},
    "selection": {"n_clusters": 6, "seed": 42},
    "segmentation": {"seeds": [0, 1, 2]},
    "runs": [{"name": "a", "seed": 7}],
}


def _manifest(path, rows):
    columns = [
        "name",
        "split",
        "height",
        "width",
        "n_nuclei",
        "image",
        "label",
        "source_image",
        "source_label",
        "source_sha256",
    ]
    full = [
        [n, s, 8, 8, 1, f"images/{n}.png", f"labels/{n}.tif", f"/src/{n}.tif", f"/src/{n}.xml", h] for n, s, h in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(full, columns=columns).to_csv(path, index=False)
    return path


ROWS = [("b", "test", "22" * 32), ("a", "train", "11" * 32), ("c", "train", "33" * 32)]


def test_find_seeds_reports_dotted_paths():
    assert find_seeds(CONFIG) == {
        "datasets.demo.demo.seed": 0,
        "features.seed": 1,
        "selection.seed": 42,
        "segmentation.seeds": [0, 1, 2],
        "runs[0].seed": 7,
    }


def test_checksums_known_digest_and_order_independent(tmp_path):
    first = manifest_checksums(_manifest(tmp_path / "one" / "manifest.csv", ROWS))
    # Known answer: sha256 of the "name<TAB>split<TAB>sha" lines sorted by name.
    lines = f"a\ttrain\t{'11' * 32}\nb\ttest\t{'22' * 32}\nc\ttrain\t{'33' * 32}\n"
    assert first["combined_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert [i["name"] for i in first["images"]] == ["a", "b", "c"]
    assert first["images"][1] == {
        "name": "b",
        "split": "test",
        "sha256": "22" * 32,
        "source_image": "/src/b.tif",
        "source_label": "/src/b.xml",
    }
    # Same rows in another order, given as the folder: same digest.
    shuffled = manifest_checksums(_manifest(tmp_path / "two" / "manifest.csv", ROWS[::-1]).parent)
    assert shuffled["combined_sha256"] == first["combined_sha256"]
    changed = [ROWS[0], ROWS[1], ("c", "train", "34" * 32)]
    other = manifest_checksums(_manifest(tmp_path / "three" / "manifest.csv", changed))
    assert other["combined_sha256"] != first["combined_sha256"]


def test_collect_provenance_keys_and_values(tmp_path):
    manifest = _manifest(tmp_path / "prepared" / "manifest.csv", ROWS)
    config = {**CONFIG, "patches": {"size": np.int64(64)}}
    prov = collect_provenance(config=config, manifests={"demo": manifest}, repo_dir=tmp_path)
    assert set(prov) == {"created_utc", "hostname", "git", "packages", "devices", "seeds", "data", "config"}
    assert prov["created_utc"].endswith("+00:00")
    assert prov["seeds"]["selection.seed"] == 42
    size = prov["config"]["patches"]["size"]  # numpy int64 in, plain int out
    assert size == 64 and type(size) is int
    assert prov["data"]["demo"]["n_images"] == 3
    assert prov["devices"]["cpu_cores"] == os.cpu_count()
    assert "cuda" in prov["devices"]
    assert prov["packages"]["numpy"] == np.__version__
    assert prov["packages"]["python"].count(".") == 2
    json.dumps(prov, allow_nan=False)  # JSON-ready
    # A list of manifests is keyed by the manifest's folder.
    listed = collect_provenance(config={}, manifests=[manifest], repo_dir=tmp_path)
    assert list(listed["data"]) == [str(manifest.parent)]


def test_missing_package_is_reported():
    versions = package_versions(("numpy", "no-such-distribution-nudiff"))
    assert versions["no-such-distribution-nudiff"] == NOT_INSTALLED
    assert versions["numpy"] == np.__version__


def test_git_state_outside_repo_does_not_fail(tmp_path, monkeypatch):
    # Keep git from finding a repository above the temporary folder.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None
    assert "git" in state["note"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_commit_and_dirty(tmp_path):
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    state = git_state(tmp_path)
    assert state["commit"] == git("rev-parse", "HEAD") and state["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and any("a.txt" in line for line in state["changed"])


def test_record_provenance_writes_json_and_html(tmp_path):
    manifest = _manifest(tmp_path / "prepared" / "manifest.csv", ROWS)
    out = tmp_path / "out"
    prov = record_provenance(CONFIG, {"demo": manifest}, tmp_path, out / "p.json", out / "p.html")
    assert json.loads((out / "p.json").read_text())["seeds"] == prov["seeds"]
    page = (out / "p.html").read_text()
    for text in (
        "<h2>Seeds</h2>",
        "<h2>Input data</h2>",
        "<h2>Packages</h2>",
        prov["data"]["demo"]["combined_sha256"],
        "selection.seed",
        "n_clusters: 6",
        "11" * 32,
    ):
        assert text in page, text


def test_bad_manifest_names_file_and_writes_nothing(tmp_path):
    bad = tmp_path / "prepared" / "manifest.csv"
    bad.parent.mkdir()
    pd.DataFrame({"name": ["a"], "split": ["train"]}).to_csv(bad, index=False)
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match="manifest.csv"):
        record_provenance(CONFIG, [bad], tmp_path, out / "p.json", out / "p.html")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(InputDataError, match="missing"):
        manifest_checksums(tmp_path / "missing" / "manifest.csv")
