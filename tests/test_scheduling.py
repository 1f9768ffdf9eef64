"""Job priorities: the way to the synthetic pairs goes before the segmenters that can wait.

A Snakemake priority does not pass to a job's inputs, so a subset whose data jobs kept the
default priority waited behind every ready segmenter: the demo's 100% generator started after
7 of its 17.8 minutes (docs/records/2026-12-05-demo-fresh-clone-pffnet900).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def planned_priorities(workdir: Path, preset: Path) -> dict[str, set[int]]:
    """Rule -> the priorities of its jobs in a forced dry run of ``preset``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "--forceall"]
    cmd += ["--directory", str(workdir), "--configfile", str(preset)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    priorities: dict[str, set[int]] = {}
    for block in re.split(r"^\s*(?:local)?rule ", result.stdout, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0].strip()
        found = re.search(r"^\s+priority: (-?\d+)$", block, re.MULTILINE)
        priorities.setdefault(rule, set()).add(int(found[1]) if found else 0)
    return priorities


def test_each_subsets_way_to_the_pairs_goes_before_the_segmenters(tmp_path):
    priorities = planned_priorities(tmp_path, REPO / "config" / "config.yaml")
    segmenters = priorities["train_segmenter"]
    assert len(segmenters) == 1 and min(segmenters) > 0, segmenters
    for rule in ("select_subset", "hold_out_validation", "train_structure_model", "train_image_model_conditional"):
        assert priorities[rule], rule
        assert min(priorities[rule]) > max(segmenters), f"{rule}: {priorities[rule]} vs train_segmenter {segmenters}"
