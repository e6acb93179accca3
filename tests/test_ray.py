"""The Ray engine (pipeline.engine.ray_executor): `mlbpipe prepare --engine ray` on one local Ray instance
of 2 CPUs gives the local engine's bytes, also when a worker process dies mid-run; a task's own exception
comes out as itself, not retried. The cached path runs its extractors in Ray actors (`for_models()`) and
gives the local engine's features and shards; a killed actor's call is rerun, and the actors are gone when
the stage ends. The local engine's reference runs in a process whose environment asks for 4 math threads
(tests/conftest.py sets OMP_NUM_THREADS=1 for this one), as a user's may: it must pin its threads itself.
Skipped where ray is not installed (the `ray` extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

# Read by ray at import: a one-machine instance that binds loopback only; and no usage reports (offline).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

# Light imports only: every Ray worker that runs a task function of this module imports it (the command
# line, which pulls torch in, is imported inside the tests).
from pipeline.engine import ClipJob, Executor, RayExecutor, run_per_clip
from pipeline.engine.per_clip import InputsChanged
from pipeline.manifest import read_manifest

TESTS = Path(__file__).resolve().parent
PREPARE = [
    "prepare", "cremad", "--protocol", "speaker-random", "--size", "32", "--quiet",
    "--stages", "index,frames,spectrograms,shards_raw",
]  # fmt: skip


def _prepare_cli(*args: str, command: list[str] = PREPARE):
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, [*command, *args])


def _local_engine_on_4_threads(*args: str, command: list[str] = PREPARE) -> None:
    """`mlbpipe prepare` on the local engine in a process of its own whose environment asks the math
    libraries for 4 threads (OMP_NUM_THREADS=4), as a user's may."""
    from pipeline.engine.executors import ONE_THREAD

    env = {name: value for name, value in os.environ.items() if name not in ONE_THREAD}
    env["OMP_NUM_THREADS"] = "4"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *command, *args],
        env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


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
    """The local engine's output (2 workers, OMP_NUM_THREADS=4 in the environment), the reference every
    Ray run must match byte for byte."""
    out = tmp_path_factory.mktemp("local")
    _local_engine_on_4_threads("--workers", "2", "--root", str(synth_corpus_defects), "--out", str(out))
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_the_engines_own_errors_come_through_ray(ray_instance, tmp_path):
    """A worker's InputsChanged (the corpus root vanished) reaches the caller as with LocalExecutor."""
    jobs = [ClipJob(f"c{i:02d}", str(tmp_path / f"gone-{i}.wav")) for i in range(10)]
    with RayExecutor(2) as executor, pytest.raises(InputsChanged, match="is gone since the index stage"):
        run_per_clip("toy", jobs, _toy_compute, {}, tmp_path / "toy.h5", executor=executor, progress=False)


# --- the cached path: the extractors in Ray actors (RayExecutor.for_models) -------------------------------

# One worker: the features run in a single actor (the pool of several is the next test's), whose start
# (torch, transformers) is most of this test's time on 2 CPUs.
CACHED_PREPARE = [
    "prepare", "cremad", "--protocol", "speaker-random", "--quiet", "--workers", "1",
    "--stages", "index,faces,features,shards_cached", "--faces-fps", "1", "--crop-size", "64",
    "--device", "cpu",  # both engines' bytes are the CPU's, on any machine
]  # fmt: skip


