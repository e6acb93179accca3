"""The per-clip engine: `run_per_clip` computes arrays clip by clip into one HDF5 intermediate.

Every stage that computes per clip (frames, spectrograms, faces, features) runs through it, and gets:
- parallelism: batches of clips go to an `Executor` (pipeline.engine.executors); the output does not
  depend on how many workers there are, or where they run;
- resumability: each finished batch is saved at once as a small HDF5 "part" beside the output, in
  `.<output name>.parts-<fingerprint>/`, and a rerun after a kill skips every part whose inputs and
  config are unchanged;
- one intermediate: the parts are merged in id order into a single HDF5 file, written under a temp name and
  renamed (mlb.common.atomic), so a file under the final name is always complete;
- a progress bar, and per-clip errors recorded (in the file's `errors` group) rather than raised.

HDF5 layout (pipeline.store.intermediates reads it): `/<array name>/<clip id>` datasets, `/errors`
attributes {clip id: message}, and root attributes `stage`, `config` (JSON), `fingerprint`, `complete`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_output, remove_stale_temps
from mlb.common.stopping import Stopped, current_request
from pipeline.engine.executors import Executor, as_executor
from pipeline.manifest import ClipRecord
from pipeline.media import resolve_inside
from pipeline.store.intermediates import is_complete

BATCH_SIZE = 8  # clips per part file; fixed so that batches (hence bytes) never depend on the workers
PARTS_MARK = ".parts-"  # .<output name>.parts-<fingerprint>/: the finished batches of an unfinished output


@dataclass(frozen=True)
class ClipJob:
    """One clip's input to a per-clip stage: its id, the absolute path of the file it reads, and the part
    of that file to use (`segment` = (start, duration) in seconds; None: all of it)."""

    id: str
    path: str
    segment: tuple[float, float] | None = None

    def fingerprint(self) -> list:
        try:
            st = os.stat(self.path)
            facts = [self.id, self.path, st.st_size, st.st_mtime_ns]
        except OSError:
            facts = [self.id, self.path, None, None]
        return facts if self.segment is None else [*facts, list(self.segment)]


# compute(jobs, config) -> {clip id: {array name: array} or error message (str)}
ComputeFn = Callable[[Sequence[ClipJob], dict], dict[str, "dict[str, np.ndarray] | str"]]


def digest(obj) -> str:
    """sha256 of an object's JSON (sorted keys): the fingerprint of inputs and configs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def stage_fingerprint(stage: str, config: dict, jobs: Sequence[ClipJob]) -> str:
    """Changes whenever the stage, its config, or any input file (path, size, mtime) changes."""
    return digest([stage, config, [job.fingerprint() for job in jobs]])


def parts_folder(out_path: Path, fingerprint: str) -> Path:
    return out_path.with_name(f".{out_path.name}{PARTS_MARK}{fingerprint[:16]}")


def remove_stale_parts(out_path: Path, keep: Path | None = None) -> None:
    """Part folders of `out_path` made for other inputs or configs (or all, with keep=None): useless now."""
    for stale in out_path.parent.glob(f".{out_path.name}{PARTS_MARK}*"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)


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


