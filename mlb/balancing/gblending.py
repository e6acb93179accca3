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
extra). These are the epoch's running means (epoch e's "point"), not a separate pass at the epoch's end.

Windows: every one spans n epochs, the first included. The recomputation after epoch s·n − 1 compares
epoch s·n − 1's point with epoch (s − 1)·n − 1's; the first (s = 1) compares it with the untrained
model's, measured on the run's first batch before its update (L*: every clip of that batch, none trained
on yet, eval mode; L: its fitted clips, train mode). Why: the paper's online G-Blend measures each
super-epoch over n epochs from a checkpoint, the first from the initial model (N = 0). (From an instant
to an epoch's mean, the first window covers about n − ½ epochs of training.) BalanceBenchmark's windows
are n − 1 epochs: it measures its per-head copies after the first and the last epoch of a super-epoch.

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

from mlb.balancing.base import Balancer, unwrap
from mlb.common.search_space import IntRange, SearchSpace

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
        # the untrained model's point (the first window's start): its sums from the first update, then
        # (at epoch 0's end, reduced over the ranks like `sums`) head -> [train loss, held-out loss]
        self.start_sums: dict[str, list[float]] = {}
        self.start: dict[str, list[float]] | None = None
        self._fit: torch.Tensor | None = None
        self._first = False  # this update is the run's first

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
        self._first = self.start is None and not (self.points or self.sums or self.start_sums)
        if held.any() or self._first:  # their losses, in eval mode, before this update
            inner = unwrap(model)
            inner.eval()
            try:
                with torch.no_grad():
                    if self._first:  # the untrained model has seen no clip: all of them are held out
                        self._accumulate(self.start_sums, model, inner(batch), batch["label"], held=True)
                    if held.any():
                        out_h = inner(batch_rows(batch, held))
                        label_h = batch["label"][held.nonzero().flatten().to(batch["label"].device)]
                        self._accumulate(self.sums, model, out_h, label_h, held=True)
            finally:
                inner.train()
        if not self._fit.any():  # every clip of this (small, last) batch is held out: nothing to train on
            return model(batch_rows(batch, held))  # loss() makes it a zero loss
        return model(batch_rows(batch, self._fit))

    def _accumulate(self, sums: dict[str, list[float]], model, out, label, *, held: bool) -> None:
        logits = {FUSED: out.fused, **out.unimodal}
        for head in self.heads(model):
            ce = F.cross_entropy(logits[head].detach().float(), label, reduction="sum").item()
            s = sums.setdefault(head, [0.0, 0.0, 0.0, 0.0])
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
        self._accumulate(self.sums, model, out, label, held=False)
        if self._first:
            self._accumulate(self.start_sums, model, out, label, held=False)
        logs = {"loss": total, "loss_fused": terms[FUSED]} | {f"loss_{m}": terms[m] for m in out.unimodal}
        logs |= {f"w_{h}": self.weight(model, h) for h in terms}
        return total, self.log_values(logs)

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        self.sums = self._reduced(self.sums)  # every rank's clips: the whole held-out part and train
        point = _means(self.sums)
        self.sums = {}
        if self.start_sums:
            self.start = _means(self._reduced(self.start_sums))
            self.start_sums = {}
        self.points.append(point)
        done = len(self.points)  # epochs completed
        if done % self.super_epoch == 0:
            # n epochs back: epoch done − 1 − n's point, or the untrained model's for the first window
            before = self.start if done == self.super_epoch else self.points[done - 1 - self.super_epoch]
            new = None
            if before is not None:  # no start point (a state from before it was kept): keep the weights
                new = gblend_weights(
                    {h: tuple(v) for h, v in before.items()}, {h: tuple(v) for h, v in point.items()}
                )
            if new is not None:
                self.weights = new
        return {f"gblend_w_{h}": w for h, w in self.weights.items()}

    def _reduced(self, sums: dict[str, list[float]]) -> dict[str, list[float]]:
        """`sums` summed over the training processes (the identity on one)."""
        if not self.world.distributed:
            return sums
        heads = sorted(sums)
        total = self.world.sum(torch.tensor([sums[h] for h in heads], dtype=torch.float64))  # [H, 4]
        return {h: row for h, row in zip(heads, total.tolist())}

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "sums": dict(self.sums),
            "points": list(self.points),
            "start_sums": dict(self.start_sums),
            "start": None if self.start is None else dict(self.start),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = {h: float(w) for h, w in state["weights"].items()}
        self.sums = {h: [float(x) for x in s] for h, s in state["sums"].items()}
        self.points = [{h: [float(x) for x in v] for h, v in p.items()} for p in state["points"]]
        self.start_sums = {h: [float(x) for x in s] for h, s in state.get("start_sums", {}).items()}
        start = state.get("start")
        self.start = None if start is None else {h: [float(x) for x in v] for h, v in start.items()}


def _means(sums: dict[str, list[float]]) -> dict[str, list[float]]:
    """head -> [train loss, held-out loss] from head -> [train sum, train n, held-out sum, held-out n]
    (NaN where no clip was measured)."""
    return {
        head: [s[0] / s[1] if s[1] else float("nan"), s[2] / s[3] if s[3] else float("nan")]
        for head, s in sums.items()
    }
