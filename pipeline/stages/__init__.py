"""Pipeline stages, one module per stage: a pure core `run_<stage>(...)` plus a thin CLI (`cli`).

`python -m pipeline.stages.<stage> --help` runs one stage by itself (that is what dvc.yaml calls);
`mlbpipe prepare cremad` runs them in order (pipeline.prepare).

This package also holds `run_per_clip`, the engine of every stage that computes arrays clip by clip
(frames, spectrograms, and later faces and features). It gives them, for free:
- parallelism: `workers` processes, each computing whole batches; the output does not depend on it;
- resumability: each finished batch is saved at once as a small HDF5 "part" (temp file + rename), and
  a rerun after a kill skips every part whose inputs and config are unchanged;
- one intermediate: the parts are merged in id order into a single HDF5 file `OUT/work/<stage>.h5`,
  written to a temp name and renamed, so a file under the final name is always complete;
- a progress bar, and per-clip errors recorded (in the file's `errors` group) rather than raised.

HDF5 layout: `/<array name>/<clip id>` datasets, `/errors` attributes {clip id: message}, and root
attributes `stage`, `config` (JSON), `fingerprint`, `complete`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest import atomic_output, remove_stale_temps

BATCH_SIZE = 8  # clips per part file; fixed so that batches (hence bytes) never depend on `workers`


@dataclass(frozen=True)
class ClipJob:
    """One clip's input to a per-clip stage: its id and the absolute path of the file it reads."""

    id: str
    path: str

    def fingerprint(self) -> list:
        try:
            st = os.stat(self.path)
            return [self.id, self.path, st.st_size, st.st_mtime_ns]
        except OSError:
            return [self.id, self.path, None, None]


# compute(jobs, config) -> {clip id: {array name: array} or error message (str)}
ComputeFn = Callable[[Sequence[ClipJob], dict], dict[str, "dict[str, np.ndarray] | str"]]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def stage_fingerprint(stage: str, config: dict, jobs: Sequence[ClipJob]) -> str:
    """Changes whenever the stage, its config, or any input file (path, size, mtime) changes."""
    return _digest([stage, config, [job.fingerprint() for job in jobs]])


