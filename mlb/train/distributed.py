"""Data-parallel training across processes (torchrun): who this process is, and the collectives.

One source of rank and world size: `World`, built once by `init_world()` from the variables torchrun sets
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`). On one process every collective is the identity, so the trainer and
the balancers call them unconditionally.

How a step stays equal to one process on the global batch (docs in `mlb.train`):
- every rank back-propagates its batch-mean loss weighted by n_r / N (its share of the global batch),
  and the gradients are then summed across ranks (`sum_gradients_`), once per optimiser update, *before*
  the balancer's `before_step` reads or rewrites them;
- a balancer reduces the statistics its coefficients come from (`Balancer.world`: `batch_mean`, `sum`),
  so k_i is the same on every rank;
- BatchNorm normalises with the global batch's statistics (`sync_batchnorm`).

Why not torch's `DistributedDataParallel` wrapper: it all-reduces inside `backward()` through hooks on
each parameter. Several methods take several backward passes per batch (MLA's one per modality,
MMPareto's per-loss `autograd.grad`, which those hooks never see) or leave parameters unused in an
update; averaging explicitly, once, at a fixed point of the step, serves every method with one rule. The
cost is that communication does not overlap the backward pass.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from mlb.world import LOCAL, World


def world_from_env() -> World:
    """The World torchrun describes in the environment (`World()` outside torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return LOCAL
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: torch.device, timeout_s: float = 1800.0) -> tuple[World, torch.device]:
    """Join the process group torchrun describes: NCCL on CUDA, gloo on CPU (set up at the first call, left
    up until the process exits). Returns the World and this process's device (`cuda:LOCAL_RANK` on GPUs).
    A single process returns (World(), device)."""
    world = world_from_env()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        world = dataclasses.replace(world, device=str(device))
    if not dist.is_initialized():
        # Once per process, kept for every later run in it (a process may train several): a group destroyed
        # and set up again on torchrun's store can hang.
        atexit.register(close_world, world)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    if dist.get_world_size() != world.size or dist.get_rank() != world.rank:
        raise RuntimeError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with the environment "
            f"(RANK={world.rank}, WORLD_SIZE={world.size})"
        )
    return world, device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients_(parameters: list[nn.Parameter], world: World) -> None:
    """Sum every gradient over ranks in place, one flat buffer and one collective. Each rank has weighted
    its loss by its share of the global batch, so the sum is the global batch's gradient. Which gradients
    exist is the same on every rank (same method, same graph)."""
    if not world.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # [P]
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# ---- BatchNorm over the global batch ---------------------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch (all ranks), with gradients
    through the reduction (`_SumOverRanks`), so a run on W processes
    normalises exactly as one process on the same global batch. Works on gloo (CPU), where
    `nn.SyncBatchNorm` does not; same parameters and buffers as the BatchNorm it replaces, so checkpoints
    load across world sizes. Eval mode is plain BatchNorm on the running statistics."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        dims = [0, *range(2, x.dim())]  # every axis but the channel's
        shape = [1, -1] + [1] * (x.dim() - 2)
        n_local = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        # Σx and Σx² in one collective (one per layer per pass). var = Σx²/N − mean² loses digits only where
        # |mean| >> std, which BatchNorm's inputs are not (2 processes match 1 within 1e-6 in the tests).
        packed = torch.cat([x.sum(dims), x.pow(2).sum(dims), n_local])  # [2C + 1]
        total = all_reduce(packed)
        c, n = x.shape[1], total[-1]
        mean = total[:c] / n  # [C]
        var = (total[c : 2 * c] / n - mean.pow(2)).clamp_min(0.0)  # [C], biased (as BatchNorm normalises)
        centred = x - mean.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = centred / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` normalising over the global batch when there are several ranks:
    `nn.SyncBatchNorm` on CUDA, `GlobalBatchNorm` elsewhere. One process: the model unchanged."""
    if not world.distributed:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            replacement = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(device)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            sync_batchnorm(child, world, device)
    return model
