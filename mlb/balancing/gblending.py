"""G-Blending: gradient blending (Wang, Tran & Feiszli, CVPR 2020, "What Makes Training Multi-modal
Classification Networks Hard?"), the MLB paper's [24], in its online form.

The loss weighs every head k (the fused head and each unimodal head, all trained end to end):
    L = Σ_k w_k · CE_k,   Σ_k w_k = 1,   w_k ∝ |ΔG_k / ΔO_k²|
from each head's overfitting-to-generalisation ratio over the last super-epoch (n epochs, from the
end of epoch N to the end of epoch N + n):
    ΔG_k = L*_k(N) − L*_k(N+n)        (the held-out loss's fall: generalisation gained)
    O_k(t) = L*_k(t) − L_k(t)         (held-out minus training loss: overfitting)
    ΔO_k = O_k(N+n) − O_k(N)
L* is measured on a **held-out part of the training split** (a fixed `holdout` fraction of the training
clips, chosen by a hash of the clip id, never trained on), never on validation or test. The weights
start equal (1 / (M + 1)) and are recomputed at the end of every super-epoch.

How the losses are measured: per epoch, L_k is the mean CE of head k over the training clips as they
are trained on (train mode), L*_k the mean CE over the held-out clips of the same batches, each
evaluated in eval mode without gradients just before the update (about `holdout` of a forward pass
extra). These are the epoch's running means, not a separate pass at the epoch's end.

Authors' defaults here: holdout 0.1, super-epoch 10 epochs (BalanceBenchmark's `super_epoch`).
Differences from the authors' code: the G-Blend authors estimate the weights with separate models per
head trained for a super-epoch (offline, or BalanceBenchmark's online version that retrains a copy of
the model per head every super-epoch: (M + 1) extra trainings); here the one multi-head model's own
per-head losses give them (the paper's online estimate without the extra trainings). The held-out clips
are chosen per clip, not per speaker: they estimate overfitting, they select nothing.
Logs: `loss`, `loss_fused`, `loss_<m>`, `w_fused`, `w_<m>`; per epoch `gblend_w_*`.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, IntRange, SearchSpace, unwrap

FUSED = "fused"


def gblend_weights(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], eps: float = 1e-12
) -> dict[str, float] | None:
    """`{head: w}` (sum 1) from `{head: (train loss, held-out loss)}` at the start and end of a super-epoch;
    None when no head gives a finite, non-zero ratio (keep the previous weights)."""
    raw = {}
    for head, (train_0, held_0) in before.items():
        train_1, held_1 = after[head]
        gain = held_0 - held_1  # ΔG
        overfit = (held_1 - train_1) - (held_0 - train_0)  # ΔO
        value = abs(gain / overfit**2) if abs(overfit) > eps else float("nan")
        raw[head] = value if math.isfinite(value) else 0.0
    total = sum(raw.values())
    if not total > 0:
        return None
    return {head: v / total for head, v in raw.items()}


def holdout_mask(ids: list[str], fraction: float) -> torch.Tensor:
    """True for the clips held out: a fixed subset (crc32 of the id), the same in every epoch. `[B]`."""
    return torch.tensor([zlib.crc32(str(i).encode()) % 10_000 < fraction * 10_000 for i in ids])


def batch_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The batch restricted to `rows` (a bool mask `[B]`): tensors indexed, the id list filtered."""
    index = rows.nonzero().flatten()
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list):
            out[key] = [value[i] for i in index.tolist()]
        else:
            out[key] = value
    return out


