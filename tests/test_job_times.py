"""Per-rule times of a run from Snakemake benchmark files (nudiff.job_times)."""

from __future__ import annotations

import os

import pytest

from nudiff.job_times import main, per_rule, read_job_times, rule_names, span_seconds

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark(path, *, wall, cpu, rss, end):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")
    os.utime(path, (end, end))


@pytest.fixture
def benchmarks(tmp_path):
    root = tmp_path / "benchmarks" / "demo"
    t0 = 1_700_000_000
    _benchmark(root / "extract_patches.tsv", wall=10, cpu=8, rss=100, end=t0 + 10)
    _benchmark(root / "10pct" / "train_segmenter_hovernet_labelled_seed0.tsv", wall=100, cpu=90, rss=500, end=t0 + 110)
    _benchmark(root / "10pct" / "train_segmenter_hovernet_labelled_seed1.tsv", wall=120, cpu=95, rss=700, end=t0 + 140)
    _benchmark(root / "10pct" / "segment_test_images_hovernet_labelled_seed0.tsv", wall=5, cpu=4, rss=50, end=t0 + 150)
    return root


def test_jobs_are_grouped_by_their_rule_and_timed_from_the_first_start(benchmarks):
    jobs = read_job_times(benchmarks)
    assert list(jobs["rule"]) == ["extract_patches", "train_segmenter", "train_segmenter", "segment_test_images"]
    assert "10pct_train_segmenter_hovernet_labelled_seed1" in set(jobs["job"])
    # first start t0 + 0, last end t0 + 150
    assert span_seconds(jobs) == pytest.approx(150)
    rules = per_rule(jobs).set_index("rule")
    assert rules.loc["train_segmenter", "jobs"] == 2
    assert rules.loc["train_segmenter", "cpu_s"] == pytest.approx(185)
    assert rules.loc["train_segmenter", "max_rss_mb"] == pytest.approx(700)
    assert list(rules.index) == ["extract_patches", "train_segmenter", "segment_test_images"]


def test_the_longest_rule_name_wins():
    # "sample_images" and "sample_images_x" would both prefix "sample_images_x_0"
    from nudiff.job_times import _rule_of

    assert _rule_of("sample_images_x_0", ["sample_images", "sample_images_x"]) == "sample_images_x"
    assert _rule_of("sample_images_1", ["sample_images", "sample_images_x"]) == "sample_images"


def test_every_rule_of_the_workflow_is_found():
    names = rule_names()
    assert {"train_segmenter", "sample_images", "select_image_weights"} <= set(names)


def test_the_command_prints_the_table_and_writes_the_jobs(benchmarks, tmp_path, capsys):
    main([str(benchmarks), "--csv", str(tmp_path / "jobs.csv")])
    out = capsys.readouterr().out
    assert "| train_segmenter | 2 | 220 | 185 | 700 |" in out
    assert "4 jobs" in out and "150 s" in out and "197 CPU-seconds" in out
    assert (tmp_path / "jobs.csv").read_text().count("\n") == 5


def test_a_folder_without_benchmarks_or_a_foreign_tsv_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_job_times(tmp_path)
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="other.tsv"):
        read_job_times(tmp_path)
