"""The per-clip engine (`run_per_clip`: parts, merge, fingerprints) and the executors it runs work on."""

from pipeline.engine.executors import Executor, InProcess, LocalExecutor
from pipeline.engine.per_clip import ClipJob, run_per_clip

__all__ = ["ClipJob", "Executor", "InProcess", "LocalExecutor", "run_per_clip"]
