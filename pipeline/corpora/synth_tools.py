"""What every synthetic stand-in shares: its file writes (atomic, no fsync: a stand-in is remade by a
rerun), Git LFS pointer stubs, the checks of the options every stand-in has, and the job runner (in this
process or a spawn pool, with a progress bar)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from mlb.common.atomic import atomic_write_bytes
from pipeline.media import LFS_POINTER_PREFIX


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a generated corpus is remade by a rerun: no fsync)."""
    atomic_write_bytes(path, data, durable=False)


def lfs_stub(oid: int, size: int) -> bytes:
    """A Git LFS pointer file, as a clone without `git lfs pull` leaves in place of a media file."""
    return LFS_POINTER_PREFIX + f"\noid sha256:{oid:064x}\nsize {size}\n".encode()


def seed_field() -> Any:
    """The `seed` option every stand-in has."""
    return field(
        default=0, metadata={"help": "Random seed: the same seed and options give byte-identical files."}
    )


def workers_field() -> Any:
    """The `workers` option every stand-in has."""
    return field(
        default=1, metadata={"help": "Processes to generate with (the output does not depend on it)."}
    )


def progress_field() -> Any:
    """The progress-bar switch every stand-in has (not an option: the command line always shows one)."""
    return field(default=True, metadata={"cli": False})


def check_common_options(config: Any) -> None:
    """The options every stand-in has: cue strengths in [0, 5], label-noise fractions in [0, 1], seed >= 0,
    workers >= 1 (ValueError naming the option and the value)."""
    for key in ("audio_cue", "video_cue"):
        if not 0 <= getattr(config, key) <= 5:
            raise ValueError(f"{key} must be in [0, 5], got {getattr(config, key)!r}")
    for key in ("audio_noise", "video_noise"):
        if not 0 <= getattr(config, key) <= 1:
            raise ValueError(f"{key} must be in [0, 1], got {getattr(config, key)!r}")
    if config.seed < 0:
        raise ValueError(f"seed must be >= 0, got {config.seed!r}")
    if config.workers < 1:
        raise ValueError(f"workers must be >= 1, got {config.workers!r}")


def run_jobs(
    make: Callable[[Any], float],
    jobs: Sequence[Any],
    *,
    workers: int,
    desc: str,
    unit: str,
    progress: bool,
    initializer: Callable[[], None] | None = None,
) -> list[float]:
    """`make(job)` for every job, in order, here (workers 1) or in a pool of `workers` processes; returns
    what each returned. `make` and `initializer` must be module-level functions (they are pickled)."""
    from tqdm import tqdm

    bar = {"total": len(jobs), "desc": desc, "unit": unit, "disable": not progress}
    if workers == 1:
        return [make(job) for job in tqdm(jobs, **bar)]
    # spawn: the parent may hold torch / OpenMP threads that a fork would copy in a broken state
    with multiprocessing.get_context("spawn").Pool(workers, initializer) as pool:
        return list(tqdm(pool.imap(make, jobs, chunksize=1), **bar))
