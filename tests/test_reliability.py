"""Real SIGKILLs during `prepare` and `train`, then a rerun: the same bytes and metrics as an
uninterrupted run, and no partial file left behind. (Bad media, untrusted shards, checkpoints and
numerical faults have their tests beside the code they exercise: test_prepare, test_index, test_media,
test_data, test_train, test_balancing.)"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.shards import write_shard_folder

PREPARE = [
    "prepare",
    "cremad",
    "--protocol",
    "speaker-random",
    "--size",
    "32",
    "--quiet",
    "--workers",
    "2",
    "--effb2-weights",
    "random",
    "--w2v2-model",
    "random-tiny",
    "--device",
    "cpu",
    "--faces-fps",
    "2",
    "--crop-size",
    "64",
]
KILLS = 4  # SIGKILLs of prepare, at seeded random moments


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` that a user reads (the manifest and the shards)."""
    files = [folder / "manifest.jsonl", *sorted((folder / "shards").rglob("*"))]
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()
    }


def _kill_after(cmd: list[str], seconds: float, cwd: Path) -> bool:
    """Start `cmd` in its own process group, SIGKILL the whole group after `seconds`; True if killed."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too: a real crash, no clean-up handlers run
        proc.wait()
        return True


def _kill_when(cmd: list[str], ready, cwd: Path, timeout: float = 300) -> bool:
    """Start `cmd` in its own process group, SIGKILL the whole group as soon as `ready()` is true (polled);
    True if killed, False if it ended first. An event, not a time: a fresh clone's first run (compiling
    every .pyc) is slower than the next, so a time taken from it can land after the end."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too: a real crash, no clean-up handlers run
            proc.wait()
            return True
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{cmd} neither ended nor got ready in {timeout} s")
    return False


def _leftovers(folder: Path) -> list[str]:
    """Every temp name the pipeline writes (mlb.common.atomic and the per-clip engine): `<name>.tmp-<pid>`
    (files and folders), `<name>.old-<pid>` (a replaced folder), `.<name>.parts-<fingerprint>` (the
    finished batches of an unfinished intermediate)."""
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if ".tmp-" in p.name or ".old-" in p.name or (p.name.startswith(".") and ".parts-" in p.name)
    )


@pytest.mark.unit
def test_the_leftover_check_sees_every_temp_name(tmp_path):
    (tmp_path / "work").mkdir()
    assert _leftovers(tmp_path) == []
    for name in ("manifest.jsonl.tmp-123", "work/.frames.h5.parts-0123abcd", "raw.old-9", "work/raw.tmp-7"):
        (tmp_path / name).mkdir()
        assert _leftovers(tmp_path) == [str(tmp_path / name)]
        (tmp_path / name).rmdir()


@pytest.mark.e2e
def test_prepare_killed_at_random_points_gives_the_same_bytes(synth_corpus_defects, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    started = time.perf_counter()
    subprocess.run(
        _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(clean)),
        check=True,
        capture_output=True,
    )
    full = time.perf_counter() - started
    rng = random.Random(8)
    interrupted = 0
    for _ in range(KILLS):  # each kill lands somewhere in one of the stages, the rerun goes on from there
        interrupted += _kill_after(
            _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(killed)),
            rng.uniform(0.15, 0.6) * full,
            tmp_path,
        )  # a kill may leave temp names behind (never a partial file under a final name): the rerun cleans up
    subprocess.run(
        _cli(*PREPARE, "--root", str(synth_corpus_defects), "--out", str(killed)),
        check=True,
        capture_output=True,
    )
    assert interrupted >= 3
    want, got = _digest(clean), _digest(killed)
    assert len(want) >= 8 and any(k.startswith("shards/cached/") for k in want)
    assert got == want
    assert not _leftovers(killed), _leftovers(killed)
    (killed / "work" / "frames.h5.tmp-999999").write_bytes(b"planted")  # the check would see one
    assert _leftovers(killed) == [str(killed / "work" / "frames.h5.tmp-999999")]


@pytest.mark.e2e
def test_train_killed_mid_epoch_resumes_to_the_same_metrics(tmp_path):
    data = tmp_path / "out"
    write_shard_folder(data / "shards" / "raw", "raw", counts={"train": 96})
    args = [
        "train",
        "--features",
        "raw",
        "--data",
        str(data),
        "--method",
        "mlb",
        "--size",
        "tiny",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--checkpoint-every",
        "1",
        "--no-dvclive",
    ]
    subprocess.run(_cli(*args, "--out", str(tmp_path / "clean")), check=True, capture_output=True)
    run = tmp_path / "killed"
    steps = run / "steps.jsonl"

    def logged() -> int:
        return len(steps.read_text().splitlines()) if steps.exists() else 0

    rng = random.Random(3)
    steps_at_kill = []
    for target in sorted(rng.sample(range(6, 44), 2)):  # of 48 steps: two kills inside training
        if _kill_when(_cli(*args, "--out", str(run), "--resume"), lambda t=target: logged() >= t, tmp_path):
            steps_at_kill.append(logged())
    from mlb.train.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    subprocess.run(_cli(*args, "--out", str(run), "--resume"), check=True, capture_output=True)
    # the last run continued from the checkpoint (a restart from step 0 would end with the same metrics)
    start = json.loads((run / "run.json").read_text())["start"]
    assert start == {key: saved[key] for key in ("epoch", "batch_in_epoch", "step")} and start["step"] > 0
    want = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert any(0 < n < want["training"]["steps"] for n in steps_at_kill), (
        f"no kill landed mid-run: {steps_at_kill}"
    )
    for key in ("selected", "validation", "test"):
        assert got[key] == want[key], key
    assert (run / "steps.jsonl").read_text() == (tmp_path / "clean" / "steps.jsonl").read_text()