def _note_actor(log: str, fn, item):
    """fn(item), noting the process and the Ray actor (None in a plain task) that ran it."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {ray.get_runtime_context().get_actor_id()}\n")
    return fn(item)


class _Noted(Executor):
    """A model executor whose every call notes where it ran."""

    def __init__(self, models: Executor, log: Path):
        self.models, self.log, self.workers = models, log, models.workers

    def map_unordered(self, fn, items):
        return self.models.map_unordered(partial(_note_actor, str(self.log), fn), items)

    def close(self) -> None:
        self.models.close()


class NotesWhereModelsRun(RayExecutor):
    def __init__(self, log: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log

    def for_models(self, device: str = "auto") -> Executor:
        return _Noted(super().for_models(device), self.log)


def _features_content(path: Path) -> dict:
    """Every array and error of features.h5, and its config without the (machine-dependent) faces path."""
    import h5py

    content: dict = {}

    def add(name, obj):
        if isinstance(obj, h5py.Dataset):
            content[name] = (obj.dtype.str, obj.shape, obj[()].tobytes())

    with h5py.File(path, "r") as f:
        f.visititems(add)
        content["errors"] = {k: str(v) for k, v in f["errors"].attrs.items()}
        config = json.loads(f.attrs["config"])
        config.pop("faces_path")
        content["config"] = config
    return content


def _cached_files(out: Path) -> dict[str, bytes]:
    files = [out / "manifest.jsonl", out / "corpus.json", *(out / "shards" / "cached").rglob("*")]
    return {str(f.relative_to(out)): f.read_bytes() for f in files if f.is_file()}


def _wait_until_cpus_are_free(cpus: float, timeout: float = 30) -> None:
    """The actors hold one CPU each: once they are killed, the instance's CPUs are all free again."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_the_cached_path_runs_its_extractors_in_ray_actors_with_the_local_engines_bytes(
    ray_instance, synth_corpus_defects, tmp_path, monkeypatch
):
    import torch

    import pipeline.engine
    from pipeline.compute import extractors as ex

    # tiny seeded weights saved to files, loaded back by path in every process, as real checkpoints are
    effb2_path = tmp_path / "effb2.pth"
    torch.save(
        ex.build_effnet_b2(ex.EffNetB2Config(weights="random", image_size=64, seed=3)).state_dict(),
        effb2_path,
    )
    w2v2_folder = ex.write_tiny_wav2vec2(tmp_path / "w2v2", seed=5)
    local, out, log = tmp_path / "local", tmp_path / "ray", tmp_path / "actors.log"
    cached = [
        *CACHED_PREPARE, "--effb2-weights", str(effb2_path), "--w2v2-model", str(w2v2_folder),
        "--root", str(synth_corpus_defects),
    ]  # fmt: skip
    # the reference: in the calling process (1 worker), where torch starts with OMP_NUM_THREADS=4
    _local_engine_on_4_threads(*cached, "--out", str(local), command=[])
    # --engine ray builds its executor from pipeline.engine: this one notes where the models run
    monkeypatch.setattr(pipeline.engine, "RayExecutor", partial(NotesWhereModelsRun, log))
    result = _prepare_cli(*cached, "--engine", "ray", "--out", str(out), command=[])
    assert result.exit_code == 0, result.output
    _wait_until_cpus_are_free(2)  # the actors are gone (killed when the stage ended)

    got, want = _cached_files(out), _cached_files(local)
    assert sorted(got) == sorted(want) and any(name.endswith(".tar") for name in want)
    assert [name for name in want if got[name] != want[name]] == []
    features = _features_content(out / "work" / "features.h5")
    assert features == _features_content(local / "work" / "features.h5")
    assert any(name.startswith("effb2/") for name in features)
    # every call of the features stage (the extractors' identity, then each batch) ran in a Ray actor, a
    # process other than this one, which kept its models from one call to the next
    calls = [line.split() for line in log.read_text().splitlines()]
    pids, actors = {int(pid) for pid, _ in calls}, {actor for _, actor in calls}
    assert len(calls) >= 3 and "None" not in actors and len(actors) == len(pids) == 1
    assert os.getpid() not in pids


def _fails_on_two_dies_once(marker: str, log: str, item: int) -> int:
    return _die_once(marker, partial(_fails_on_two, log), item)


@pytest.mark.e2e
def test_a_killed_model_actor_is_restarted_and_a_calls_own_exception_comes_out_as_itself(
    ray_instance, tmp_path
):
    log, marker = tmp_path / "runs.log", tmp_path / "died"
    with RayExecutor(2) as executor:
        with executor.for_models("cpu") as models:
            assert models.workers == 2  # no GPU asked for: one actor per worker
            dies_once = partial(_fails_on_two_dies_once, str(marker), str(log))
            assert sorted(models.map_unordered(dies_once, [0, 1])) == [(0, 0), (1, 10)]
            with pytest.raises(ValueError, match="bad item 2") as caught:
                list(models.map_unordered(partial(_fails_on_two, str(log)), [2]))
        _wait_until_cpus_are_free(2)  # closed: its actors are killed
    assert marker.is_file()  # an actor did die, and its call was rerun on the restarted actor
    assert type(caught.value) is ValueError
    assert any("Ray worker" in note for note in caught.value.__notes__)
    assert log.read_text().splitlines().count("2") == 1  # not retried


def _device_of(name: str) -> tuple[str, list]:
    from pipeline.compute.extractors import resolve_device

    return resolve_device(name), ray.get_gpu_ids()


@pytest.mark.e2e
@pytest.mark.gpu
def test_model_actors_hold_a_gpu_each_and_auto_resolves_to_cuda_in_them(ray_instance):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    with RayExecutor(2) as executor, executor.for_models("auto") as models:
        assert models.workers == min(2, torch.cuda.device_count())
        [(_, (device, gpu_ids))] = models.map_unordered(_device_of, ["auto"])
    assert device == "cuda" and len(gpu_ids) == 1


@pytest.mark.integration
def test_address_needs_engine_ray(tmp_path):
    result = _prepare_cli("--root", str(tmp_path), "--out", str(tmp_path), "--address", "auto")
    assert result.exit_code == 2
    assert "--address" in result.output and "--engine ray" in result.output


@pytest.mark.unit
def test_without_ray_the_error_says_what_to_install(monkeypatch):
    from pipeline.engine.ray_executor import RayMissing

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(RayMissing, match=r"pip install 'mlbpipe\[ray\]'"):
        RayExecutor(2)


@pytest.mark.integration
def test_the_engine_package_does_not_import_ray():
    code = "import sys, pipeline.engine, pipeline.prepare; assert 'ray' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
