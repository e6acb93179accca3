"""Atomic writes: every file or folder that a later step reads appears under its final name only when it
is complete. The one helper of the project for this (the pipeline's stages use it too).

A file is written to `<name>.tmp-<pid>` in the same folder and renamed onto `<name>`; a folder is built
as `<name>.tmp-<pid>/` and swapped in (the old one moves to `<name>.old-<pid>/` for the instant of the
swap). A killed process leaves at most such a temp name behind; `remove_stale_temps` deletes the ones
whose process is gone and never touches a live writer's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"  # <name>.tmp-<pid>: a file or folder being written by process <pid>
OLD_MARK = ".old-"  # <name>.old-<pid>: a replaced folder, deleted right after the swap


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: `<name>.tmp-<pid>` beside it."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it (unless not `durable`) and rename it onto
    `path`, on error delete it. Readers see either the old file or the complete new one. The rename alone
    survives a killed process; the fsync also survives a power cut, which scratch files that a rerun can
    recompute do not need."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if durable and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename is None:  # a failed write() names no file: name it
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_output(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable=durable)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> None:
    """`obj` as JSON (NaN allowed, as Python writes it) plus a newline."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=True) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path` as a whole, so the folder
    is always either the complete old one or the complete new one. Leftovers of killed runs are removed
    first (`remove_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f"{path.name}{OLD_MARK}{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def writer_pid(path: Path) -> int | None:
    """The pid in a temp name (`<name>.tmp-<pid>` or `<name>.old-<pid>`), else None."""
    for mark in (TMP_MARK, OLD_MARK):
        name, found, pid = path.name.rpartition(mark)
        if found and name and pid.isdigit():
            return int(pid)
    return None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files and folders that killed runs left in `folder` (`<name>.tmp-<pid>`,
    `<name>.old-<pid>`, their process no longer running); a live process's are left alone. Returns what
    was deleted."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            pid = writer_pid(path)
            if pid is None or pid_alive(pid):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
