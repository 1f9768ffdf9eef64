"""The Snakemake workflow itself: a real run of every rule on the tiny config, and its guards.

These tests run snakemake in a temporary working directory, as a user would
run it from a checkout, so that nothing here touches the repository's results/.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, config: Path = REPO / "config" / "tiny.yaml", check=True):
    # args (targets included) go first: --configfile takes any number of files and would swallow targets
    cmd = [*SNAKEMAKE, *args, "--directory", str(workdir), "--configfile", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def planned_jobs(workdir: Path, *targets: str, config: Path = REPO / "config" / "tiny.yaml") -> dict[str, int]:
    """Rule name -> job count of a dry run."""
    # targets before --quiet, which takes any number of values and would swallow them
    out = snakemake(workdir, *targets, "-n", "--quiet", "rules", config=config).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole DAG of config/tiny.yaml, run for real (a few minutes on 2 cores).

    It is run in two steps: first one subset's metrics only (what a user asking
    for one result gets), recording which files existed then; then everything.
    """
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir, "--cores", "2", "results/tiny/50pct/metrics.csv")
    after_one_target = sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*"))
    snakemake(workdir, "--cores", "2")
    return workdir, after_one_target


def test_one_real_target_built_only_its_ancestors(tiny_run):
    _, built = tiny_run
    assert "results/tiny/50pct/metrics.csv" in built
    assert not [p for p in built if p.startswith("results/tiny/100pct")]
    assert "results/table.csv" not in built and "results/tiny/subsets.csv" not in built


def test_every_rule_ran_and_wrote_its_outputs(tiny_run):
    tiny_run, _ = tiny_run
    results = tiny_run / "results" / "tiny"
    subsets = pd.read_csv(results / "subsets.csv")
    assert subsets["percent"].tolist() == [50, 100]
    assert subsets.loc[subsets["percent"] == 100, "achieved_share"].item() == 1.0
    for pct in (50, 100):
        augmented = pd.read_csv(results / f"{pct}pct" / "trainsets" / "augmented.csv")
        labelled = pd.read_csv(results / f"{pct}pct" / "trainsets" / "labelled.csv")
        assert len(augmented) >= len(labelled)
        assert (results / f"{pct}pct" / "synthetic" / "quality" / "samples.png").stat().st_size > 1000
    assert (results / "100pct" / "sampler_comparison" / "statistics.csv").is_file()
    metrics = pd.read_csv(results / "100pct" / "metrics.csv")
    arms = ["augmented", "labelled", "pretrained", "pretrained-real", "shuffled"]
    assert sorted(zip(metrics["model"], metrics["trainset"])) == [(m, a) for m in ("hovernet", "pffnet") for a in arms]
    # each arm against its control, seed by seed
    differences = pd.read_csv(results / "100pct" / "arm_differences.csv")
    assert set(zip(differences["arm"], differences["control"])) == {
        ("augmented", "labelled"),
        ("pretrained", "pretrained-real"),
        ("pretrained-real", "labelled"),
        ("shuffled", "augmented"),
        ("pretrained", "labelled"),
    }
    assert (results / "100pct" / "arms.png").stat().st_size > 1000
    # the validation images are held out of the generator's training set and of every arm's
    validation = set(pd.read_csv(results / "50pct" / "trainsets" / "validation.csv")["sample_id"])
    for name in ("labelled_train", "augmented", "shuffled"):
        assert not validation & set(pd.read_csv(results / "50pct" / "trainsets" / f"{name}.csv")["sample_id"])
    assert {"dice", "aji", "aji_plus", "dq", "sq", "pq", "n_images"} <= set(metrics.columns)
    table = pd.read_csv(tiny_run / "results" / "table.csv")
    assert len(table) == 20  # 2 subsets x 5 arms x (Hover-Net, PFF-Net)
    assert "PFF-Net" in (tiny_run / "results" / "table.md").read_text()
    assert "tiny" in (tiny_run / "results" / "table.md").read_text()
    # every rule wrote a non-empty log
    logs = list((tiny_run / "logs").rglob("*.log"))
    assert logs
    assert not [str(log) for log in logs if log.stat().st_size == 0]
    # checkpoints are removed once models are written
    assert not any((tiny_run / "checkpoints").rglob("*.pt"))


def test_a_second_run_has_nothing_to_do(tiny_run):
    assert "Nothing to be done" in snakemake(tiny_run[0], "-n").stdout


