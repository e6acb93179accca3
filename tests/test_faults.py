"""Fault injection on the training side and between runs: every fault gives a named error (the file and the
fix) and exit 2, never a traceback, and no final output that is wrong or partial; a second writer on one
output folder is refused; SIGTERM stops a run at a safe point (exit 75) and the rerun goes on exactly.

A full disk is simulated without root: RLIMIT_FSIZE in the child process makes the kernel fail every write
past a chosen byte (EFBIG, for C writers such as HDF5 and torch too), or a write wrapper raises ENOSPC at a
chosen byte. A read-only folder is simulated by a PermissionError on its first write (tests run as root,
where chmod stops nothing).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.shards import npy_bytes, replace_member, write_shard_folder
from typer.testing import CliRunner

from mlb.common.lock import LOCK_NAME, FolderBusyError, folder_lock
from mlb.common.stopping import STOPPED_EXIT, current_request, stop_on_signals
from pipeline.cli import app

TRAIN = ["train", "--features", "raw", "--method", "mlb", "--size", "tiny", "--batch-size", "8", "--seed", "1",
         "--device", "cpu", "--no-dvclive"]  # fmt: skip
PREPARE = ["prepare", "cremad", "--protocol", "speaker-random", "--size", "32", "--quiet",
           "--stages", "index,frames,spectrograms,shards_raw"]  # fmt: skip


def _cli(*args: str, file_limit: int | None = None, check_ok: bool = False) -> subprocess.CompletedProcess:
    """`mlbpipe ARGS` in a child process; with `file_limit`, no file may grow past that many bytes."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        preexec_fn=limit_files if file_limit else None,
        check=False,
        timeout=300,
    )
    if check_ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _refused(result, code: int, *names: str) -> str:
    """Assert the exit code, that the message names each of `names`, and that no traceback was printed."""
    in_process = not hasattr(result, "returncode")  # typer's CliRunner result
    text = " ".join(
        (result.output if in_process else result.stdout + result.stderr).split()
    )  # messages may wrap
    assert (result.exit_code if in_process else result.returncode) == code, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for name in names:
        assert name in text, (name, text[-3000:])
    return text


def _temps(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}  # fmt: skip


@pytest.fixture
def raw_data(tmp_path) -> Path:
    write_shard_folder(tmp_path / "data" / "shards" / "raw", "raw", counts={"train": 48})
    return tmp_path / "data"


# --- the shards a run reads -------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_truncated_tar_is_named_with_the_fix(raw_data, tmp_path):
    tar = raw_data / "shards" / "raw" / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # what a failed copy or a full disk leaves
    result = _cli(*TRAIN, "--data", str(raw_data), "--out", str(tmp_path / "run"), "--epochs", "1")
    _refused(result, 2, "train-000001.tar is truncated or corrupt", "rerun the stage that wrote it")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.integration
def test_a_missing_tar_and_an_empty_split_are_named(raw_data, tmp_path):
    (raw_data / "shards" / "raw" / "validation-000001.tar").unlink()
    result = _cli(*TRAIN, "--data", str(raw_data), "--out", str(tmp_path / "run"), "--epochs", "1")
    _refused(result, 2, "sizes.json lists validation-000001.tar but the file is missing")
    empty = tmp_path / "empty"
    write_shard_folder(empty / "shards" / "raw", "raw", counts={"train": 16, "test": 0})
    result = _cli(*TRAIN, "--data", str(empty), "--out", str(tmp_path / "run2"), "--epochs", "1")
    _refused(result, 2, "the test split holds no clips", "rerun prepare")
    assert not (tmp_path / "run2" / "checkpoints").exists()  # refused before any training


