"""`RayExecutor`: the per-clip work of `prepare` as Ray tasks, on this machine or on a Ray cluster.

    with RayExecutor(workers=8) as executor:                      # a local Ray instance of 8 CPUs
        prepare(Run(corpus, root, out, config, executor))
    RayExecutor(workers=64, address="ray://head:10001")            # an existing cluster (or "auto")

An optional extra (`pip install 'mlbpipe[ray]'`); ray is imported only when one is built. Each task is one
batch of the stage (the same function and argument a `LocalExecutor` worker gets), asks for one CPU, and
runs single-threaded. The stage writes every batch's part file itself, from the worker, into the output
folder (`run_per_clip`), and reads its inputs (the corpus, faces.h5) by path: on a cluster of several
machines the corpus root and the output folder must be the same paths on shared storage on every node.
The stages order the results themselves, so the bytes are the local engine's when the math runs with the
same threads: Ray runs each task on one thread (OMP_NUM_THREADS=1), so run the local engine with
OMP_NUM_THREADS=1 to compare (without it, the local processes' numpy may use several threads, which moves
the last bits of the spectrograms).

Faults: a task whose worker process dies (killed, out of memory, a lost node) is run again by Ray, up to
`max_retries` times; an exception raised by the task itself is not retried and comes out of
`map_unordered` as the original exception, as with LocalExecutor (Ray's traceback of the worker as a
note).

The extractor stages stay on plain tasks: Ray keeps a worker process between tasks, so the faces
stage's MTCNN (cached per process) is built once per worker, as in a LocalExecutor worker; the features
stage runs in the calling process whatever the executor (pipeline.prepare). Tasks ask for no GPU, and Ray
hides the GPUs from such tasks: with `device: auto` the faces run on the workers' CPUs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from pipeline.engine.executors import Executor

INSTALL_HINT = "pip install 'mlbpipe[ray]'"


class RayMissing(RuntimeError):
    """--engine ray without ray installed."""


def _import_ray(local: bool):
    if local and "ray" not in sys.modules:
        # Ray reads this once, at import: a one-machine instance then binds loopback only, not every
        # interface (nothing outside this machine needs to reach it).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as err:
        raise RayMissing(f"the Ray engine needs ray, which is not installed: {INSTALL_HINT}") from err
    return ray


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """One task on a Ray worker: single-threaded math, as in a LocalExecutor worker (each task holds one
    CPU)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # never import it just for this (see executors.WORKER_PRELOAD)
        sys.modules["torch"].set_num_threads(1)
    return fn(item)


class RayExecutor(Executor):
    """Tasks on Ray, at most `workers` at a time (one CPU each), their results handed back as they finish.

    address: None starts a Ray instance on this machine with `workers` CPUs (loopback only) and stops it
    on close(); "auto" or "ray://host:10001" connects to a running cluster, and close() only disconnects.
    A process already connected to Ray (ray.init called before) is used as it is and left connected.
    max_retries: how many times Ray reruns a task whose worker process died.
    """

    def __init__(self, workers: int = 1, address: str | None = None, *, max_retries: int = 3):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r}: must be an integer of at least 1")
        self.workers = workers
        self.address = address
        ray = _import_ray(local=address is None)
        self._ray = ray
        self._owns_connection = False
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
            self._owns_connection = True
        # retry_exceptions=False: a Python exception is the task's answer (a bad input, a full disk), not a
        # fault of the machine; rerunning it would only delay the same error.
        self._task = ray.remote(_call).options(num_cpus=1, max_retries=max_retries, retry_exceptions=False)

    def map_unordered(self, fn, items):
        ray = self._ray
        fn_ref = ray.put(fn)  # shipped once, not once per task
        # A window of `workers` tasks: that many CPUs of a shared cluster, never more.
        next_index, pending = 0, {}
        while next_index < len(items) or pending:
            while next_index < len(items) and len(pending) < self.workers:
                pending[self._task.remote(fn_ref, items[next_index])] = next_index
                next_index += 1
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                index = pending.pop(ref)
                yield index, self._result(ref)
        # Stopping early (the caller's Stopped, a failed task) leaves the tasks in flight to finish: each
        # writes its part, which the rerun keeps, as a LocalExecutor's running tasks do.

    def _result(self, ref):
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
                cause.add_note(f"raised in a Ray worker: {err}")  # its message holds the worker's traceback
                raise cause from None
            raise RuntimeError(f"a Ray task failed: {err}") from err
        except ray.exceptions.RayError as err:  # retries used up, a lost node, a stopped cluster
            raise RuntimeError(f"the Ray cluster could not run a task ({type(err).__name__}): {err}") from err

    def close(self) -> None:
        if self._owns_connection:
            self._owns_connection = False
            self._ray.shutdown()  # stops the instance it started; on a cluster, only disconnects
