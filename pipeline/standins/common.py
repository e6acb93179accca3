"""What every synthetic stand-in shares: its folders and file writes (atomic, no fsync: a stand-in is remade
by a rerun), Git LFS pointer stubs, the options every stand-in has and their checks, the random streams of one
clip and its label noise, the defect records of synth_defects.json, the encoder loops of its media files, and
the job runner (in this process or a spawn pool, with a progress bar)."""

from __future__ import annotations

import json
import multiprocessing
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

from mlb.common.atomic import atomic_write_bytes, remove_stale_temps
from pipeline.media import LFS_POINTER_PREFIX

DEFECTS_FILE = "synth_defects.json"


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a generated corpus is remade by a rerun: no fsync)."""
    atomic_write_bytes(path, data, durable=False)


def fresh_folder(path: Path) -> None:
    """Create `path` if needed and remove what a killed run left half-written there."""
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)


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


def clip_rng(seed: int, key: str, stream: int) -> np.random.Generator:
    """A random generator owned by one clip (or group: `key`), so that the output depends neither on the order
    of the clips nor on the worker that makes them."""
    return np.random.default_rng([seed, zlib.crc32(key.encode()), stream])


def shown_label(rng: np.random.Generator, label: Any, labels: Sequence[Any], noise: float) -> Any:
    """The label a modality's cue shows: under label noise (with probability `noise`) a random other one of
    `labels`, else `label`. Both draws are always made, so changing one noise level changes nothing else."""
    others = [other for other in labels if other != label]
    flip, pick = rng.random() < noise, int(rng.integers(max(len(others), 1)))
    return others[pick] if flip and others else label


def defect_record(clip_id: str | None, file: str, defect: str, expected: str, also=(), **more) -> dict:
    """One record of synth_defects.json: the clip, its file (relative to the root; `file:line` for a list
    line), the defect, the reason code the validator must give it (`ok`: it must pass), every code that
    correctly describes it (the first is the expected one), and what else a stand-in adds (`line`)."""
    return {
        "id": clip_id,
        "file": file,
        "defect": defect,
        "expected_reason": str(expected),
        "acceptable_reasons": [str(expected), *map(str, also)],
        **more,
    }


def write_defects(out_dir: Path, records: list[dict]) -> None:
    write_bytes(out_dir / DEFECTS_FILE, (json.dumps(records, indent=1) + "\n").encode())


def mux_pictures(container: Any, stream: Any, pictures: Iterable[np.ndarray]) -> None:
    """Encode RGB pictures (uint8 [H, W, 3] each) into the PyAV video `stream`, then flush its encoder."""
    import av

    for picture in pictures:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
    container.mux(stream.encode(None))


def mux_sound(container: Any, stream: Any, source: Any, resampler: Any) -> None:
    """Cut the PyAV AudioFrame `source` into the frames `stream`'s encoder takes (`resampler`), encode them,
    then flush the resampler and the encoder."""
    for chunk in resampler.resample(source) + resampler.resample(None):
        container.mux(stream.encode(chunk))
    container.mux(stream.encode(None))


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
