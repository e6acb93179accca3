"""Shards and DVC data in an S3-compatible store: moto's server on 127.0.0.1 stands in for S3.

The loader and the trainer read `s3://` the same as a local folder (same batches, same weights, one GET per
shard); a closed port and a missing bucket fail fast with a message that names the URL and the fix; and
`dvc push` / `dvc pull` round-trip a tracked folder through a DVC remote on the same server.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.shards import write_shard_folder
from typer.testing import CliRunner

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from mlb.data import ShardError, ShardLoader, open_shard_folder
from mlb.train import TrainConfig, train
from mlb.train.checkpoint import load_checkpoint
from pipeline.cli import app

pytestmark = pytest.mark.e2e

BUCKET = "mlb"
runner = CliRunner()


class _Requests(logging.Handler):
    """The server's access log (werkzeug, one record per request), kept for counting, never printed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def take(self) -> list[str]:
        """`METHOD /path` of the requests since the last call."""
        lines, self.lines = self.lines, []
        return [line.split('"')[1].rsplit(" ", 1)[0] for line in lines if '"' in line]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 on a free loopback port, dummy credentials, nothing read from ~/.aws; stopped at the end."""
    aws = tmp_path_factory.mktemp("aws")
    for name in ("config", "credentials"):  # empty, so nothing of this machine's AWS set-up applies
        (aws / name).write_text("")
    requests = _Requests()
    log = logging.getLogger("werkzeug")
    saved = log.handlers[:], log.propagate
    log.handlers, log.propagate = [requests], False
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(aws / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        try:
            yield {"endpoint": endpoint, "requests": requests}
        finally:
            server.stop()
            log.handlers, log.propagate = saved


@pytest.fixture(scope="module")
def out_dir(s3, tmp_path_factory):
    """A prepare output folder OUT with both shard paths, locally and uploaded to s3://mlb/out/."""
    out = tmp_path_factory.mktemp("out")
    write_shard_folder(out / "shards" / "cached", "cached", video_dim=32)
    write_shard_folder(out / "shards" / "raw", "raw")
    client = boto3.client("s3")
    for path in sorted(out.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"out/{path.relative_to(out).as_posix()}")
    s3["requests"].take()
    return out


def _batches(loader: ShardLoader, epoch: int) -> list[dict]:
    return list(loader.iterate(epoch))


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


@pytest.mark.parametrize("features, workers", [("cached", 0), ("raw", 2)])
def test_loader_over_s3_yields_the_local_batches_with_one_get_per_shard(s3, out_dir, features, workers):
    local = open_shard_folder(out_dir / "shards" / features)
    s3["requests"].take()
    remote = open_shard_folder(f"s3://{BUCKET}/out/shards/{features}")
    opened = s3["requests"].take()
    assert remote.meta == local.meta and remote.sizes == local.sizes and remote.stats == local.stats
    # One listing (which also answers "does each tar exist") and one GET per folder-level json.
    assert len([r for r in opened if r.startswith("GET") and "list-type" in r]) == 1
    assert not [r for r in opened if r.startswith("HEAD")], opened
    kw = {"shuffle": True, "seed": 5, "shuffle_buffer": 8, "num_workers": workers}
    for epoch in (0, 1):
        want = _batches(ShardLoader(local, "train", 4, **kw), epoch)
        s3["requests"].take()
        _same_batches(_batches(ShardLoader(remote, "train", 4, **kw), epoch), want)
        gets = s3["requests"].take()
        assert sorted(gets) == sorted(
            f"GET /{BUCKET}/out/shards/{features}/{name}" for name in local.shards("train")
        )


def _config(data, run: Path, **kw) -> TrainConfig:
    base = {
        "data": data,
        "out": run,
        "features": "raw",
        "size": "tiny",
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 8,
        "seed": 3,
        "device": "cpu",
        "dvclive": False,
    }
    return TrainConfig(**{**base, **kw})


def test_train_on_s3_reaches_the_weights_and_metrics_of_the_local_run(out_dir, tmp_path):
    local = train(_config(out_dir / "shards" / "raw", tmp_path / "local"))
    remote = train(_config(f"s3://{BUCKET}/out/shards/raw", tmp_path / "remote"))
    a = load_checkpoint(tmp_path / "local" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "remote" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("selected", "validation", "test"):
        assert remote[key] == local[key], key
    assert remote["training"]["steps"] == 2


def test_cli_train_reads_s3_through_the_s3_endpoint_option(s3, out_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only --s3-endpoint says where the server is
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "")  # so that monkeypatch unsets it again after the CLI sets it
    run = tmp_path / "run"
    args = ["train", "--features", "cached", "--data", f"s3://{BUCKET}/out", "--out", str(run)]
    args += ["--size", "tiny", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--no-dvclive", "--s3-endpoint", s3["endpoint"]])
    assert result.exit_code == 0, result.output
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.pt").is_file()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_fails_fast_naming_the_url_and_the_fix(out_dir, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    url = f"s3://{BUCKET}/out/shards/raw"
    start = time.perf_counter()
    with pytest.raises(ShardError) as err:
        open_shard_folder(url)
    assert time.perf_counter() - start < 20
    assert url in str(err.value) and dead in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)
    start = time.perf_counter()  # the command line: exit 2 and the same message, no traceback
    result = runner.invoke(app, ["train", "--features", "raw", "--data", f"s3://{BUCKET}/out"] + [
        "--out", str(tmp_path / "run"), "--size", "tiny", "--device", "cpu", "--no-dvclive"])  # fmt: skip
    assert time.perf_counter() - start < 20
    assert result.exit_code == 2 and "cannot be read" in result.output and dead in result.output, (
        result.output
    )


def test_missing_bucket_or_prefix_fails_fast_naming_it(out_dir, tmp_path):
    for url, what in (
        ("s3://no-such-bucket/out/shards/raw", "bucket 'no-such-bucket' does not exist"),
        (f"s3://{BUCKET}/elsewhere/shards/raw", "nothing under this prefix"),
    ):
        start = time.perf_counter()
        with pytest.raises(ShardError, match=what) as err:
            train(_config(url, tmp_path / "run"))
        assert time.perf_counter() - start < 20 and url in str(err.value)


# --- DVC: data/ pushed to and pulled from a remote on the same server ---------------------------------


def _run(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }  # fmt: skip
    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    result = subprocess.run(
        command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_push_then_pull_in_a_fresh_clone_restores_data(s3, tmp_path):
    project = tmp_path / "project"
    (project / "data" / "shards").mkdir(parents=True)
    (project / "data" / "shards" / "train-000000.tar").write_bytes(bytes(range(256)) * 40)
    (project / "data" / "meta.json").write_text('{"input_path": "raw"}\n')
    _run(project, "git", "init", "-q")
    _run(project, "dvc", "init", "-q")
    _run(project, "dvc", "add", "-q", "data")
    _run(project, "dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")
    _run(project, "dvc", "remote", "modify", "store", "endpointurl", s3["endpoint"])
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-q", "-m", "data")
    _run(project, "dvc", "push", "-q")
    assert boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="dvc/")["KeyCount"] >= 3  # 2 files + .dir

    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "data").exists() and not (clone / ".dvc" / "cache").exists()
    shutil.rmtree(project / ".dvc" / "cache")  # the pull can only come from the remote
    _run(clone, "dvc", "pull", "-q")
    assert _tree(clone / "data") == _tree(project / "data")
