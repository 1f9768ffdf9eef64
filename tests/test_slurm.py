"""The Slurm profile against a real Slurm: config/tiny.yaml through ``--profile profiles/slurm``.

Needs the one-node test cluster of ``.ci/slurm/up.sh`` (fake GPUs of type
"fake"; .ci/run starts it); skipped without it. Jobs go through sbatch and srun
as on a cluster, with the command-line overrides a cluster without accounting
needs (squeue instead of sacct, a short first status delay, the local partition).

The Makefile runs pytest with ``--dist loadfile``, so each of these files runs on one
worker and its expensive runs happen once (``xdist_group`` marks have no effect with
pytest 9.2 and pytest-xdist 3.8).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "config" / "tiny.yaml"
# gpu_model "fake" for some GPU rules (the CI cluster's GRES type); the others keep plain gpu: 1
SLURM_CI = REPO / "tests" / "data" / "slurm_ci.yaml"
PROFILE = REPO / "profiles" / "slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
ACCOUNT = "nudiff-ci"  # without accounting, Slurm accepts any account name
GPU_TYPE = "fake"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


# ---- the cluster and the command ------------------------------------------------------


def local_partition() -> str:
    """The default partition of an idle local test cluster, or skip saying what is missing."""
    if shutil.which("sinfo") is None:
        pytest.skip("no Slurm here (sinfo not found); start the test cluster with sudo .ci/slurm/up.sh")
    out = subprocess.run(["sinfo", "-h", "-o", "%P|%t|%G"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"sinfo failed (is slurmctld running? sudo .ci/slurm/up.sh): {out.stderr.strip()}")
    rows = [line.split("|") for line in out.stdout.split()]
    default = [r for r in rows if r[0].endswith("*")]
    if not default:
        pytest.skip(f"Slurm has no default partition: {out.stdout!r}")
    mine = [r for r in rows if r[0] == default[0][0]]
    name = default[0][0].rstrip("*")
    if not any(r[1] in ("idle", "mix", "alloc") for r in mine):
        pytest.skip(f"no usable node in Slurm partition {name}: {out.stdout!r}")
    if not any(f"gpu:{GPU_TYPE}:" in r[2] for r in mine):
        pytest.skip(f"partition {name} has no gpu:{GPU_TYPE} GRES: not the test cluster of .ci/slurm/up.sh")
    return name


def node_cpus(partition: str) -> str:
    """CPUs of the partition's nodes (the test cluster has one node: the machine's cores)."""
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%c"], capture_output=True, text=True, check=True)
    return out.stdout.split()[0].rstrip("+")


def slurm_command(workdir: Path, partition: str, configs: list[str], *targets: str) -> list[str]:
    """snakemake with the profile, plus what the CI cluster (no accounting) needs on top."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    # A command-line --default-resources replaces the profile's whole list: repeat the rest of it.
    resources = dict(profile["default-resources"], slurm_partition=partition, slurm_account=ACCOUNT)
    return [
        *SNAKEMAKE,
        *targets,
        "--directory",
        str(workdir),
        "--configfile",
        *configs,
        "--profile",
        str(PROFILE),
        "--slurm-status-command",
        "squeue",  # sacct would hang without accounting
        "--slurm-init-seconds-before-status-checks",
        "1",  # default 40 s
        "--slurm-keep-successful-logs",  # the checks read them
        "--retries",
        "0",  # fail fast in CI rather than retrying a broken job
        "--cores",
        node_cpus(partition),  # the most one (group) job may ask for: more would wait forever
        "--default-resources",
        *[f"{key}={value}" for key, value in resources.items()],
    ]