@pytest.mark.integration
def test_nan_features_stop_the_run_naming_the_shard_and_the_clip(tmp_path):
    """Every effb2.npy of the train split NaN: today's main trained 4 of 4 skipped steps and exited 0."""
    data = tmp_path / "data"
    folder = write_shard_folder(data / "shards" / "cached", "cached", video_dim=8, counts={"train": 16})
    for tar in sorted(folder.glob("train-*.tar")):
        names = [line.split(".")[0] for line in subprocess.run(["tar", "tf", str(tar)], capture_output=True,
                 text=True, check=True).stdout.split() if line.endswith(".effb2.npy")]  # fmt: skip
        for key in names:
            replace_member(tar, f"{key}.effb2.npy", npy_bytes(np.full((3, 8), np.nan, np.float16)))
    args = ["train", "--features", "cached", "--data", str(data), "--out", str(tmp_path / "run"), "--size", "tiny",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-dvclive"]  # fmt: skip
    text = _refused(_cli(*args), 2, "effb2.npy holds NaN or Inf", "train-00000")
    assert re.search(r"clip 10\d\d_\w+ in \S+train-00000\d.tar", text)
    assert not (tmp_path / "run" / "metrics.json").exists()


# --- checkpoints ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): tiny raw shards and a finished one-epoch run on them. Copy the run before changing it."""
    base = tmp_path_factory.mktemp("trained")
    write_shard_folder(base / "data" / "shards" / "raw", "raw", counts={"train": 48})
    _cli(*TRAIN, "--data", str(base / "data"), "--out", str(base / "run"), "--epochs", "1", check_ok=True)
    return base / "data", base / "run"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["random bytes", "foreign"])
def test_a_corrupt_or_foreign_checkpoint_is_named_with_the_fix(trained, tmp_path, kind):
    data, run = trained[0], tmp_path / "run"
    shutil.copytree(trained[1], run)
    last = run / "checkpoints" / "last.pt"
    if kind == "random bytes":
        last.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        expected = "cannot be read as a checkpoint"
    else:
        torch.save({"weights": torch.zeros(3)}, last)
        expected = "is not a checkpoint of mlbpipe train (it has no model"
    result = _cli(*TRAIN, "--data", str(data), "--out", str(run), "--epochs", "2", "--resume")
    _refused(result, 2, str(last), expected, "delete it to train from scratch")


# --- full disks and read-only folders ----------------------------------------------------------------------


@pytest.mark.integration
def test_train_on_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(raw_data, tmp_path):
    run = tmp_path / "run"
    result = _cli(*TRAIN, "--data", str(raw_data), "--out", str(run), "--epochs", "1", file_limit=64 * 1024)
    _refused(result, 2, str(run / "checkpoints" / "best.pt"), "failed", "MiB free there", "free space")
    assert not (run / "checkpoints" / "last.pt").exists() and _temps(run) == []
    assert not (run / "metrics.json").exists()
    _cli(*TRAIN, "--data", str(raw_data), "--out", str(run), "--epochs", "1", "--resume", check_ok=True)
    # one more epoch on a full disk: its failed checkpoint write leaves epoch 0's checkpoints whole
    kept = _digest(run / "checkpoints")
    result = _cli(*TRAIN, "--data", str(raw_data), "--out", str(run), "--epochs", "2", "--resume",
                  file_limit=64 * 1024)  # fmt: skip
    text = _refused(result, 2, "failed", "MiB free there", "free space")
    assert any(str(run / "checkpoints" / name) in text for name in ("best.pt", "last.pt")), text[-3000:]
    assert _digest(run / "checkpoints") == kept and _temps(run) == []
    _cli(*TRAIN, "--data", str(raw_data), "--out", str(run), "--epochs", "2", "--resume", check_ok=True)
    assert json.loads((run / "run.json").read_text())["start"]["epoch"] == 1  # from the kept last.pt


@pytest.mark.integration
def test_prepare_on_a_full_disk_promotes_nothing_partial_and_the_rerun_is_whole(
    synth_corpus_defects, tmp_path
):
    clean, full = tmp_path / "clean", tmp_path / "full"
    _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(clean), check_ok=True)
    result = _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(full), file_limit=96 * 1024)
    text = _refused(result, 2, "File too large", "free space", "finished work is kept")
    assert str(full) in text  # the file that could not be written
    assert not (full / "shards").exists() and _temps(full) == []  # no shard folder under its final name
    _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(full), check_ok=True)
    assert _digest(full / "shards") == _digest(clean / "shards")
    assert (full / "manifest.jsonl").read_bytes() == (clean / "manifest.jsonl").read_bytes()


