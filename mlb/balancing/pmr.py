"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023), two modalities, any fusion head.

- Prototypes: per class c and modality m, the mean of encoder m's pooled features over the samples of
  class c, `[C, D]`; optional EMA across epochs: P ← (1 − μ)·mean + μ·P_previous.
- Prototype logits: −Euclidean distance from each feature to each prototype, `[B, C]`.
- Each step: ρ = Σ_batch softmax(proto_logits_a)[y] / Σ_batch softmax(proto_logits_v)[y]. The weaker
  modality (audio if ρ < 1, video if ρ > 1, none at ρ = 1) gets the prototype loss:
      loss = CE(fused, y) + α · CE(proto_logits_weaker, y).
  Its gradient flows into the weaker encoder only (prototypes are constants).
- Active for epochs [start_epoch, end_epoch] and only once prototypes exist; otherwise fused CE only.

How the prototypes are computed here (the simpler honest choice, needing nothing from the trainer):
they are *accumulated during each training epoch* from the features the training forward pass already
produces (`out.features`, detached) and become the prototypes of the next epoch in `on_epoch_end`.
The authors instead recompute them at the start of each epoch with an extra eval-mode pass over the
first tenth of the training loader. Consequences: no extra cost; the first epoch has no prototypes and
so trains with fused CE only; the means are taken over a model that moves during the epoch (the EMA
smooths the same way). A class absent from an epoch keeps its previous prototype.

Divergence. The MLB paper reports exploding prototypes with ResNet encoders. After each epoch the new
prototypes are checked (finite, and every row norm ≤ `max_prototype_norm`) and every step the
prototype loss is checked (finite). On divergence PMR logs `pmr_diverged = 1`, issues a
`PMRDivergenceWarning` once, and then, by default (`on_divergence="disable"`), drops the prototype term
for the rest of the run (the run goes on as Joint training, and the flag stays in the logs); with
`on_divergence="raise"` it raises `BalancerDivergedError`, which a trainer can catch to end the run
cleanly and record it as diverged.

Logs per step: `pmr_active`, `pmr_diverged`, and while active `pmr_ratio`, `loss_proto_<m>`,
`pmr_weight_<m>`; per epoch `pmr_prototype_norm_<m>` (largest prototype norm) and `pmr_diverged`.

Authors' defaults (PMR code): α = 1.0, EMA momentum μ = 0.2, modulation epochs 0-100 (the MLB paper
cites 70-100 across datasets: pass `end_epoch=70` for the shorter setting).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, probe_loss
from mlb.common.search_space import FloatRange, SearchSpace


class BalancerDivergedError(RuntimeError):
    """A balancing method's own state became non-finite or exploded; the run cannot go on faithfully."""


class PMRDivergenceWarning(RuntimeWarning):
    """PMR's prototypes or prototype loss diverged; the prototype term is switched off."""


# ---- pure math ---------------------------------------------------------------------------------------
def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """−Euclidean distance of every feature to every prototype: `[B, D]`, `[C, D]` -> `[B, C]`."""
    # the exact (non-matmul) path: no cancellation error, and a zero gradient at distance 0
    return -torch.cdist(features.float(), prototypes.float(), compute_mode="donot_use_mm_for_euclid_dist")