class GBlending(Balancer):
    """Per-head loss weights from the overfitting-to-generalisation ratio on a held-out part of train.

    Keyword arguments:
    holdout: the fraction of training clips held out (0 < holdout < 1), default 0.1.
    super_epoch: epochs between weight updates (>= 1), default 10.
    """

    name: ClassVar[str] = "gblending"
    reduced_statistics: ClassVar[tuple[str, ...]] = ("loss_sums",)  # the epoch's train / held-out CE sums
    search_space: ClassVar[SearchSpace] = {"super_epoch": IntRange(2, 10)}
    uses_unimodal_heads: ClassVar[bool] = True
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(self, *, holdout: float = 0.1, super_epoch: int = 10):
        if not (isinstance(holdout, (int, float)) and 0 < holdout < 1):
            raise ValueError(f"gblending holdout must be a fraction in (0, 1), got {holdout!r}")
        if not (isinstance(super_epoch, int) and super_epoch >= 1):
            raise ValueError(f"gblending super_epoch must be an integer >= 1, got {super_epoch!r}")
        self.holdout = float(holdout)
        self.super_epoch = super_epoch
        self.weights: dict[str, float] = {}  # head -> w; equal until the first super-epoch ends
        self.sums: dict[str, list[float]] = {}  # head -> [train loss sum, train n, held-out sum, held-out n]
        self.points: list[dict[str, list[float]]] = []  # per epoch: head -> [train loss, held-out loss]
        self._fit: torch.Tensor | None = None

    def heads(self, model) -> list[str]:
        return [FUSED, *unwrap(model).modalities]

    def weight(self, model, head: str) -> float:
        return self.weights.get(head, 1.0 / len(self.heads(model)))

    def forward(self, model, batch: dict):
        """The model on the clips that are not held out (the held-out ones never train it)."""
        if "id" not in batch:
            raise ValueError(
                "method 'gblending' needs the clip ids (batch['id']) to hold a fixed part of train out"
            )
        held = holdout_mask(batch["id"], self.holdout)  # [B]
        self._fit = ~held
        if held.any():  # their losses, in eval mode, before this update
            inner = unwrap(model)
            inner.eval()
            try:
                with torch.no_grad():
                    out_h = inner(batch_rows(batch, held))
                label_h = batch["label"][held.nonzero().flatten().to(batch["label"].device)]
                self._accumulate(model, out_h, label_h, held=True)
            finally:
                inner.train()
        if not self._fit.any():  # every clip of this (small, last) batch is held out: nothing to train on
            return model(batch_rows(batch, held))  # loss() makes it a zero loss
        return model(batch_rows(batch, self._fit))

    def _accumulate(self, model, out, label, *, held: bool) -> None:
        logits = {FUSED: out.fused, **out.unimodal}
        for head in self.heads(model):
            ce = F.cross_entropy(logits[head].detach().float(), label, reduction="sum").item()
            s = self.sums.setdefault(head, [0.0, 0.0, 0.0, 0.0])
            s[2 if held else 0] += ce
            s[3 if held else 1] += label.numel()

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        rows = self._fit if self._fit is not None else torch.ones(len(batch["label"]), dtype=torch.bool)
        self._fit = None
        if not rows.any():  # only held-out clips: they must not teach the model anything
            zero = 0.0 * out.fused.sum()
            return zero, self.log_values({"loss": zero})
        label = batch["label"][rows.nonzero().flatten().to(batch["label"].device)]
        terms = {FUSED: F.cross_entropy(out.fused, label)}
        terms |= {m: F.cross_entropy(lg, label) for m, lg in out.unimodal.items()}  # {head: scalar}
        total = sum(self.weight(model, h) * terms[h] for h in terms)
        self._accumulate(model, out, label, held=False)
        logs = {"loss": total, "loss_fused": terms[FUSED]} | {f"loss_{m}": terms[m] for m in out.unimodal}
        logs |= {f"w_{h}": self.weight(model, h) for h in terms}
        return total, self.log_values(logs)

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        if self.world.distributed:  # every rank's clips: the sums over the whole held-out part and train
            heads = sorted(self.sums)
            total = self.world.sum(torch.tensor([self.sums[h] for h in heads], dtype=torch.float64))
            self.sums = {h: row for h, row in zip(heads, total.tolist())}
        point = {
            head: [s[0] / s[1] if s[1] else float("nan"), s[2] / s[3] if s[3] else float("nan")]
            for head, s in self.sums.items()
        }
        self.sums = {}
        self.points.append(point)
        done = len(self.points)  # epochs completed
        if done % self.super_epoch == 0 and done > 1:
            before = self.points[max(0, done - 1 - self.super_epoch)]
            new = gblend_weights(
                {h: tuple(v) for h, v in before.items()}, {h: tuple(v) for h, v in point.items()}
            )
            if new is not None:
                self.weights = new
        return {f"gblend_w_{h}": w for h, w in self.weights.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "sums": dict(self.sums), "points": list(self.points)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = {h: float(w) for h, w in state["weights"].items()}
        self.sums = {h: [float(x) for x in s] for h, s in state["sums"].items()}
        self.points = [{h: [float(x) for x in v] for h, v in p.items()} for p in state["points"]]