def is_complete(path: str | Path, fingerprint: str | None = None) -> bool:
    """True when `path` is a finished intermediate (and, if given, made from the same inputs)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            done = bool(f.attrs.get("complete", False))
            return done and (fingerprint is None or f.attrs.get("fingerprint") == fingerprint)
    except OSError:
        return False


# Imported once by the fork server, so that each worker it forks starts warm. torch is left out on
# purpose (~1.5 s and ~700 MiB): the ResNet-path stages do not use it, and a stage that does (faces,
# features) imports it where it needs it (tests/test_prepare.py checks that no worker imports it).
WORKER_PRELOAD = [
    "numpy",
    "h5py",
    "av",
    "cv2",
    "soundfile",
    "soxr",
    "scipy.fft",
    "pipeline.stages",
    "pipeline.media",
]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` single-threaded processes started by a fork server: a clean process with no
    threads, so no lock held by one of our threads (tqdm's monitor, torch's or OpenMP's pools) is ever
    copied into a worker, which plain fork can deadlock on."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)


_shared_pool: ProcessPoolExecutor | None = None
_shared_size = 0


@contextlib.contextmanager
def shared_workers(workers: int) -> Iterator[None]:
    """Inside this block every stage run with the same `workers` (> 1) uses one pool, started here, in
    the background, while the caller goes on: `prepare` starts its workers once, not once per stage."""
    global _shared_pool, _shared_size
    if workers <= 1 or _shared_pool is not None:
        yield
        return
    _shared_pool, _shared_size = process_pool(workers), workers
    for _ in range(workers):
        _shared_pool.submit(int)  # a no-op per worker: the processes start now, not at the first stage
    try:
        yield
    finally:
        pool, _shared_pool = _shared_pool, None
        pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """The shared pool when one of this size is open (see shared_workers), else a new one for this block."""
    if _shared_pool is not None and _shared_size == workers:
        yield _shared_pool
        return
    with process_pool(workers) as pool:
        yield pool


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when its parent goes, so a SIGKILLed `prepare` leaves no
    orphan workers behind (they would wait forever on their task queue)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to do
        return
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)


def _init_worker() -> None:
    _die_with_parent()
    # Each worker is one process on one core: keep the math libraries single-threaded.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # never import it just for this (see WORKER_PRELOAD)
        sys.modules["torch"].set_num_threads(1)


def _write_part(path: Path, stage: str, batch_fingerprint: str, results: dict) -> None:
    import h5py

    # a part is scratch: a part lost to a power cut fails is_part_done and is recomputed, so no fsync
    with atomic_output(path, durable=False) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.attrs["stage"] = stage
        f.attrs["fingerprint"] = batch_fingerprint
        errors = f.create_group("errors")
        for clip_id in sorted(results):
            result = results[clip_id]
            if isinstance(result, str):
                errors.attrs[clip_id] = result
                continue
            for name, array in result.items():
                f.require_group(name).create_dataset(clip_id, data=array, track_times=False)


def _run_batch(
    compute: ComputeFn, stage: str, config: dict, jobs: list[ClipJob], part: Path, bfp: str
) -> int:
    results = compute(jobs, config)
    _write_part(part, stage, bfp, results)
    return len(jobs)


def run_per_clip(
    stage: str,
    jobs: Sequence[ClipJob],
    compute: ComputeFn,
    config: dict,
    out_path: str | Path,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, str]:
    """Compute `compute` over `jobs` (sorted by id here) into the single HDF5 file `out_path`.

    Skips everything when `out_path` is already complete for the same inputs and config. Returns the
    per-clip errors {clip id: message}.
    """
    import h5py
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers={workers!r}: must be at least 1")
    out_path = Path(out_path)
    jobs = sorted(jobs, key=lambda j: j.id)
    fingerprint = stage_fingerprint(stage, config, jobs)
    if is_complete(out_path, fingerprint):
        with h5py.File(out_path, "r") as f:
            return {k: str(v) for k, v in f["errors"].attrs.items()}

    parts_dir = out_path.with_name(f".{out_path.name}.parts-{fingerprint[:16]}")
    for stale in out_path.parent.glob(f".{out_path.name}.parts-*"):
        if stale != parts_dir:  # parts of another config or corpus: useless now
            shutil.rmtree(stale, ignore_errors=True)
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_path.parent)  # what a killed run may have left half-written
    remove_stale_temps(parts_dir)

    batches = [jobs[i : i + BATCH_SIZE] for i in range(0, len(jobs), BATCH_SIZE)]
    parts = [parts_dir / f"batch-{index:06d}.h5" for index in range(len(batches))]
    done = [False] * len(batches)
    todo = []  # (index, batch, part file, batch fingerprint)
    for index, batch in enumerate(batches):
        bfp = _digest([fingerprint, [job.fingerprint() for job in batch]])
        done[index] = is_part_done(parts[index], bfp)
        if not done[index]:
            todo.append((index, batch, parts[index], bfp))

    # The output is written under a temp name while the parts are computed: each finished part is
    # appended as soon as every part before it is in (id order), so the main process merges while the
    # workers compute. `complete` is set last: a file without it is never trusted.
    errors: dict[str, str] = {}
    merged = 0
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - sum(len(t[1]) for t in todo),
        desc=stage,
        unit="clip",
        disable=not progress,
        dynamic_ncols=True,
    )
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w", track_order=True) as out, bar:
        out.attrs["stage"] = stage
        out.attrs["config"] = json.dumps(config, sort_keys=True)
        out.attrs["fingerprint"] = fingerprint
        out.create_group("errors")

        def merge_ready() -> None:
            nonlocal merged
            while merged < len(parts) and done[merged]:
                _append_part(out, parts[merged], errors)
                merged += 1

        merge_ready()
        if workers == 1 or len(todo) <= 1:
            for index, batch, part, bfp in todo:
                bar.update(_run_batch(compute, stage, config, batch, part, bfp))
                done[index] = True
                merge_ready()
        else:
            with worker_pool(workers) as pool:
                pending = {pool.submit(_run_batch, compute, stage, config, b, p, f): i for i, b, p, f in todo}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        bar.update(future.result())
                        done[pending.pop(future)] = True
                    merge_ready()
        out.attrs["complete"] = True
    shutil.rmtree(parts_dir, ignore_errors=True)
    return errors


def is_part_done(part: Path, batch_fingerprint: str) -> bool:
    import h5py

    if not part.is_file():
        return False
    try:
        with h5py.File(part, "r") as f:
            return f.attrs.get("fingerprint") == batch_fingerprint
    except OSError:
        return False


def _append_part(out, part: Path, errors: dict[str, str]) -> None:
    """Copy one part's datasets and errors into the open output file `out` (h5py.File)."""
    import h5py

    with h5py.File(part, "r") as f:
        for clip_id, message in f["errors"].attrs.items():
            out["errors"].attrs[clip_id] = message
            errors[clip_id] = str(message)
        for name in f:
            if name == "errors":
                continue
            group = out.require_group(name)
            for clip_id in f[name]:
                f.copy(
                    f"{name}/{clip_id}", group, name=clip_id
                )  # HDF5's own copy: no round trip through numpy


@contextlib.contextmanager
def exit_on(*errors: type[BaseException]) -> Iterator[None]:
    """For the stage CLIs: one of `errors` raised inside (a bad option, a missing input) prints
    `error: <message>` and exits with code 2 instead of a traceback."""
    import typer

    try:
        yield
    except errors as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err


def report_skipped(stage: str, errors: dict[str, str]) -> None:
    """Print each clip a stage could not process, with why (stderr)."""
    import typer

    for clip_id, message in sorted(errors.items()):
        typer.echo(f"{stage}: {clip_id} skipped: {message}", err=True)


def read_stage_config(path: str | Path) -> dict:
    """The config a complete intermediate was made with (raises if it is incomplete)."""
    import h5py

    if not is_complete(path):
        raise RuntimeError(f"{path} is missing or incomplete; rerun the stage that makes it")
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])
