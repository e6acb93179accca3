"""One training step: a batch through the balancer's hooks and the optimiser (`train_step`).

    ctx = StepContext(model, balancer, optimizer, scaler, parameters, device)
    logs = train_step(ctx, batch)   # {name: float}, or None when the step was skipped (non-finite)

The order inside one optimiser update (a method may take several per batch, `updates_per_batch`):
forward (`balancer.forward`) -> loss (`balancer.loss`) -> backward -> gradients summed over the training
processes -> unscale -> `balancer.before_step` (may rewrite gradients) -> clip the global gradient norm
(only when `ctx.grad_clip_norm` is set) -> finiteness check -> step.

Clipping comes after the unscale, so it sees the real norm, and after `before_step`, so it bounds the update
the optimiser actually takes, whatever the method did to the gradients (DGL's authors clip after backward,
just before `optimizer.step()`; DGL's `before_step` does nothing). Under torchrun the gradients are the
global batch's by then, so every rank clips by the same factor. The norm before clipping is logged as
`grad_norm` (it costs nothing: clip_grad_norm_ computes it, and it is read with the other logs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlb.balancing import Balancer, floats_for_log
from mlb.train.distributed import sum_gradients_
from mlb.world import LOCAL, World


@dataclass
class StepContext:
    """What a training step needs besides the batch; built once per run."""

    model: nn.Module
    balancer: Balancer
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    parameters: list[nn.Parameter]  # the trained ones (requires_grad), in model order
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    world: World = LOCAL  # the training processes (one by default)
    # the global gradient norm every update is clipped to (TrainConfig.resolved_grad_clip_norm); None: none
    grad_clip_norm: float | None = None


def train_step(ctx: StepContext, batch: dict[str, Any]) -> dict[str, float] | None:
    """One batch: `balancer.updates_per_batch(model)` optimiser updates (one for every method but the
    alternating ones), each with the balancer's hooks; None when a loss or a gradient is not finite (the
    batch's remaining updates are skipped; updates already made stay).

    Under torchrun (`ctx.world`): each rank back-propagates its loss times n_r / N (its clips' share of the
    global batch), the gradients are summed over the ranks before `before_step`, and a non-finite loss on
    any rank skips the update on all; the returned logs are averaged over the ranks."""
    model, balancer, optimizer, scaler = ctx.model, ctx.balancer, ctx.optimizer, ctx.scaler
    # A skipped step must leave no trace: the forward pass also updates buffers (BatchNorm running
    # statistics), which a NaN input would poison. They are small: keep a copy to put back.
    buffers = [b.detach().clone() for b in model.buffers()]
    logs: dict[str, Any] = {}
    label = batch["label"]  # [B]
    for substep in range(balancer.updates_per_batch(model)):
        balancer.substep = substep
        with autocast(ctx.device, ctx.amp_dtype):
            out = balancer.forward(model, batch)  # fused [B, C], unimodal {m: [B, C]}
            loss, step_logs = balancer.loss(model, batch, out)
        optimizer.zero_grad(set_to_none=True)
        loss, finite = _global_batch_loss(loss, out.fused.shape[0], ctx.world)
        if not finite:
            restore_buffers(model, buffers)
            return None
        scaler.scale(loss).backward()
        sum_gradients_(
            ctx.parameters, ctx.world
        )  # the global batch's gradients, before the balancer reads them
        scaler.unscale_(optimizer)  # real gradient values for the balancer (no-op when disabled)
        logs |= {**step_logs, **(balancer.before_step(model, batch, out) or {})}
        if ctx.grad_clip_norm is not None:  # the norm before clipping: [] tensor
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(ctx.parameters, ctx.grad_clip_norm)
        if not grads_finite(ctx.parameters):
            optimizer.zero_grad(set_to_none=True)
            restore_buffers(model, buffers)
            scaler.update()  # an fp16 scaler lowers its scale after an overflow
            return None
        scaler.step(optimizer)
        scaler.update()
        logs |= _train_accuracies(out, label)
    return ctx.world.mean_logs(floats_for_log(logs), int(label.shape[0]))


def _global_batch_loss(loss: torch.Tensor, rows: int, world: World) -> tuple[torch.Tensor, bool]:
    """(the loss to back-propagate, whether it is finite on every rank). `rows`: the clips this update's loss
    averages over. On several processes the loss is weighted by rows / global rows, so that the sum over ranks
    is the global batch's mean loss; one collective carries the row count and the finiteness flags."""
    finite = bool(torch.isfinite(loss.detach()))
    if not world.distributed:
        return loss, finite
    total_rows, bad = world.sum(torch.tensor([rows, 0 if finite else 1], dtype=torch.float64)).tolist()
    return loss * (rows / total_rows), bad == 0


@torch.no_grad()
def _train_accuracies(out, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training accuracy per head, from this update's outputs. G-Blending trains on part of the batch: no
    figure then."""
    if out.fused.shape[0] != label.shape[0]:
        return {}
    logs = {"train_acc": (out.fused.argmax(1) == label).float().mean()}
    for m, logits in out.unimodal.items():  # logits [B, C]
        logs[f"train_acc_{m}"] = (logits.argmax(1) == label).float().mean()
    return logs


# --- small helpers -----------------------------------------------------------------------------------
def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Mixed precision on CUDA when `amp_dtype` is set; a no-op context otherwise."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def grads_finite(parameters: list[nn.Parameter]) -> bool:
    """True when every gradient is finite; one host sync for all parameters."""
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def restore_buffers(model: nn.Module, buffers: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)