@pytest.mark.integration
def test_compare_on_a_full_disk_writes_no_partial_table(trained, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(trained[1], runs / "raw" / "mlb" / "late-linear" / "seed1")
    real = Path.write_bytes

    def full_disk(self, data):  # ENOSPC at byte 100 of compare.md
        if self.name.startswith("compare.md"):
            real(self, data[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    result = CliRunner().invoke(app, ["compare", "--aggregate-only", "--out", str(runs)])
    _refused(result, 2, "compare.md", "No space left on device", "free space")
    assert not (runs / "compare.md").exists() and _temps(runs) == []


@pytest.mark.integration
def test_a_read_only_output_folder_is_named_with_the_fix(synth_corpus_defects, tmp_path, monkeypatch):
    import mlb.common.lock

    out = tmp_path / "out"
    real = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(mlb.common.lock.os, "open", read_only)
    result = CliRunner().invoke(app, [*PREPARE, "--root", str(synth_corpus_defects), "--out", str(out)])
    _refused(result, 2, str(out), "Read-only file system", "fix its permissions")
    assert not (out / "manifest.jsonl").exists()


# --- the corpus root vanishing -----------------------------------------------------------------------------


@pytest.mark.integration
def test_a_corpus_root_that_vanishes_between_stages_stops_the_next(synth_corpus_defects, tmp_path):
    root, out = tmp_path / "corpus", tmp_path / "out"
    shutil.copytree(synth_corpus_defects, root)
    _cli(*PREPARE[:-1], "index", "--root", str(root), "--out", str(out), check_ok=True)
    root.rename(tmp_path / "unmounted")  # the whole root: found before any stage starts
    result = _cli(*PREPARE[:-1], "frames", "--root", str(root), "--out", str(out))
    _refused(result, 2, f"corpus root {root} does not exist")
    (tmp_path / "unmounted").rename(root)
    (root / "VideoFlash").rename(tmp_path / "VideoFlash")  # part of it (a sub-mount): found by the stage
    result = _cli(*PREPARE[:-1], "frames", "--root", str(root), "--out", str(out))
    _refused(result, 2, "VideoFlash", "is gone since the index stage listed it", "Put it back and rerun")
    assert not (out / "work" / "frames.h5").exists()  # not an intermediate full of per-clip errors
    (tmp_path / "VideoFlash").rename(root / "VideoFlash")
    _cli(*PREPARE[:-1], "frames", "--root", str(root), "--out", str(out), check_ok=True)


# --- one writer per output ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_second_writer_is_refused_naming_the_holder(synth_corpus_defects, raw_data, tmp_path):
    out, run, runs = tmp_path / "out", tmp_path / "run", tmp_path / "runs"
    with folder_lock(out, "mlbpipe prepare (the first run)"), folder_lock(run, "mlbpipe train (the first)"), \
            folder_lock(runs, "mlbpipe compare (the first)"):  # fmt: skip
        result = _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(out))
        _refused(result, 2, f"{out} is being written by pid {os.getpid()}", "mlbpipe prepare (the first run)")
        result = _cli(*TRAIN, "--data", str(raw_data), "--out", str(run), "--epochs", "1")
        _refused(result, 2, f"pid {os.getpid()}", "mlbpipe train (the first)")
        result = _cli("compare", "--aggregate-only", "--out", str(runs))
        _refused(result, 2, f"pid {os.getpid()}", "mlbpipe compare (the first)")
    assert not (out / "manifest.jsonl").exists() and not (run / "checkpoints").exists()


@pytest.mark.integration
def test_two_prepares_on_one_out_the_second_is_refused_and_the_first_is_whole(synth_corpus_defects, tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "out"
    _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(clean), check_ok=True)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *PREPARE, "--root", str(synth_corpus_defects),
                              "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not ((out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # holds the folder, mid-run, for as long as the second one tries
    try:
        second = _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(out))
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    _refused(second, 2, f"pid {first.pid}", "prepare cremad")
    assert _digest(out / "shards") == _digest(clean / "shards")


@pytest.mark.integration
def test_a_lock_left_by_a_killed_run_is_taken_over(trained, tmp_path):
    raw_data, run = trained[0], tmp_path / "run"
    code = f"from mlb.common.lock import folder_lock\nimport os, signal\nwith folder_lock({str(run)!r}, 'killed'):\n" \
           "    os.kill(os.getpid(), signal.SIGKILL)\n"  # fmt: skip
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(Path.cwd())}, check=False
    )
    assert "killed" in (run / LOCK_NAME).read_text()  # the dead run's note is still there
    _cli(*TRAIN, "--data", str(raw_data), "--out", str(run), "--epochs", "1", check_ok=True)


