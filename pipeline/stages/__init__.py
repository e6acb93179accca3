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

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
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


# Modules the worker processes need, imported once by the fork server so that each worker starts warm.
WORKER_PRELOAD = ["numpy", "h5py", "av", "soundfile", "torch", "torchaudio", "pipeline.stages", "pipeline.media"]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` single-threaded processes started by a fork server: a clean process with no
    threads, so no lock held by one of our threads (tqdm's monitor, torch's or OpenMP's pools) is ever
    copied into a worker, which plain fork can deadlock on."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)


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
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _write_part(path: Path, stage: str, batch_fingerprint: str, results: dict) -> None:
    import h5py

    with atomic_output(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
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


def _run_batch(compute: ComputeFn, stage: str, config: dict, jobs: list[ClipJob], part: Path, bfp: str) -> int:
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
    todo = []
    parts = []
    for index, batch in enumerate(batches):
        bfp = _digest([fingerprint, [job.fingerprint() for job in batch]])
        part = parts_dir / f"batch-{index:06d}.h5"
        parts.append(part)
        if not is_part_done(part, bfp):
            todo.append((batch, part, bfp))

    bar = tqdm(total=len(jobs), initial=len(jobs) - sum(len(b) for b, _, _ in todo), desc=stage, unit="clip",
               disable=not progress, dynamic_ncols=True)
    with bar:
        if workers == 1 or len(todo) <= 1:
            for batch, part, bfp in todo:
                bar.update(_run_batch(compute, stage, config, batch, part, bfp))
        else:
            with process_pool(workers) as pool:
                pending = {pool.submit(_run_batch, compute, stage, config, b, p, f) for b, p, f in todo}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        bar.update(future.result())

    errors = _merge_parts(parts, out_path, stage, config, fingerprint)
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


def _merge_parts(parts: list[Path], out_path: Path, stage: str, config: dict, fingerprint: str) -> dict[str, str]:
    """Copy every part, in id order, into one HDF5 file written under a temp name and renamed."""
    import h5py

    errors: dict[str, str] = {}
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w", track_order=True) as out:
        out.attrs["stage"] = stage
        out.attrs["config"] = json.dumps(config, sort_keys=True)
        out.attrs["fingerprint"] = fingerprint
        out_errors = out.create_group("errors")
        for part in parts:
            with h5py.File(part, "r") as f:
                for clip_id, message in f["errors"].attrs.items():
                    out_errors.attrs[clip_id] = message
                    errors[clip_id] = str(message)
                for name in f:
                    if name == "errors":
                        continue
                    group = out.require_group(name)
                    for clip_id, dataset in f[name].items():
                        group.create_dataset(clip_id, data=dataset[()], track_times=False)
        out.attrs["complete"] = True  # set last: a file without it is never trusted
    return errors


def read_stage_config(path: str | Path) -> dict:
    """The config a complete intermediate was made with (raises if it is incomplete)."""
    import h5py

    if not is_complete(path):
        raise RuntimeError(f"{path} is missing or incomplete; rerun the stage that makes it")
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])
