"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it kills a job) ask a
long run to stop at the next safe point, instead of killing it wherever it is.

    with stop_on_signals() as stop:
        for step in ...:
            ...
            if stop.requested:
                save_checkpoint()
                raise Stopped(stop.reason)

A second signal while stopping is taken as "now": it raises KeyboardInterrupt at once. A stopped run exits
with STOPPED_EXIT (the command line's code for "stopped, resume me": 75, EX_TEMPFAIL of sysexits.h).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOPPED_EXIT = 75


class Stopped(Exception):
    """A run stopped on request, at a safe point; its message says how to go on."""


class StopRequest:
    """Set by the signal handlers; the run looks at `requested` at its safe points."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def reason(self) -> str:
        return f"stopped on {signal.Signals(self.signal).name}" if self.signal else "not stopped"

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum


_active: list[StopRequest] = []  # the requests of the blocks open in this process, innermost last


def current_request() -> StopRequest:
    """The stop request of the innermost open `stop_on_signals` block (one never set outside any): what a
    loop deep inside a run (the per-clip engine, say) looks at, without it being passed down."""
    return _active[-1] if _active else StopRequest()


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[StopRequest]:
    """Inside this block SIGINT and SIGTERM set `StopRequest.requested` instead of interrupting; the previous
    handlers come back on leaving. Outside the main thread (where Python cannot take signals) the request is
    never set."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop._handle) for sig in signals}
    _active.append(stop)
    try:
        yield stop
    finally:
        _active.remove(stop)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
