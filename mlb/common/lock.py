"""One writer per output folder: `folder_lock(folder, command)` holds `<folder>/.mlbpipe.lock` for the life
of a run, and a second run on the same folder is refused at once, naming the holder's pid and command.

The lock is a kernel advisory lock (`fcntl.flock`) on that file: the kernel releases it when the holding
process dies, however it dies, so the lock a killed run leaves behind is free to take, with no pid guess
and no race between two runs that both find it stale. The file's content (pid, host, command, start time)
only says who holds it. flock works between processes of one machine; on a network file system shared by
several machines, give each run its own output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".mlbpipe.lock"


class FolderBusyError(RuntimeError):
    """Another live run writes the same output folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process (its lock file is unreadable)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}, since {started})"


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the output folder `folder` (created if needed) for this process; FolderBusyError naming the
    holder when another live process holds it. Yields the lock file's path."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(
                f"{folder} is being written by {_holder(path)}; wait for that run to end or stop it, or give this "
                "run another output folder"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # the lock itself goes with the descriptor; an empty file says "free"
    finally:
        os.close(fd)
