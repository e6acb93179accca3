"""What `mlbpipe tune` may vary: each method's `search_space` maps a setting to one of these ranges. Torch-free,
so the tuner and the command line can read search spaces without importing a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FloatRange:
    """A float hyper-parameter searched in [low, high] (on a log scale when `log`)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer hyper-parameter searched in [low, high]."""

    low: int
    high: int


SearchSpace = dict[str, FloatRange | IntRange]