def class_sums(
    features: torch.Tensor, label: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums `[C, D]` and counts `[C]` of one batch (detached, float32). Rows with a
    non-finite value are left out (a NaN batch, which the trainer skips, must not poison the means)."""
    f = features.detach().float()  # [B, D]
    finite = torch.isfinite(f).all(dim=1)  # [B]
    f = torch.where(finite[:, None], f, torch.zeros_like(f))
    sums = torch.zeros(num_classes, f.shape[1], device=f.device).index_add_(0, label, f)  # [C, D]
    counts = torch.zeros(num_classes, device=f.device).index_add_(0, label, finite.float())  # [C]
    return sums, counts


def update_prototypes(
    sums: torch.Tensor, counts: torch.Tensor, previous: torch.Tensor | None, momentum: float
) -> torch.Tensor:
    """Class means from `sums [C, D]` / `counts [C]`, EMA'd with `previous [C, D]` when there is one:
    (1 − momentum)·mean + momentum·previous. A class with count 0 keeps `previous` (zeros if none)."""
    seen = counts > 0  # [C]
    means = sums / counts.clamp_min(1)[:, None]  # [C, D]
    if previous is None:
        return torch.where(seen[:, None], means, torch.zeros_like(means))
    blended = (1 - momentum) * means + momentum * previous
    return torch.where(seen[:, None], blended, previous)


def pmr_scores(logits_a: torch.Tensor, logits_v: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """`[Σ softmax(logits_a)[y], Σ softmax(logits_v)[y]]` over the batch (detached, `[2]`)."""
    return torch.stack(
        [torch.softmax(lg.detach(), dim=1).gather(1, label[:, None]).sum() for lg in (logits_a, logits_v)]
    )


def pmr_ratio(logits_a: torch.Tensor, logits_v: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """ρ = Σ softmax(logits_a)[y] / Σ softmax(logits_v)[y] (detached, 0-d; the denominator is floored
    at 1e-12 so ρ stays finite)."""
    return ratio_of_scores(pmr_scores(logits_a, logits_v, label))


def ratio_of_scores(scores: torch.Tensor) -> torch.Tensor:
    return scores[0] / scores[1].clamp_min(1e-12)


def pmr_weights(ratio: float, alpha: float) -> tuple[float, float]:
    """`(weight_a, weight_v)` of the two prototype losses: the weaker modality gets α, the other 0;
    both 0 at ρ = 1 exactly."""
    if ratio > 1:
        return 0.0, alpha  # audio leads: help video
    if ratio < 1:
        return alpha, 0.0
    return 0.0, 0.0


def prototypes_diverged(prototypes: torch.Tensor, max_norm: float) -> bool:
    """True when a prototype is non-finite or has an L2 norm above `max_norm`."""
    return bool((~torch.isfinite(prototypes)).any() or prototypes.norm(dim=1).max() > max_norm)


# ---- the method --------------------------------------------------------------------------------------
class PMR(Balancer):
    """Prototypical Modal Rebalance: a prototype CE for the weaker modality (two modalities).

    Keyword arguments (authors' defaults):
    alpha: 1.0, weight of the weaker modality's prototype CE.
    momentum: 0.2, EMA of the prototypes across epochs (0 = plain class means).
    start_epoch, end_epoch: the prototype term is used for epochs in [start_epoch, end_epoch] (0, 100).
    max_prototype_norm: 1e4, a prototype row norm above this counts as exploding.
    on_divergence: "disable" (default: warn, flag, go on with fused CE only) or "raise"
        (`BalancerDivergedError`).
    """

    name: ClassVar[str] = "pmr"
    # the step's ratio and prototype losses (the weaker modality), and the epoch's class sums (prototypes)
    reduced_statistics: ClassVar[tuple[str, ...]] = ("ratio", "loss_proto", "class_sums")
    search_space: ClassVar[SearchSpace] = {
        "alpha": FloatRange(0.1, 3.0, log=True),
        "momentum": FloatRange(0.0, 0.9),
    }
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        momentum: float = 0.2,
        start_epoch: int = 0,
        end_epoch: int = 100,
        max_prototype_norm: float = 1e4,
        on_divergence: str = "disable",
    ):
        if not alpha >= 0:
            raise ValueError(f"pmr alpha must be >= 0, got {alpha!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"pmr momentum must be in [0, 1), got {momentum!r}")
        if start_epoch < 0 or end_epoch < start_epoch:
            raise ValueError(
                f"pmr needs 0 <= start_epoch <= end_epoch, got start_epoch={start_epoch!r}, "
                f"end_epoch={end_epoch!r}"
            )
        if on_divergence not in ("disable", "raise"):
            raise ValueError(f"pmr on_divergence must be 'disable' or 'raise', got {on_divergence!r}")
        self.alpha = float(alpha)
        self.momentum = float(momentum)
        self.start_epoch = int(start_epoch)
        self.end_epoch = int(end_epoch)
        self.max_prototype_norm = float(max_prototype_norm)
        self.on_divergence = on_divergence
        self.epoch = 0  # epochs completed so far = the index of the current epoch
        self.diverged = False
        self.prototypes: dict[str, torch.Tensor] = {}  # modality -> [C, D], used this epoch
        self._sums: dict[str, torch.Tensor] = {}  # modality -> [C, D], accumulated this epoch
        self._counts: dict[str, torch.Tensor] = {}  # modality -> [C], accumulated this epoch

    @classmethod
    def check_model(cls, model) -> None:
        super().check_model(model)
        if len(model.modalities) != 2:
            raise ValueError(
                f"method {cls.name!r} is defined for exactly 2 modalities, got {model.modalities}"
            )

    @property
    def active(self) -> bool:
        return (
            not self.diverged and bool(self.prototypes) and self.start_epoch <= self.epoch <= self.end_epoch
        )

    def _report_divergence(self, what: str) -> None:
        message = (
            f"PMR diverged at epoch {self.epoch}: {what}. The MLB paper reports exploding "
            "prototypes with ResNet encoders."
        )
        if self.on_divergence == "raise":
            raise BalancerDivergedError(message)
        if not self.diverged:
            warnings.warn(
                message + " The prototype term is off for the rest of the run (fused CE only).",
                PMRDivergenceWarning,
                stacklevel=3,
            )
        self.diverged = True

    def _accumulate(self, out, label: torch.Tensor) -> None:
        num_classes = out.fused.shape[1]
        for m, feat in out.features.items():
            sums, counts = class_sums(feat, label, num_classes)
            self._sums[m] = self._sums[m] + sums if m in self._sums else sums
            self._counts[m] = self._counts[m] + counts if m in self._counts else counts

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        a, v = model.modalities
        label = batch["label"]
        self._accumulate(out, label)
        loss_fused = F.cross_entropy(out.fused, label)
        probes = probe_loss(model, out, label)  # trains the unimodal heads only (detached features)
        objective = loss_fused  # the method's loss; the probes train only the unimodal heads
        values: dict[str, Any] = {"loss_fused": loss_fused} | {f"loss_{m}": val for m, val in probes.items()}
        active = self.active
        if active:
            fa, fv = out.features[a], out.features[v]  # [B, D] each
            logits_a = prototype_logits(fa, self.prototypes[a].to(fa.device))  # [B, C]
            logits_v = prototype_logits(fv, self.prototypes[v].to(fv.device))  # [B, C]
            proto_a = F.cross_entropy(logits_a, label)
            proto_v = F.cross_entropy(logits_v, label)
            # the global batch's ratio (summed scores) and mean losses: every rank picks the same modality
            n = label.numel()
            scores = self.world.sum(pmr_scores(logits_a, logits_v, label))  # [2]
            losses = torch.stack([proto_a.detach(), proto_v.detach(), loss_fused.detach().float()])  # [3]
            ratio_f = float(ratio_of_scores(scores))
            proto_a_f, proto_v_f, fused_f = self.world.batch_mean(losses, n).tolist()
            if not math.isfinite(fused_f):  # the model's output itself is bad: the trainer skips the step
                active = False
            elif all(math.isfinite(x) for x in (ratio_f, proto_a_f, proto_v_f)):
                w_a, w_v = pmr_weights(ratio_f, self.alpha)
                objective = objective + w_a * proto_a + w_v * proto_v
                values |= {
                    "pmr_ratio": ratio_f,
                    f"loss_proto_{a}": proto_a_f,
                    f"loss_proto_{v}": proto_v_f,
                    f"pmr_weight_{a}": w_a,
                    f"pmr_weight_{v}": w_v,
                }
            else:
                self._report_divergence(
                    f"non-finite prototype loss (ratio {ratio_f}, CE_a {proto_a_f}, CE_v {proto_v_f})"
                )
                active = False
        values |= {"loss": objective, "pmr_active": float(active), "pmr_diverged": float(self.diverged)}
        return objective + sum(probes.values()), self.log_values(values)

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        if self._sums:  # the epoch's class sums over every rank's clips
            self._sums = {m: self.world.sum(s) for m, s in self._sums.items()}
            self._counts = {m: self.world.sum(c) for m, c in self._counts.items()}
            new = {
                m: update_prototypes(s, self._counts[m], self.prototypes.get(m), self.momentum)
                for m, s in self._sums.items()
            }
            bad = [m for m, p in new.items() if prototypes_diverged(p, self.max_prototype_norm)]
            if bad:
                norms = {m: float(new[m].norm(dim=1).max()) for m in bad}
                self._report_divergence(
                    f"prototypes of {bad} are non-finite or exploding "
                    f"(max row norm {norms}, limit {self.max_prototype_norm:g})"
                )
            else:
                self.prototypes = new
        self._sums, self._counts = {}, {}
        self.epoch += 1
        logs = {"pmr_diverged": float(self.diverged)}
        for m, p in self.prototypes.items():
            logs[f"pmr_prototype_norm_{m}"] = float(p.norm(dim=1).max())
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "diverged": self.diverged,
            "prototypes": {m: p.detach().cpu() for m, p in self.prototypes.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.diverged = bool(state["diverged"])
        self.prototypes = {m: torch.as_tensor(p) for m, p in state["prototypes"].items()}
        self._sums, self._counts = {}, {}
