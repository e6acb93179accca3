"""`RayExecutor`: the per-clip work of `prepare` as Ray tasks (Ray actors for the stages that hold a model),
on this machine or on a Ray cluster.

    with RayExecutor(workers=8) as executor:                      # a local Ray instance of 8 CPUs
        prepare(Run(corpus, root, out, config, executor))
    RayExecutor(workers=64, address="ray://head:10001")            # an existing cluster (or "auto")

An optional extra (`pip install 'mlbpipe[ray]'`); ray is imported only when one is built. Each task is one
batch of the stage (the same function and argument a `LocalExecutor` worker gets), asks for one CPU, and
runs single-threaded. The stage writes every batch's part file itself, from the worker, into the output
folder (`run_per_clip`), and reads its inputs (the corpus, faces.h5) by path: on a cluster of several
machines the corpus root and the output folder must be the same paths on shared storage on every node.
The stages order the results themselves, so the bytes are the local engine's: Ray runs each task on one
thread (OMP_NUM_THREADS=1), as the local engine pins its workers and its calling process
(pipeline.engine.executors.ONE_THREAD, one_thread), whatever the user's environment says.

Faults: a task whose worker process dies (killed, out of memory, a lost node) is run again by Ray, up to
`max_retries` times; an exception raised by the task itself is not retried and comes out of
`map_unordered` as the original exception, as with LocalExecutor (Ray's traceback of the worker as a
note).

Models: `for_models()` (the features stage, pipeline.prepare) is a pool of Ray actors, long-lived
processes each given one batch at a time: the stage's extractors (cached per process) are built once per
actor and stay loaded for the whole stage. Where the cluster has GPUs each actor holds one (as many actors
as GPUs, at most `workers`) and the features' `device: auto` resolves to CUDA inside the actor, which
sees only its own GPU (so name it `auto` or `cuda`, not `cuda:N`); on a cluster without GPUs, or with
`device: cpu`, there are `workers` actors of one CPU each. An actor whose process dies is restarted and
its batch rerun (`max_retries` times, as for tasks); an exception raised by the stage comes out as itself.
The actors are killed when the stage closes its executor, or at the latest on close().

The faces stage stays on plain tasks: its MTCNN is small, Ray keeps a worker process between tasks, so
it is built once per worker as in a LocalExecutor worker, and the stage is bound by video decoding, which
wants every CPU of the cluster rather than one actor per GPU. Tasks ask for no GPU, and Ray hides the
GPUs from such tasks: with `device: auto` the faces run on the workers' CPUs.
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


def _result(ray, ref):
    """The value of a finished task or actor call: the task's own exception raised as itself (with the
    worker's traceback as a note), a fault of the cluster as a RuntimeError."""
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


class _ModelWorker:
    """The body of one Ray actor: a process that stays up between calls, so the caches of the module-level
    functions it runs (the features stage's extractors) keep their models loaded."""

    def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return _call(fn, item)


class RayExecutor(Executor):
    """Tasks on Ray, at most `workers` at a time (one CPU each), their results handed back as they finish.

    address: None starts a Ray instance on this machine with `workers` CPUs (loopback only) and stops it
    on close(); "auto" or "ray://host:10001" connects to a running cluster, and close() only disconnects.
    A process already connected to Ray (ray.init called before) is used as it is and left connected.
    max_retries: how many times Ray reruns a task whose worker process died (and restarts a dead actor of
    `for_models()`).
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
        self._max_retries = max_retries
        self._pools: list[RayActorPool] = []  # the for_models() pools handed out, killed on close()
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
                yield index, _result(ray, ref)
        # Stopping early (the caller's Stopped, a failed task) leaves the tasks in flight to finish: each
        # writes its part, which the rerun keeps, as a LocalExecutor's running tasks do.

    def for_models(self, device: str = "auto") -> Executor:
        pool = RayActorPool(self._ray, self.workers, device, max_retries=self._max_retries)
        self._pools.append(pool)
        return pool

    def close(self) -> None:
        for pool in self._pools:  # a caller that left its pool open: its actors would hold their GPUs
            pool.close()
        self._pools.clear()
        if self._owns_connection:
            self._owns_connection = False
            self._ray.shutdown()  # stops the instance it started; on a cluster, only disconnects


class RayActorPool(Executor):
    """`RayExecutor.for_models()`: a pool of Ray actors (`_ModelWorker`), each given one item at a time,
    the results handed back as they finish. The actors start at construction (each builds its models at
    its first item) and are killed on close().

    One GPU per actor where the cluster has any (as many actors as GPUs, at most `workers`), unless
    `device` is "cpu"; else `workers` actors of one CPU. `device` is only read for that choice: the stage
    resolves it in the actor, where Ray has made the actor's own GPU the only one visible.
    max_retries: how many times Ray restarts a dead actor and reruns the call it was running.
    """

    def __init__(self, ray, workers: int, device: str = "auto", *, max_retries: int = 3):
        self._ray = ray
        gpus = int(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0
        # One CPU besides the GPU: the actor also reads and decodes its batch's inputs.
        resources = {"num_cpus": 1, "num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
        self.workers = min(gpus, workers) if gpus >= 1 else workers
        # max_task_retries: a call lost with its actor (killed, out of memory, a lost node) is rerun on the
        # restarted actor; an exception raised by the call is its answer and is not retried (Ray's default
        # for actor methods).
        actor_class = ray.remote(_ModelWorker).options(
            **resources, max_restarts=max_retries, max_task_retries=max_retries
        )
        self._actors = [actor_class.remote() for _ in range(self.workers)]

    def map_unordered(self, fn, items):
        ray = self._ray
        if not self._actors:
            raise RuntimeError("this RayActorPool is closed")
        fn_ref = ray.put(fn)  # shipped once, not once per item
        idle, next_index, pending = list(self._actors), 0, {}
        while next_index < len(items) or pending:
            # One item per actor at a time: a batch never waits behind another on a busy actor while a
            # free one idles.
            while next_index < len(items) and idle:
                actor = idle.pop()
                pending[actor.run.remote(fn_ref, items[next_index])] = (next_index, actor)
                next_index += 1
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ref)
            idle.append(actor)
            yield index, _result(ray, ref)

    def close(self) -> None:
        actors, self._actors = self._actors, []
        for actor in actors:  # frees their GPUs and memory now; a call in flight is lost (rerun on resume)
            self._ray.kill(actor)
