"""The per-clip engine (`run_per_clip`: parts, merge, fingerprints) and the executors it runs work on.

`RayExecutor` (pipeline.engine.ray_executor, the optional `ray` extra) is exported lazily: importing this
package never imports ray."""

from pipeline.engine.executors import Executor, InProcess, LocalExecutor
from pipeline.engine.per_clip import ClipJob, run_per_clip

__all__ = ["ClipJob", "Executor", "InProcess", "LocalExecutor", "RayExecutor", "run_per_clip"]


def __getattr__(name: str):
    if name == "RayExecutor":
        from pipeline.engine.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