@pytest.mark.unit
def test_the_lock_in_process(tmp_path):
    with (
        folder_lock(tmp_path, "a"),
        pytest.raises(FolderBusyError, match=r"is being written by pid \d+ on .*'a'"),
        folder_lock(tmp_path, "b"),
    ):
        pass
    with folder_lock(tmp_path, "c"):  # released: free again
        pass
    assert (tmp_path / LOCK_NAME).read_text() == ""


# --- graceful stops -----------------------------------------------------------------------------------------


def _sigterm_after(args: list[str], started: str) -> subprocess.CompletedProcess:
    """Run `mlbpipe ARGS`, SIGTERM it once a line of its output contains `started`; its result."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if started in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(lines) + rest, "")


@pytest.mark.e2e
def test_sigterm_during_train_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    write_shard_folder(data / "shards" / "raw", "raw", counts={"train": 96})
    args = [*TRAIN, "--data", str(data), "--epochs", "2"]
    _cli(*args, "--out", str(tmp_path / "straight"), check_ok=True)
    run = tmp_path / "stopped"
    result = _sigterm_after([*args, "--out", str(run)], started="epoch 0:")  # lands inside epoch 1
    text = _refused(result, STOPPED_EXIT, "stopped on SIGTERM after step", "--resume")
    assert "epoch 1" in text and not (run / "metrics.json").exists()
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]
    _cli(*args, "--out", str(run), "--resume", check_ok=True)
    # the rerun continued from the checkpoint (a restart from step 0 would end with the same weights)
    start = json.loads((run / "run.json").read_text())["start"]
    assert start == {key: saved[key] for key in ("epoch", "batch_in_epoch", "step")} and start["epoch"] == 1
    want = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    for key in ("selected", "validation", "test"):
        assert got[key] == want[key], key
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "steps.jsonl").read_text() == (tmp_path / "straight" / "steps.jsonl").read_text()


@pytest.mark.e2e
def test_sigterm_during_prepare_keeps_finished_work_and_the_rerun_is_whole(synth_corpus_defects, tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "out"
    _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(clean), check_ok=True)
    args = [*PREPARE[:-2], "--stages", "index,frames,spectrograms,shards_raw", "--root", str(synth_corpus_defects),
            "--out", str(out)]  # fmt: skip
    args.remove("--quiet")  # the per-stage timings say when a stage is done
    result = _sigterm_after(args, started="[index] done")
    _refused(result, STOPPED_EXIT, "stopped on SIGTERM", "rerun the same command")
    assert not (out / "shards").exists() and _temps(out) == []
    _cli(*args, check_ok=True)
    assert _digest(out / "shards") == _digest(clean / "shards")


@pytest.mark.unit
def test_stop_requests_come_from_signals_and_are_seen_deep_in_a_run():
    assert not current_request().requested  # outside any block: never set
    with stop_on_signals() as stop:
        assert current_request() is stop and not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.reason == "stopped on SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal: now
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
