"""The Ray engine (pipeline.engine.ray_executor): `mlbpipe prepare --engine ray` on one local Ray instance
of 2 CPUs gives the local engine's bytes, also when a worker process dies mid-run; a task's own exception
comes out as itself, not retried. Skipped where ray is not installed (the `ray` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

# Read by ray at import: a one-machine instance that binds loopback only; and no usage reports (offline).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

# Light imports only: every Ray worker that runs a task function of this module imports it (the command
# line, which pulls torch in, is imported inside the tests).
from pipeline.engine import ClipJob, RayExecutor, run_per_clip
from pipeline.engine.per_clip import InputsChanged
from pipeline.manifest import read_manifest

TESTS = Path(__file__).resolve().parent
PREPARE = [
    "prepare", "cremad", "--protocol", "speaker-random", "--size", "32", "--quiet",
    "--stages", "index,frames,spectrograms,shards_raw",
]  # fmt: skip


def _prepare_cli(*args: str):
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, [*PREPARE, *args])


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (its start costs seconds), loopback only, no dashboard; the
    workers can import this module (its task functions) from tests/."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_out(synth_corpus_defects, tmp_path_factory) -> Path:
    """The local engine's output (in-process), the reference every Ray run must match byte for byte."""
    out = tmp_path_factory.mktemp("local")
    result = _prepare_cli("--root", str(synth_corpus_defects), "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Every file a user reads: the manifest, the corpus description and every file of the shard folders."""
    files = [out / "manifest.jsonl", out / "corpus.json", *(out / "shards").rglob("*")]
    return {str(f.relative_to(out)): f.read_bytes() for f in files if f.is_file()}


def _assert_same_bytes(out: Path, reference: Path) -> None:
    got, want = _files(out), _files(reference)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
    assert any(name.endswith(".tar") for name in want)


def test_ray_engine_gives_the_local_engines_bytes(ray_instance, synth_corpus_defects, local_out, tmp_path):
    result = _prepare_cli(
        "--engine", "ray", "--workers", "2", "--root", str(synth_corpus_defects), "--out", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    _assert_same_bytes(tmp_path, local_out)
    assert ray.is_initialized()  # the CLI used the instance it found and left it running
    # bad media is a rejected clip in the manifest, not a crash, on Ray too
    rejected = [r for r in read_manifest(tmp_path / "manifest.jsonl") if r.status == "rejected"]
    assert len(rejected) >= 10 and all(r.reason for r in rejected)


def _die_once(marker: str, fn, item):
    """The first run of a task kills its worker process (no exception: the process is gone); the rerun
    Ray makes finds the marker and does the work."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return fn(item)


class KillsAWorker(RayExecutor):
    """The first task of the `stage`-th map_unordered call (2: the frames stage) kills its worker."""

    def __init__(self, marker: Path, stage: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.stage, self.calls = marker, stage, 0

    def map_unordered(self, fn, items):
        self.calls += 1
        if self.calls == self.stage:
            fn = partial(_die_once, str(self.marker), fn)
        return super().map_unordered(fn, items)


def test_a_killed_worker_is_retried_and_the_bytes_are_the_same(
    ray_instance, synth_corpus_defects, local_out, tmp_path
):
    from pipeline.corpora import get_corpus
    from pipeline.prepare import Run, prepare, prepare_config

    corpus = get_corpus("cremad")
    config = prepare_config(corpus, {}, {"index.protocol": "speaker-random", "frames.size": 32})
    marker, out = tmp_path / "died", tmp_path / "out"
    with KillsAWorker(marker, 2, 2) as executor:
        prepare(
            Run(corpus, synth_corpus_defects, out, config, executor, progress=False),
            ["index", "frames", "spectrograms", "shards_raw"],
        )
    assert marker.is_file()  # a worker of the frames stage did die
    _assert_same_bytes(out, local_out)


def _fails_on_two(log: str, item: int) -> int:
    with open(log, "a") as f:  # one line per run: a retry would show as a second line
        f.write(f"{item}\n")
    if item == 2:
        raise ValueError(f"bad item {item}")
    return item * 10


def test_a_tasks_exception_comes_out_as_itself_not_retried(ray_instance, tmp_path):
    log = tmp_path / "runs.log"
    with RayExecutor(2) as executor:
        assert sorted(executor.map_unordered(partial(_fails_on_two, str(log)), [0, 1])) == [(0, 0), (1, 10)]
        with pytest.raises(ValueError, match="bad item 2") as caught:
            list(executor.map_unordered(partial(_fails_on_two, str(log)), [2]))
    assert type(caught.value) is ValueError  # the original class, not Ray's wrapper
    assert any("Ray worker" in note for note in caught.value.__notes__)
    assert log.read_text().splitlines().count("2") == 1
    assert ray.is_initialized()  # it did not start this instance, so it left it running


def _toy_compute(jobs, config):
    return {job.id: "never" for job in jobs}


def test_the_engines_own_errors_come_through_ray(ray_instance, tmp_path):
    """A worker's InputsChanged (the corpus root vanished) reaches the caller as with LocalExecutor."""
    jobs = [ClipJob(f"c{i:02d}", str(tmp_path / f"gone-{i}.wav")) for i in range(10)]
    with RayExecutor(2) as executor, pytest.raises(InputsChanged, match="is gone since the index stage"):
        run_per_clip("toy", jobs, _toy_compute, {}, tmp_path / "toy.h5", executor=executor, progress=False)


def test_address_needs_engine_ray(tmp_path):
    result = _prepare_cli("--root", str(tmp_path), "--out", str(tmp_path), "--address", "auto")
    assert result.exit_code == 2
    assert "--address" in result.output and "--engine ray" in result.output


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    from pipeline.engine.ray_executor import RayMissing

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(RayMissing, match=r"pip install 'mlbpipe\[ray\]'"):
        RayExecutor(2)


def test_the_engine_package_does_not_import_ray():
    code = "import sys, pipeline.engine, pipeline.prepare; assert 'ray' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
