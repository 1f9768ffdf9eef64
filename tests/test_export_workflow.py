"""The export targets in the workflow (rules/export.smk), by dry runs on the demo config: after a
finished run they plan only export jobs, and N more pairs retrain nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "config.yaml"


def snakemake(workdir: Path, *args: str, configs: tuple[Path, ...] = (DEMO,)) -> str:
    # args (targets included) first: --configfile takes any number of files and would swallow targets
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    cmd += ["--directory", str(workdir), "--configfile", *map(str, configs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def planned(workdir: Path, *targets: str, configs: tuple[Path, ...] = (DEMO,)) -> dict[str, int]:
    counts = {}
    for line in snakemake(workdir, *targets, "-n", "--quiet", "rules", configs=configs).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    """A working directory where every output of the demo's rule all exists (as after
    ``make demo``): files are empty, directory outputs (no suffix) empty folders."""
    workdir = tmp_path_factory.mktemp("finished_demo")
    summary = snakemake(workdir, "--summary")
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if line.startswith("results/")]
    assert len(outputs) > 50
    for name in outputs:
        path = workdir / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    snakemake(workdir, "--cores", "1", "--touch")  # what a finished run leaves: dates in order, metadata
    assert planned(workdir) == {}  # the demo is finished
    return workdir


def test_exports_of_a_finished_run_plan_only_export_jobs(finished_demo):
    jobs = planned(finished_demo, "results/demo/10pct/export/pairs", "results/demo/100pct/export/augmented")
    assert jobs == {"export_training_set": 2}


def test_more_pairs_plan_sampling_and_export_and_retrain_nothing(finished_demo):
    jobs = planned(finished_demo, "results/demo/10pct/export/extra64")
    # two shards (diffusion.sampling.shards); each samples structures (with their cleanup) and images
    assert jobs == {"sample_extra_structures": 2, "sample_extra_images": 2, "export_training_set": 1}


def test_label_to_image_needs_its_folder_and_uses_a_finished_model(finished_demo, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"label_to_image: {{labels: {maps}, subset: 10, n_per_map: 2}}\n")
    assert planned(finished_demo, "results/label_to_image", configs=(DEMO, overlay)) == {"label_to_image": 1}
    with pytest.raises(AssertionError, match="label_to_image.labels: set it"):
        planned(finished_demo, "results/label_to_image")