class WriteError(OSError):
    """Writing an intermediate failed (a full disk, a read-only folder); names the file."""


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """HDF5 reports a failed write as OSError or RuntimeError, often without the file: WriteError naming it."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if isinstance(err, WriteError | InputsChanged):
            raise
        raise WriteError(
            getattr(err, "errno", None) or errno.EIO, str(err).strip()[:300], str(path)
        ) from None


class InputsChanged(RuntimeError):
    """An input file the manifest lists is gone: the corpus root moved, vanished or was edited since the
    index stage ran."""


def _run_batch(compute: ComputeFn, stage: str, config: dict, task: tuple[list[ClipJob], Path, str]) -> int:
    """One batch on a worker: compute it and save it as a part. Returns the number of clips."""
    jobs, part, batch_fingerprint = task
    for job in jobs:  # the index stage saw every one of them: a missing one is a fault, not a bad clip
        if not os.path.exists(job.path):
            raise InputsChanged(
                f"{job.path} (clip {job.id}) is gone since the index stage listed it: the corpus root may have been "
                "unmounted, moved or edited. Put it back and rerun (finished batches are kept), or rerun the index "
                "stage if the corpus really changed"
            )
    results = compute(jobs, config)
    with _writing(part):
        _write_part(part, stage, batch_fingerprint, results)
    return len(jobs)


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


def run_per_clip(
    stage: str,
    jobs: Sequence[ClipJob],
    compute: ComputeFn,
    config: dict,
    out_path: str | Path,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Compute `compute` over `jobs` (sorted by id here) into the single HDF5 file `out_path`, the batches
    on `executor` (default: this process).

    Skips everything when `out_path` is already complete for the same inputs and config. Returns the
    per-clip errors {clip id: message}.
    """
    import h5py
    from tqdm import tqdm

    out_path = Path(out_path)
    jobs = sorted(jobs, key=lambda j: j.id)
    fingerprint = stage_fingerprint(stage, config, jobs)
    if is_complete(out_path, fingerprint):
        remove_stale_parts(out_path)  # a run killed between its merge and its clean-up leaves its parts
        with h5py.File(out_path, "r") as f:
            return {k: str(v) for k, v in f["errors"].attrs.items()}

    parts_dir = parts_folder(out_path, fingerprint)
    remove_stale_parts(out_path, keep=parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_path.parent)  # what a killed run may have left half-written
    remove_stale_temps(parts_dir)

    batches = [jobs[i : i + BATCH_SIZE] for i in range(0, len(jobs), BATCH_SIZE)]
    parts = [parts_dir / f"batch-{index:06d}.h5" for index in range(len(batches))]
    done = [False] * len(batches)
    todo_index, todo = [], []  # the batches still to compute: (jobs, part file, batch fingerprint)
    for index, batch in enumerate(batches):
        bfp = digest([fingerprint, [job.fingerprint() for job in batch]])
        done[index] = is_part_done(parts[index], bfp)
        if not done[index]:
            todo_index.append(index)
            todo.append((batch, parts[index], bfp))

    # The output is written under a temp name while the parts are computed: each finished part is
    # appended as soon as every part before it is in (id order), so the main process merges while the
    # workers compute. `complete` is set last: a file without it is never trusted.
    errors: dict[str, str] = {}
    merged = 0
    already = len(jobs) - sum(len(batch) for batch, _, _ in todo)
    bar = tqdm(
        total=len(jobs), initial=already, desc=stage, unit="clip", disable=not progress, dynamic_ncols=True
    )
    with atomic_output(out_path) as tmp, bar:
        with _writing(out_path):
            out = h5py.File(tmp, "w", track_order=True)
        try:
            with _writing(out_path):
                out.attrs["stage"] = stage
                out.attrs["config"] = json.dumps(config, sort_keys=True)
                out.attrs["fingerprint"] = fingerprint
                out.create_group("errors")

            def merge_ready() -> None:
                nonlocal merged
                with _writing(out_path):
                    while merged < len(parts) and done[merged]:
                        _append_part(out, parts[merged], errors)
                        merged += 1

            merge_ready()
            run_batch = partial(_run_batch, compute, stage, config)
            stop = current_request()
            for position, clips in as_executor(executor).map_unordered(run_batch, todo):  # a worker's error
                bar.update(clips)  # comes through as it is
                done[todo_index[position]] = True
                merge_ready()
                if stop.requested and not all(done):  # the finished parts stay for the rerun
                    raise Stopped(
                        f"{stop.reason} during the {stage} stage, {bar.n} of {len(jobs)} clips done (kept): rerun "
                        "the same command to continue"
                    )
            with _writing(out_path):
                out.attrs["complete"] = True
        finally:
            with _writing(out_path):
                out.close()
    shutil.rmtree(parts_dir, ignore_errors=True)
    return errors


def clip_jobs(records: Sequence[ClipRecord], root: str | Path, role: str, input_path: str) -> list[ClipJob]:
    """One job per clip usable for `input_path` (kept, in a split, not ruled out for that path), reading
    its media of `role` (`audio` or `video`) inside the corpus root, with its segment."""
    return [
        ClipJob(
            r.id,
            str(resolve_inside(root, r.media[role])),
            None if r.segment is None else r.segment.as_tuple(),
        )
        for r in records
        if r.usable_for(input_path)
    ]