def cancel_jobs_in(workdir: Path) -> None:
    """scancel whatever a test left in the queue (its jobs are the ones working in ``workdir``)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True)
    ids = [line.split("|")[0] for line in out.stdout.split() if line.endswith(f"|{workdir}")]
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def start(cmd: list[str], output: Path) -> subprocess.Popen:
    """``cmd`` in a process group of its own, output to a file; jobs see only Slurm's GPUs."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    with open(output, "w") as stream:
        return subprocess.Popen(cmd, stdout=stream, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop a started snakemake if it still runs: SIGINT (it cancels its Slurm jobs), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def finish(proc: subprocess.Popen, output: Path, workdir: Path, timeout: float) -> str:
    """Wait for a started snakemake; on timeout stop it and fail."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        cancel_jobs_in(workdir)
        raise AssertionError(f"{' '.join(proc.args)} ran over {timeout} s:\n{output.read_text()[-4000:]}") from None
    out = output.read_text()
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed (files in {workdir}):\n{out[-4000:]}"
    return out


def run(cmd: list[str], workdir: Path, timeout: float = 1200) -> str:
    output = workdir.parent / f"{workdir.name}.out"
    return finish(start(cmd, output), output, workdir, timeout)


def report_timing(line: str) -> None:
    """Print a timing (seen with pytest -s) and append it to $NUDIFF_TIMINGS (which .ci/run prints)."""
    print(line)
    if os.environ.get("NUDIFF_TIMINGS"):
        with open(os.environ["NUDIFF_TIMINGS"], "a") as f:
            f.write(line + "\n")


def scontrol_job(job_id: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def gpu_rules() -> set[str]:
    """GPU_RULES of rules/common.smk: the rules that ask for a GPU by default."""
    source = (REPO / "rules" / "common.smk").read_text()
    match = re.search(r"^GPU_RULES = (\{.*?\})", source, re.S | re.M)
    assert match, "GPU_RULES not found in rules/common.smk"
    return set(ast.literal_eval(match.group(1)))


def slurm_jobs(workdir: Path) -> list[dict]:
    """One entry per sbatch job of a run: its rules, Slurm job id, log and ``scontrol show job`` fields.

    The logs are .snakemake/slurm_logs/rule_<rule>/.../<id>.log (group_<group>_... for a
    job group); the rules a job ran are read from its log, where Snakemake lists them.
    """
    jobs = []
    for log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
        text = log.read_text()
        rules = set(re.findall(r"^(?:local)?rule (\w+):$", text, re.M))
        jobs.append(
            {
                "rules": rules,
                "id": log.stem,
                "log": text,
                "name": log.relative_to(workdir).as_posix(),
                **scontrol_job(log.stem),
            }
        )
    return jobs


# ---- what "the same results" means ----------------------------------------------------
# Every file under results/ exists in both runs and has the same content, except for
# what is not deterministic by design:
#   *.csv with a "seconds" column  (loss tables) that column: wall time per step
#   prepared/manifest.csv  source_image/source_label hold absolute paths (the run's own folder)
#   provenance.json        only seeds, data and config: created_utc, hostname, git (the
#                          working tree), packages and devices describe when and where it ran
#   provenance.html        skipped: provenance.json rendered
#   *.pt                   torch.save archives name their members after the temporary file they
#                          were written to; compared tensor by tensor (exactly) after torch.load
#   *.npz                  compared array by array (exactly), independent of zip metadata
#   .snakemake_timestamp   Snakemake's empty marker files of directory outputs
# Everything else (csv, json, png, tif, ...) is compared byte for byte: all runs are seeded.
WHEN_AND_WHERE = ("created_utc", "hostname", "git", "packages", "devices")


def comparable(path: Path, root: Path):
    if path.name in (".snakemake_timestamp", "provenance.html"):
        return None
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    if path.suffix == ".csv":
        table = pd.read_csv(path).drop(columns="seconds", errors="ignore")
        return table.replace(re.escape(str(root)), "<run>", regex=True)
    if path.name == "provenance.json":
        record = json.loads(path.read_text().replace(str(root), "<run>"))
        return {key: value for key, value in record.items() if key not in WHEN_AND_WHERE}
    return path.read_bytes()


def assert_same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    else:
        assert a == b, where


def assert_same_results(slurm_dir: Path, local_dir: Path) -> None:
    files = sorted(p.relative_to(local_dir) for p in (local_dir / "results").rglob("*") if p.is_file())
    assert sorted(p.relative_to(slurm_dir) for p in (slurm_dir / "results").rglob("*") if p.is_file()) == files
    assert any(f.suffix == ".pt" for f in files) and any(f.suffix == ".npz" for f in files)
    for rel in files:
        assert_same(comparable(local_dir / rel, local_dir), comparable(slurm_dir / rel, slurm_dir), str(rel))


# ---- the tests ------------------------------------------------------------------------------


def test_tiny_workflow_through_the_slurm_profile_uses_gpus_and_matches_a_local_run(tmp_path):
    partition = local_partition()
    slurm_dir, local_dir = tmp_path / "slurm_run", tmp_path / "local_run"
    configs = [str(TINY), str(SLURM_CI)]

    # The local reference runs alongside: the Slurm run spends much of its time waiting.
    local_out, slurm_out = tmp_path / "local_run.out", tmp_path / "slurm_run.out"
    tic = time.monotonic()
    local = start([*SNAKEMAKE, "--directory", str(local_dir), "--configfile", *configs, "--cores", "2"], local_out)
    slurm = start(slurm_command(slurm_dir, partition, configs), slurm_out)
    try:
        output = finish(slurm, slurm_out, slurm_dir, timeout=1800)
        report_timing(
            f"tiny workflow through Slurm (--profile profiles/slurm): {time.monotonic() - tic:.0f} s wall"
            " (a local run of it alongside)"
        )
        finish(local, local_out, local_dir, timeout=600)
        report_timing(f"tiny workflow through Slurm and locally, together: {time.monotonic() - tic:.0f} s wall")
    finally:
        for proc in (slurm, local):
            stop(proc)
        cancel_jobs_in(slurm_dir)

    # Every job went through sbatch, to the given partition and account, and completed.
    jobs = slurm_jobs(slurm_dir)
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", output))
    assert submitted and submitted == {job["id"] for job in jobs}
    for job in jobs:
        assert job["rules"], f"no rule named in {job['name']}"
        assert job["JobState"] == "COMPLETED", (job["name"], job["JobState"])
        assert job["Partition"] == partition and job["Account"] == ACCOUNT, job["name"]
        # the profile's slurm-requeue: the CI cluster requeues only jobs submitted with --requeue
        assert job["Requeue"] == "1", job["name"]

    # GPU rules asked for a GPU and got one; no other rule did.
    with_model = set(yaml.safe_load(SLURM_CI.read_text())["resources"])
    expected_gpu = gpu_rules()
    ran = set().union(*(job["rules"] for job in jobs))
    assert ran & expected_gpu and ran - expected_gpu, ran  # the tiny DAG has both kinds
    for job in jobs:
        # the TaskProlog of .ci/slurm/up.sh writes each task's devices at the top of the job's log
        devices = re.findall(r"nudiff-ci-task: job=\d+ step=\S* CUDA_VISIBLE_DEVICES=(\S*)", job["log"])
        assert devices, f"no TaskProlog line in {job['name']}"
        if job["rules"] & expected_gpu:
            # sbatch --gpus=fake:1 where the config names the model, --gpus=1 otherwise
            wanted = f"gres:gpu:{GPU_TYPE}:1" if job["rules"] <= with_model else "gres:gpu:1"
            assert job.get("TresPerJob") == wanted, (job["name"], job.get("TresPerJob"))
            # one device, the same in the batch step and in the srun step that ran the rule
            assert len(set(devices)) == 1 and devices[0] in ("0", "1"), (job["name"], devices)
        else:
            assert "gpu" not in job.get("TresPerJob", ""), (job["name"], job.get("TresPerJob"))
            assert set(devices) == {""}, (job["name"], devices)

    requests = [job.get("TresPerJob", "") for job in jobs]
    gpu_requests = {tres: requests.count(tres) for tres in sorted(set(requests)) if "gpu" in tres}
    report_timing(
        f"tiny workflow through Slurm: {len(jobs)} sbatch jobs, all COMPLETED; GPU requests "
        + ", ".join(f"{tres} x {count}" for tres, count in gpu_requests.items())
    )
    assert_same_results(slurm_dir, local_dir)
    report_timing("tiny workflow through Slurm: every results/ file equals the local run's")


MODEL = "results/tiny/100pct/diffusion/structure_model.pt"
CHECKPOINTS = "checkpoints/tiny/100pct/structure_model"
TRAIN_LOG = "logs/tiny/100pct/train_structure_model.log"


def checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / CHECKPOINTS
    names = (re.match(r"^step_(\d{9})\.pt$", p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in names if m)


def wait_for(condition, what: str, proc: subprocess.Popen, output: Path, timeout: float = 900):
    """Poll ``condition`` until it returns something true, while ``proc`` keeps running."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        ended = proc.poll() is not None
        assert not ended, f"snakemake ended (exit {proc.returncode}) before {what}:\n{output.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)
    return value


def test_a_requeued_training_job_resumes_from_its_checkpoint(tmp_path):
    """What a preemption with requeue does (PreemptMode=REQUEUE, or ``scontrol requeue``):
    Slurm sends the running job SIGTERM, puts it back in the queue and starts it again
    later, under the same job id. The training must resume from the checkpoint it wrote
    on SIGTERM, Snakemake must just wait, and the model must equal an uninterrupted one."""
    partition = local_partition()
    config = tmp_path / "long_training.yaml"  # long enough to be caught halfway
    config.write_text(
        yaml.safe_dump({"diffusion": {"structure_model": {"training": {"iterations": 300, "checkpoint_every": 100}}}})
    )
    configs = [str(TINY), str(config)]
    requeued, straight = tmp_path / "requeued", tmp_path / "uninterrupted"
    # its inputs, locally: only the training goes through Slurm
    labelled = "results/tiny/100pct/trainsets/labelled_train.csv"  # the structure model's input
    run([*SNAKEMAKE, labelled, "--directory", str(requeued), "--configfile", *configs, "--cores", "2"], requeued)
    shutil.copytree(requeued, straight, symlinks=True)
    reference = start(
        [*SNAKEMAKE, MODEL, "--directory", str(straight), "--configfile", *configs, "--cores", "1"],
        tmp_path / "uninterrupted.out",
    )

    output = tmp_path / "requeued_slurm.out"
    snakemake = start(slurm_command(requeued, partition, configs, MODEL), output)
    try:
        submitted = wait_for(
            lambda: re.findall(r"submitted with SLURM jobid (\d+)", output.read_text()), "sbatch", snakemake, output
        )
        job_id = submitted[0]
        first = wait_for(lambda: checkpoint_steps(requeued), "checkpoint", snakemake, output)[-1]
        subprocess.run(["scontrol", "requeue", job_id], check=True)  # refused without sbatch --requeue
        # Back in the queue (Slurm holds a requeued job for the credential lifetime, 20 s here).
        wait_for(
            lambda: scontrol_job(job_id).get("JobState") == "PENDING",
            "pending job after the requeue",
            snakemake,
            output,
        )
        stopped_at = checkpoint_steps(requeued)[-1]
        assert f"stopped by signal {signal.SIGTERM.value} at step {stopped_at}" in (requeued / TRAIN_LOG).read_text()
        assert first < stopped_at < 300
        assert not (requeued / MODEL).exists()

        finish(snakemake, output, requeued, timeout=600)
        finish(reference, tmp_path / "uninterrupted.out", straight, timeout=600)
    finally:
        for proc in (snakemake, reference):
            stop(proc)
        cancel_jobs_in(requeued)

    job = scontrol_job(job_id)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", job
    assert f"(step {stopped_at})" in (requeued / TRAIN_LOG).read_text()  # "resumed from ... (step N)"
    assert_same(comparable(requeued / MODEL, requeued), comparable(straight / MODEL, straight), MODEL)
    report_timing(
        f"Slurm requeue: job {job_id} got SIGTERM at step {stopped_at}, restarted (Restarts=1), resumed;"
        " final weights equal an uninterrupted run's"
    )
