"""The trainer's and the tables' files go through `mlb.common.atomic`: same bytes as before, no temp left, and a
write that fails half-way leaves the previous file whole."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from helpers.shards import write_shard_folder

from mlb.analysis.compare import aggregate, to_markdown, write_tables
from mlb.train import TrainConfig, TrainError, train
from mlb.train.checkpoint import load_checkpoint
from mlb.train.logs import StepLog


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def _config(tmp_path: Path, **kw) -> TrainConfig:
    data = tmp_path / "shards" / "raw"
    if not data.exists():
        write_shard_folder(data, "raw")
    base = {"data": data, "out": tmp_path / "run", "features": "raw", "size": "tiny", "epochs": 2}
    base |= {"batch_size": 8, "dvclive": False, "device": "cpu", "checkpoint_every": 1}
    return TrainConfig(**{**base, **kw})


@pytest.mark.integration
def test_run_files_have_their_usual_bytes_and_no_temp_is_left(tmp_path):
    result = train(_config(tmp_path))
    run = tmp_path / "run"
    assert (run / "metrics.json").read_text() == json.dumps(result, indent=1, allow_nan=True) + "\n"
    run_json = (run / "run.json").read_text()
    assert run_json == json.dumps(json.loads(run_json), indent=1, allow_nan=True) + "\n"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] in (0, 1)
    assert _temps(tmp_path) == []


@pytest.mark.integration
def test_a_checkpoint_that_fails_half_way_leaves_the_previous_one(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):  # the second last.pt: half a file, then the disk is full
        calls.append(Path(f).name)
        if Path(f).name.startswith("last.pt") and sum(c.startswith("last.pt") for c in calls) == 2:
            Path(f).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(
        TrainError, match=r"writing .*last.pt failed \(No space left on device; \d+ MiB free there\)"
    ):
        train(_config(tmp_path))
    assert all(".tmp-" in name for name in calls)  # written beside the target, renamed onto it
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]["step"] == 1
    assert _temps(tmp_path) == []


@pytest.mark.unit
def test_step_log_rewrite_drops_later_and_cut_lines(tmp_path):
    path = tmp_path / "steps.jsonl"
    lines = [json.dumps({"step": s, "epoch": 0, "loss": 0.5}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "ep')  # a killed run's last line, cut short
    log = StepLog(path, keep_until_step=2)
    log.write({"step": 3, "epoch": 0, "loss": 0.25})
    log.close()
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n" + '{"step": 3, "epoch": 0, "loss": 0.25}\n'
    assert _temps(tmp_path) == []


@pytest.mark.unit
def test_tables_are_written_whole_with_no_temp_left(tmp_path):
    head = {"accuracy": 0.5, "macro_f1": 0.4, "ece": 0.1}
    run = {"method": "mlb", "fusion": "late-linear", "features": "raw", "seed": 0}
    summaries = aggregate([{**run, "validation": {"fused": head}, "test": {"fused": head}}])
    paths = write_tables(summaries, tmp_path / "runs")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(p.name for p in paths.values())
    assert paths["md"].read_text() == to_markdown(summaries)
