"""Where per-clip work runs: the `Executor` interface and the local process pool behind it.

A stage hands an executor independent tasks (a module-level function and one argument each, so they can
be pickled to another process) and takes the results back as they finish, in any order; the stage, not the
executor, puts them in order, so the output never depends on how or where the work ran. `LocalExecutor` runs
them in this process (1 worker) or in a pool of single-threaded worker processes; a distributed executor
plugs in behind the same two methods.

`for_models()` is the executor for stages that hold a model (a big, stateful object, possibly on a GPU:
the features stage's frozen extractors). Such a stage builds its model once per process (a module-level
cache), so it wants few, long-lived processes that own their device, not many short tasks. With a GPU that
is `InProcess()`, the calling process (a GPU belongs to one process); on a CPU, `LocalExecutor.for_models()`
is its own pool of single-threaded workers, each building the models at its first task (as many copies of
the models as workers: memory for speed), as `RayExecutor.for_models()` is a pool of Ray actors, one per
GPU or one CPU each.

Every task computes on one math thread, wherever it runs (a pool worker, the calling process: `one_thread`,
a Ray task or actor): a CPU convolution's last bits depend on how many threads split it, so the bytes are
the same on both engines whatever OMP_NUM_THREADS and the like say.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Self

# Imported once by the fork server, so that each worker it forks starts warm. torch is left out on purpose
# (~1.5 s and ~700 MiB): the ResNet-path stages do not use it, and a stage that does (faces, features)
# imports it where it needs it (a test checks that no worker of the ResNet path imports it).
WORKER_PRELOAD = [
    "numpy", "h5py", "av", "cv2", "soundfile", "soxr", "scipy.fft",
    "pipeline.engine.per_clip", "pipeline.media", "pipeline.compute.spectrogram",
]  # fmt: skip
# One thread for every math library of a worker, whatever the user's environment says: the libraries read
# these when they load, so the fork server starts with them (before its preload) and every worker it forks
# inherits them. A worker then computes as a Ray task does (the same bytes), and N workers use N cores, not
# N x cores threads.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",  # OpenMP: torch's intra-op pool
    "OPENBLAS_NUM_THREADS": "1",  # numpy's, scipy's and OpenCV's OpenBLAS
    "MKL_NUM_THREADS": "1",
    "OPENCV_FOR_THREADS_NUM": "1",  # OpenCV's own parallel loops
}


class Executor(ABC):
    """Runs independent tasks and hands back their results as they finish."""

    workers: int = 1

    @abstractmethod
    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield `(index into items, fn(item))` for every item, in the order they finish. An exception
        raised by `fn` is raised here."""

    def for_models(self, device: str = "auto") -> Executor:
        """The executor for stages that hold a model (see the module doc), to be closed by the caller when
        the stage is done. `device` is the stage's device setting ("cpu" asks for CPU workers even where
        there are GPUs); it is resolved where the model is built, never here. Default: this process."""
        return InProcess()

    def close(self) -> None:
        """Release the workers (a no-op where there are none)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcess(Executor):
    """Every task in this process, one after the other."""

    def map_unordered(self, fn, items):
        for index, item in enumerate(items):
            yield index, fn(item)


class LocalExecutor(Executor):
    """`workers` single-threaded processes on this machine, started by a fork server: a clean process with
    no threads, so no lock held by one of our threads (tqdm's monitor, torch's or OpenMP's pools) is ever
    copied into a worker, which plain fork can deadlock on. With 1 worker, or a single task, the work runs
    in this process. The pool starts at construction, in the background, so a caller that builds one
    executor for several stages (`prepare`) starts its workers once."""

    def __init__(self, workers: int = 1):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r}: must be an integer of at least 1")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(WORKER_PRELOAD)
            self._pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker
            )
            # A no-op per worker: the processes start now, not at the first task. The fork server starts
            # with the first of them, so it gets ONE_THREAD there (the calling process's own is restored).
            with _environment(ONE_THREAD):
                for _ in range(workers):
                    self._pool.submit(int)

    def map_unordered(self, fn, items):
        if self._pool is None or len(items) <= 1:
            yield from InProcess().map_unordered(fn, items)
            return
        pending = {self._pool.submit(fn, item): index for index, item in enumerate(items)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:  # the caller stopped early or a task failed: drop what has not started
                future.cancel()

    def for_models(self, device: str = "auto") -> Executor:
        """With a GPU, this process; on a CPU, this pool (its one-thread workers give the bytes a Ray actor
        of one CPU gives, `workers` times as fast as this process alone). Closing it leaves the pool open:
        it belongs to this executor."""
        if self._pool is None or _uses_gpu(device):
            return InProcess()
        return _Lent(self)

    def submit(self, fn: Callable, *args):
        """One task on a worker (for tests and warm-up); a concurrent.futures.Future."""
        if self._pool is None:
            raise RuntimeError("a LocalExecutor with 1 worker has no pool to submit to")
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(cancel_futures=True)


class _Lent(Executor):
    """An executor's pool lent to a stage: its tasks run there; closing it does not close the pool."""

    def __init__(self, owner: Executor):
        self._owner = owner
        self.workers = owner.workers

    def map_unordered(self, fn, items):
        return self._owner.map_unordered(fn, items)


def _uses_gpu(device: str) -> bool:
    """Does a model stage's device setting put its models on a GPU here ("auto": when CUDA is present)?"""
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    import torch  # only a model stage asks, and it loads torch anyway

    return torch.cuda.is_available()


def one_thread() -> None:
    """This process computes on one math thread from now on, as a pool worker or a Ray task does (the
    caller of the local engine runs the model stages, and every stage with 1 worker). The libraries read
    ONE_THREAD when they load: set before torch is imported, it gives Ray's bytes, which a later
    torch.set_num_threads(1) alone does not always (EfficientNet's convolutions differ in the last bit)."""
    os.environ.update(ONE_THREAD)
    if "torch" in sys.modules:  # loaded already (a caller of prepare() in Python): the closest we can do
        sys.modules["torch"].set_num_threads(1)


def as_executor(executor: Executor | None) -> Executor:
    return InProcess() if executor is None else executor


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` inside (for the processes started there), as it was after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    import signal

    _die_with_parent()
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the main process stops the run at a
    # safe point (mlb.common.stopping) and a worker finishes the batch in hand, so it ignores them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Each worker is one process on one core: it inherits ONE_THREAD from the fork server; set here too for
    # the libraries it loads later, should a fork server have been started elsewhere without it.
    os.environ.update(ONE_THREAD)

    if "torch" in sys.modules:  # never import it just for this (see WORKER_PRELOAD)
        sys.modules["torch"].set_num_threads(1)
