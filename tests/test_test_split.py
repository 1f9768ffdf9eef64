"""The test split is read only by test-image inference, scoring and what is made from scores.

For every preset, the whole DAG (a forced dry run) is built and every job's inputs are read:
a job of any other rule whose input reaches ``results/<dataset>/prepared/test`` fails the test.
Choices (weights, recipes, settings) can then only have seen training and validation images.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml")
# the rules that may read the test split: inference on it, scoring, and figures of scores
TEST_READERS = {
    "prepare_dataset",
    "segment_test_images",
    "score_predictions",
    "plot_prediction_overlays",
    "record_provenance",
}
TEST_SPLIT = re.compile(r"results/[^/,\s]+/prepared/test\b")

pytestmark = pytest.mark.slow


def fake_sources(root: Path) -> None:
    """Empty files in the MoNuSeg and Kumar layouts: a dry run lists source files, never reads them."""
    for split in ("train", "test"):
        for stem in ("TCGA-A", "TCGA-B"):
            for suffix in (".tif", ".xml"):
                path = root / "data" / "monuseg" / split / f"{stem}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            for folder, suffix in (("Images", ".tif"), ("Labels", ".mat")):
                path = root / "data" / "kumar" / split / folder / f"{stem}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()


def planned_inputs(workdir: Path, preset: Path, snakefile: Path = REPO / "Snakefile") -> list[tuple[str, str]]:
    """``(rule, input)`` of every job of a forced dry run of ``preset``."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile),
        "-n",
        "--forceall",
        "--directory",
        str(workdir),
        "--configfile",
        str(preset),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    pairs = []
    for block in re.split(r"^\s*(?:local)?rule ", result.stdout, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0].strip()
        found = re.search(r"^\s+input: (.*)$", block, re.MULTILINE)
        for item in found[1].split(", ") if found else []:
            pairs.append((rule, item.strip()))
    return pairs


@pytest.mark.parametrize("preset", PRESETS)
def test_only_inference_scoring_and_reports_read_the_test_split(preset, tmp_path):
    fake_sources(tmp_path)
    pairs = planned_inputs(tmp_path, REPO / "config" / preset)
    readers = {rule for rule, item in pairs if TEST_SPLIT.search(item)}
    assert readers, f"{preset}: no job reads the test split (the parse above is broken)"
    assert readers <= TEST_READERS, f"{preset}: {sorted(readers - TEST_READERS)} read the test split"
    # the test split is scored, and nothing that trains or chooses a setting takes it
    assert {"segment_test_images", "score_predictions"} <= readers
    rules = {rule for rule, _ in pairs}
    assert "hold_out_validation" in rules


def test_the_dag_test_fails_when_a_training_rule_reads_the_test_split(tmp_path):
    """The check above can fail: a copy of the workflow whose extract_patches reads the test
    split is caught."""
    copy = tmp_path / "workflow"
    copy.mkdir()
    for name in ("Snakefile", "rules", "config", "workflow_scripts", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / name)
    data = copy / "rules" / "data.smk"
    data.write_text(
        data.read_text().replace(
            '"results/{dataset}/prepared/train",\n    output:\n        "results/{dataset}/patches/index.csv"',
            '"results/{dataset}/prepared/test",\n    output:\n        "results/{dataset}/patches/index.csv"',
        )
    )
    assert "prepared/test" in data.read_text().split("rule extract_patches")[1].split("rule ")[0]
    pairs = planned_inputs(tmp_path, REPO / "config" / "tiny.yaml", snakefile=copy / "Snakefile")
    readers = {rule for rule, item in pairs if TEST_SPLIT.search(item)}
    assert "extract_patches" in readers and not readers <= TEST_READERS
