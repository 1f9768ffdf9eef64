"""A training run through to its files (nudiff.training.run): model, loss log and figure written,
checkpoints removed only after all of them, and kept when writing fails."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from nudiff.training.checkpoint import CheckpointStore
from nudiff.training.loop import LoopSettings
from nudiff.training.run import train_to_files

SETTINGS = LoopSettings(iterations=4, checkpoint_every=2, log_every=2)


def step(model: nn.Module, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(4, 2, generator=generator)
    return ((model(x) - x) ** 2).mean()


def run(tmp_path, save, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    return train_to_files(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        step,
        SETTINGS,
        seed=0,
        checkpoint_dir=tmp_path / "ckpt",
        fingerprint={"run": "a"},
        save=save,
        plot=lambda history, png: png.write_text(f"{len(history)} steps"),
        **kwargs,
    )


def test_the_model_loss_log_and_figure_are_written_and_the_checkpoints_removed(tmp_path):
    saved = []
    result = run(tmp_path, saved.append, loss_csv=tmp_path / "loss.csv", loss_png=tmp_path / "loss.png")
    assert saved == [result]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "loss.csv"), result.history, check_dtype=False)
    assert (tmp_path / "loss.png").read_text() == "4 steps"
    assert CheckpointStore(tmp_path / "ckpt").steps() == []


def test_without_loss_paths_no_log_or_figure_is_written(tmp_path):
    saved = []
    run(tmp_path, saved.append)
    assert len(saved) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == []


def test_a_failed_save_keeps_the_checkpoints(tmp_path):
    """The last periodic checkpoint (step 2 of 4) stays: a restarted job resumes from it."""

    def failing(result):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, failing, loss_csv=tmp_path / "loss.csv")
    assert CheckpointStore(tmp_path / "ckpt").steps() == [2]
    assert not (tmp_path / "loss.csv").exists()
