"""The training processes a balancer reduces its statistics over: `World`, the identity on one process.

A balancer's coefficients come from batch statistics (MLB's s_i, OGM-GE's scores, ...). Under data-parallel
training every rank sees only its share of the batch, so a method reduces those statistics with
`self.world.batch_mean(...)` / `self.world.sum(...)` before they scale a gradient, and every rank computes the
same coefficients from the global batch. On one process every collective returns its input unchanged.
The harness (`mlb.train.distributed`) builds the World from torchrun's environment and sets up the process
group; a researcher's own DDP loop can build one by hand: `World(rank=..., size=...)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; `World()` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where the collectives' tensors live: NCCL reduces CUDA tensors only

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file (logs, DVCLive, checkpoints, metrics)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ---- collectives: the identity on one process -------------------------------------------------------
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of `tensor` (a new tensor; the input is left alone)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(tensor.device)

    def batch_mean(self, mean: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
        """The global batch's mean from each rank's batch `mean` (any shape) over its `count` rows:
        Σ_r count_r · mean_r / Σ_r count_r, exact when the ranks' batches differ in size."""
        if not self.distributed:
            return mean
        flat = mean.detach().float().reshape(-1)  # [K]
        n = torch.as_tensor(count, dtype=flat.dtype, device=flat.device).reshape(1)
        total = self.sum(torch.cat([flat * n, n]))  # [K + 1]
        return (total[:-1] / total[-1]).reshape(mean.shape).to(mean.dtype)

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank, in place (random draws that must agree, e.g. OGM-GE's noise)."""
        if self.distributed:
            there = tensor.to(self.device)
            dist.broadcast(there, src=0)
            if there is not tensor:
                tensor.copy_(there)
        return tensor

    def any_true(self, flag: bool) -> bool:
        if not self.distributed:
            return bool(flag)
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def broadcast_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Rank 0's values for the same keys on every rank (the selection and early-stopping decisions)."""
        if not self.distributed:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        return dict(zip(keys, self.broadcast_(tensor).tolist()))

    def gather_json(self, obj) -> list:
        """Every rank's JSON-serialisable `obj`, in rank order, on every rank. JSON bytes in a uint8
        tensor, never a pickle."""
        if not self.distributed:
            return [obj]
        device = self.device
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: data.numel()] = data
        gathered = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(self.size)]
        dist.all_gather(gathered, padded)
        return [json.loads(bytes(g[: int(s.item())].tolist()).decode()) for g, s in zip(gathered, sizes)]

    def mean_logs(self, logs: dict[str, float], count: int) -> dict[str, float]:
        """The step's log values averaged over ranks, weighted by each rank's `count` of clips. A key that
        only some ranks logged is averaged over those (coefficients already reduced come out unchanged)."""
        if not self.distributed:
            return logs
        per_rank = self.gather_json({"n": count, "logs": logs})
        merged: dict[str, float] = {}
        for key in logs:
            pairs = [(r["n"], r["logs"][key]) for r in per_rank if key in r["logs"]]
            weight = sum(n for n, _ in pairs)
            merged[key] = (
                sum(n * v for n, v in pairs) / weight if weight else sum(v for _, v in pairs) / len(pairs)
            )
        return merged


LOCAL = World()
