"""The balancer state round trip that the method tests check for every registered method."""

from __future__ import annotations

import io
import math
from typing import Any

import torch

from mlb.balancing import Balancer, build_balancer


def same_state(a: Any, b: Any) -> bool:
    """Equal nested dicts / lists / tensors / numbers (a NaN equals a NaN: a loss mean over no clips)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_state, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return not torch.is_tensor(b) and type(a) is type(b) and a == b


def assert_state_round_trip(name: str, trained: Balancer) -> None:
    """`trained`'s state, saved with torch.save and loaded with weights_only into a fresh balancer, gives
    the same state back; a method that keeps state (overrides `state_dict`) has some after training (it
    differs from a fresh balancer's), so an empty or dropped state cannot pass."""
    state = trained.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = build_balancer(name)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    back = restored.state_dict()
    assert same_state(back, state), f"{name}: restored {back!r:.300} != saved {state!r:.300}"
    if type(trained).state_dict is not Balancer.state_dict:
        assert not same_state(state, build_balancer(name).state_dict()), f"{name}: no state after training"
