"""The GPU check (``make gpu-check``, tests/benchmarks/gpu_check.py) without a GPU.

Run as a user runs it: a subprocess from the repository root. Its skip path must exit 0 (so
``make gpu-check`` on a laptop or in CI is not an error) and its CPU mode must write the JSON
and Markdown with every field the GPU run fills.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # a guard against a hang, not a speed check (a loaded CI machine is slow)
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_without_a_gpu_it_says_it_skipped_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this tests the skip on a GPU machine too
    result = run_check("--out-dir", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "gpu-check: SKIPPED, no CUDA GPU is visible" in result.stdout
    assert "--device cpu" in result.stdout
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_cpu_mode_writes_json_and_markdown_with_every_field(tmp_path):
    result = run_check(
        "--device",
        "cpu",
        "--parts",
        "train,sample,infer",
        "--threads",
        "1",
        "--train-steps",
        "0+1",
        "--sample-steps",
        "2",
        "--image-side",
        "64",
        "--out-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert data["device"]["type"] == "cpu" and data["device"]["peak_bf16_tflops"] is None
    assert data["size"] == "tiny" and data["failed"] == []
    assert set(data["part_seconds"]) == {"train", "sample", "infer"}
    rates = {"seconds", "gflop", "achieved_tflops", "mfu", "peak_memory_gib", "precision", "batch", "params_m"}
    assert [r["network"] for r in data["train"]] == ["structure U-Net", "image U-Net (SPADE)", "Hover-Net"]
    for row in data["train"]:
        assert rates | {"steps_per_second"} <= set(row)
        assert row["steps_per_second"] > 0 and row["gflop"] > 0 and row["mfu"] is None  # no peak for a CPU
    sample = {r["network"]: r for r in data["sample"]}
    assert set(sample) == {"structure U-Net", "image U-Net (SPADE)"}
    for row in sample.values():
        assert rates | {"images_per_second", "net_batch", "configured_steps"} <= set(row)
        assert row["images_per_second"] > 0
    # classifier-free guidance: one pass over the doubled batch (tiny config: w = 1)
    assert sample["image U-Net (SPADE)"]["net_batch"] == 2 * sample["image U-Net (SPADE)"]["batch"]
    assert sample["structure U-Net"]["net_batch"] == sample["structure U-Net"]["batch"]
    (infer,) = data["infer"]
    assert rates | {"tiles", "image_side", "images_per_second"} <= set(infer)
    assert infer["image_side"] == 64 and infer["tiles"] > 0
    markdown = (tmp_path / "gpu_check_cpu.md").read_text()
    for text in (
        "## GPU check, CPU mode",
        "Command (from the repository root)",
        "### Training steps",
        "### Sampling",
        "### Hover-Net inference",
        "MFU",
        "n/a",
        "image U-Net (SPADE)",
    ):
        assert text in markdown
    assert (tmp_path / "gpu_check_cpu.csv").is_file()


def test_the_workflow_runs_every_stage_on_the_device():
    config = gpu_check.workflow_config("cuda")
    tiny = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    for stage in ("features", "diffusion", "segmentation"):
        assert config[stage]["device"] == "cuda"
        assert {k: v for k, v in config[stage].items() if k != "device"} == {
            k: v for k, v in tiny[stage].items() if k != "device"
        }
    # every device key of the schema is one of these stages
    schema = (REPO / "config" / "schema.yaml").read_text()
    assert schema.count('device: {$ref: "#/$defs/device"') == len(gpu_check.WORKFLOW_STAGES)


def test_job_logs_are_read_for_the_device(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.log").write_text("2026 INFO job on node1 with 1 thread(s), GPU NVIDIA H200\n")
    (tmp_path / "sample.log").write_text("2026 INFO job on node1 with 1 thread(s), no GPU\n")
    (tmp_path / "cluster.log").write_text("2026 INFO job on node1 with 1 thread(s)\n")  # no torch
    assert gpu_check.job_devices(tmp_path) == {"gpu": 1, "no_gpu": 1, "gpu_names": ["NVIDIA H200"]}


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", None),
        ("Tesla V100-SXM2-32GB", None),
        (None, None),
    ],
)
def test_peak_table(name, tflops):
    assert gpu_check.peak_bf16_tflops(name) == tflops