def test_changing_one_model_reruns_it_and_its_dependents_only(tiny_run, tmp_path):
    change = tmp_path / "change.yaml"
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["diffusion"]["image_model"]["guided"]["iterations"] = 5
    change.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tiny_run[0], config=change)
    assert jobs["train_image_model_guided"] == 2  # both subsets' guided image models
    # only the arms that train on the pairs' sets depend on them: 2 subsets x 2 models x 4 arms
    # (pretrained-real too: the pairs' count sets its pre-training length)
    assert jobs["train_segmenter"] == 16
    for untouched in (
        "train_structure_model",
        "train_image_model_conditional",
        "sample_structures",
        "select_subset",
        "compute_features",
    ):
        assert untouched not in jobs


def test_the_report_builds(tiny_run):
    workdir, _ = tiny_run
    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "table.html" in html and "provenance" in html


def test_one_target_builds_only_what_it_needs(tmp_path):
    jobs = planned_jobs(tmp_path, "results/tiny/50pct/trainsets/augmented.csv")
    assert jobs["select_subset"] == 1  # not the 100% subset
    assert jobs["train_structure_model"] == 1
    assert "compare_samplers" not in jobs and "summarize_subsets" not in jobs


def test_misspelt_config_key_is_named_and_nothing_runs(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["patches"]["strid"] = config["patches"].pop("stride")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "1", config=bad, check=False)
    assert result.returncode != 0
    assert "strid" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_unknown_dataset_format_is_named(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["datasets"]["tiny"]["format"] = "monuseg2018"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", config=bad, check=False)
    assert result.returncode != 0 and "monuseg2018" in result.stdout + result.stderr


def test_lint_is_clean(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = snakemake(tmp_path, "--lint")
    assert "Congratulations" in result.stdout + result.stderr


def workflow_rules() -> list[str]:
    """Every rule of rules/*.smk, by name."""
    return sorted(
        line.split()[1].rstrip(":")
        for smk in (REPO / "rules").glob("*.smk")
        for line in smk.read_text().splitlines()
        if line.startswith("rule ")
    )


def planned_resources(dry_run: str) -> dict[str, set[tuple[int, int, int]]]:
    """Rule name -> the (threads, mem_mb, runtime) of its jobs in a dry run's output."""
    planned: dict[str, set[tuple[int, int, int]]] = {}
    for block in re.split(r"^\s*rule ", dry_run, flags=re.MULTILINE)[1:]:
        name = block.split(":", 1)[0]
        threads = re.search(r"^\s*threads: (\d+)$", block, re.MULTILINE)
        mem = re.search(r"\bmem_mb=(\d+)", block)
        runtime = re.search(r"\bruntime=(\d+)", block)
        chosen = (int(threads[1]) if threads else 1, int(mem[1]) if mem else 0, int(runtime[1]) if runtime else 0)
        planned.setdefault(name, set()).add(chosen)
    return planned


def test_the_schema_lists_exactly_the_rules_for_resources():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    names = schema["properties"]["resources"]["propertyNames"]["enum"]
    assert sorted(names) == sorted(["default", *workflow_rules()])
    gpu_rules = re.search(r"^GPU_RULES = (\{.*?\})", (REPO / "rules" / "common.smk").read_text(), re.S | re.M)
    assert set(ast.literal_eval(gpu_rules[1])) <= set(workflow_rules())


def test_every_rule_takes_its_resources_from_config(tmp_path):
    """A distinct resources entry for each rule reaches each of its jobs; unset keys come
    from resources.default."""
    rules = workflow_rules()
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["resources"] = {"default": {"runtime": 7}}
    expected = {}
    for i, name in enumerate(rules):
        expected[name] = (2 + i, 10_000 + i, 7 if i % 2 else 100 + i)
        entry = {"threads": 2 + i, "mem_mb": 10_000 + i}
        if not i % 2:
            entry["runtime"] = 100 + i
        config["resources"][name] = entry
    # the export targets are not part of all (rules/export.smk): asked for by name
    (tmp_path / "maps").mkdir()
    config["label_to_image"] = {"labels": str(tmp_path / "maps")}
    exports = ["results/tiny/50pct/export/augmented", "results/tiny/50pct/export/extra2", "results/label_to_image"]
    custom = tmp_path / "resources.yaml"
    custom.write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, "all", *exports, "-n", "--cores", "64", config=custom).stdout
    planned = planned_resources(out)
    assert sorted(set(planned) - {"all"}) == rules
    for name in rules:
        assert planned[name] == {expected[name]}, name


def test_a_resources_entry_for_no_rule_is_named(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["resources"]["compute_feature"] = {"mem_mb": 12345}  # the rule is compute_features
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", config=bad, check=False)
    assert result.returncode != 0 and "compute_feature'" in result.stdout + result.stderr


def test_a_gpu_model_for_a_rule_without_gpu_is_named(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["resources"]["make_table"] = {"gpu_model": "a100"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", config=bad, check=False)
    assert result.returncode != 0 and "resources.make_table.gpu_model" in result.stdout + result.stderr
