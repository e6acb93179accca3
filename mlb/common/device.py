"""Where to compute: one device resolver for the trainer and the pipeline's extractors."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`"auto"` is CUDA when a GPU is visible, else the CPU; any other name is parsed by `torch.device`.

    Fails early with a ValueError naming the value: for a name torch does not know, and for "cuda" or
    "cuda:N" on a machine without CUDA (torch would accept the name and fail only at the first tensor).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:N): {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine")
    return device
