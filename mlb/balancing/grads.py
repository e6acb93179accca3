"""Scale the gradients of one modality's parameters in place (after `backward()`, before `step()`).

`model.modality_grad_slices(m, ownership)` lists `(parameter, index)` pairs; index None means the whole
tensor, a tuple of slices means only that part (the Late-Linear weight's columns of m). `ownership`
picks the rule for the fusion head's parameters (`mlb.models.fusion.OWNERSHIP`). Parameters without a
gradient (unused in this step) are skipped.
"""

from __future__ import annotations

import torch

from mlb.balancing.base import unwrap


def scale_grad_slices(grad_slices, k: torch.Tensor | float) -> None:
    """Multiply the gradient of every `(parameter, index)` (or its `index` part) by k, in place.

    k may be a 0-d tensor on the gradients' device: no host-device sync is needed.
    """
    whole, parts = [], []
    for p, index in grad_slices:
        if p.grad is None:
            continue
        if index is None:
            whole.append(p.grad)
        else:
            parts.append(p.grad[index])  # a view: scaling it scales p.grad in place
    if whole:
        if torch.is_tensor(k):
            # one fused kernel for all tensors of a dtype/device (grads of a model share both)
            torch._foreach_mul_(whole, k.to(device=whole[0].device, dtype=whole[0].dtype))
        else:
            torch._foreach_mul_(whole, float(k))
    for g in parts:
        g.mul_(k)


def scale_modality_grads(model, m: str, k: torch.Tensor | float, ownership: str = "input") -> None:
    """Multiply the gradient of every parameter (or parameter slice) of modality m by k."""
    scale_grad_slices(unwrap(model).modality_grad_slices(m, ownership), k)


def branch_grad_slices(model, m: str, ownership: str = "input") -> list:
    """Modality m's encoder and its slice of the fusion layer: `modality_grad_slices(m, ownership)`
    without the unimodal head (a detached probe under the baselines that have no unimodal loss)."""
    model = unwrap(model)
    head = {id(p) for p in model.unimodal_heads[m].parameters()}
    return [(p, idx) for p, idx in model.modality_grad_slices(m, ownership) if id(p) not in head]


def encoder_grad_slices(model, m: str) -> list:
    """Modality m's encoder alone: every parameter, whole."""
    return [(p, None) for p in unwrap(model).encoders[m].parameters()]


def scale_grads(model, coefficients: dict[str, torch.Tensor | float]) -> None:
    """`scale_modality_grads` for every modality in `coefficients` ({modality: k})."""
    for m, k in coefficients.items():
        scale_modality_grads(model, m, k)
