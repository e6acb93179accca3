"""AGM: Adaptive Gradient Modulation (Li et al., ICCV 2023), two modalities, any fusion head.

Each step:
1. Two extra forward passes in eval mode (no dropout, BatchNorm running statistics), each with one
   modality's input zeroed (`mlb.models.model.zero_modality`; masks kept): pred_za (audio zeroed) and
   pred_zv (video zeroed), `[B, C]` each.
2. Zero-masking Shapley-style unimodal outputs (the two-player Shapley value without the both-zeroed
   term, as the authors' two-modality code):
       out_a = ½ (pred − pred_za + pred_zv),   out_v = ½ (pred − pred_zv + pred_za);   out_a + out_v = pred.
3. score_m = mean over the batch of −log max(softmax(out_m)[y], 1e-8) (the authors' clamped CE).
4. r_a = exp(score_v − score_a), r_v = exp(score_a − score_v) = 1 / r_a.
5. Targets from the running means ŝ_m of score_m over *all earlier iterations* (every epoch):
   target_a = exp(ŝ_v − ŝ_a), target_v = 1 / target_a (1 before the first iteration); then
   coeff_m = exp(α · min(target_m − r_m, 10)); then ŝ_m is updated with this step's score.
6. coeff_m multiplies the gradient of modality m's branch; then, if any gradient of the fusion head
   leaves [−1, 1], the global gradient norm is clipped to 1 (the authors' rule).
Loss: fused cross-entropy only (plus the detached unimodal-head probes of `base.probe_loss`).

Where the coefficient is applied. The authors put identity modules with backward hooks on out_a and
out_v, so coeff_m scales the gradient flowing into "modality m's branch" of the Shapley split. For the
Late-Linear head with gradient-carrying masked passes, the video terms of ∂out_a cancel
(½W_v − ½W_v), so that hook scales the audio side only: it is the same as multiplying the gradients
of the audio encoder and of its slice of the fusion layer by coeff_a (up to the small gradients of
the masked passes themselves). We implement that equivalent form for every fusion head: after
`backward()`, the gradients of `grads.branch_grad_slices(model, m)` (encoder + its fusion slice) are
multiplied by coeff_m. The masked passes then need no gradient (`torch.no_grad`), which is cheaper;
they still cost two extra forward passes per step (see bench/). (Running the masked passes under
no_grad *and* keeping the output hooks, as some re-implementations do, would scale every parameter by
½(coeff_a + coeff_v): not modality-specific. We avoid that.)

Logs per step: `k_<m>` (coeff_m applied), `r_<m>`, `target_<m>`, `s_<m>` (score_m), `agm_clipped`.

Authors' defaults: α = 1.5; the MLB authors ran α = 3.0. Modulation window [start_epoch, end_epoch]
(default: always). Deviations: the authors skip the coefficient update at the first step of each
epoch (a quirk we drop); the fusion-gradient check covers every fusion-head parameter (the authors'
models had a single output layer `fc_out`, which is what Late-Linear has).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, floats_for_log, probe_loss
from mlb.balancing.grads import branch_grad_slices, scale_grad_slices
from mlb.models.model import zero_modality

PROB_FLOOR = 1e-8  # the authors' clamp of softmax(out)[y] before the log
MAX_GAP = 10.0  # the authors' cap on target − r inside exp(α ·)


# ---- pure math ---------------------------------------------------------------------------------------
def agm_shapley(
    pred: torch.Tensor, pred_za: torch.Tensor, pred_zv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-masking Shapley outputs `(out_a, out_v)`, each `[B, C]`, from the full prediction and the
    predictions with audio zeroed (`pred_za`) and video zeroed (`pred_zv`)."""
    out_a = 0.5 * (pred - pred_za + pred_zv)  # [B, C]
    out_v = 0.5 * (pred - pred_zv + pred_za)  # [B, C]
    return out_a, out_v


def agm_score(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Batch mean of −log max(softmax(logits)[y], 1e-8), detached: `[B, C]` -> 0-d."""
    probs = torch.softmax(logits.detach().float(), dim=1).gather(1, label[:, None])  # [B, 1]
    return -probs.clamp_min(PROB_FLOOR).log().mean()


def agm_coefficients(
    score_a: float, score_v: float, mean_a: float, mean_v: float, alpha: float, max_gap: float = MAX_GAP
) -> dict[str, float]:
    """AGM's rule on this step's scores and the running means of the earlier steps' scores.

    Returns `{"r_a", "r_v", "target_a", "target_v", "coeff_a", "coeff_v"}` as floats.
    """
    r_a = math.exp(score_v - score_a)
    r_v = math.exp(score_a - score_v)
    target_a = math.exp(mean_v - mean_a)
    target_v = math.exp(mean_a - mean_v)
    coeff_a = math.exp(alpha * min(target_a - r_a, max_gap))
    coeff_v = math.exp(alpha * min(target_v - r_v, max_gap))
    return {
        "r_a": r_a,
        "r_v": r_v,
        "target_a": target_a,
        "target_v": target_v,
        "coeff_a": coeff_a,
        "coeff_v": coeff_v,
    }


def running_mean(mean: float, count: int, value: float) -> float:
    """The mean of `count` earlier values updated with one more: mean·(n−1)/n + value/n, n = count+1."""
    n = count + 1
    return mean * (n - 1) / n + value / n


def clip_if_fusion_grad_large_(model, max_abs: float = 1.0, max_norm: float = 1.0) -> bool:
    """The authors' rule: if any fusion-head gradient leaves [−max_abs, max_abs], clip the global
    gradient norm of the whole model to `max_norm`. Returns whether it clipped (one device sync)."""
    grads = [p.grad for p in model.fusion.parameters() if p.grad is not None]
    if not grads:
        return False
    largest = torch.stack([g.detach().abs().max() for g in grads]).max()
    if bool(largest > max_abs):
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
        return True
    return False


# ---- the method --------------------------------------------------------------------------------------
class AGM(Balancer):
    """Adaptive Gradient Modulation with zero-masked Shapley unimodal outputs (two modalities).

    Keyword arguments (authors' defaults):
    alpha: 1.5 (the MLB authors used 3.0).
    max_gap: 10, the cap on target − r.
    clip: True applies the fusion-gradient clipping rule.
    start_epoch, end_epoch: coefficients are applied for epochs in [start_epoch, end_epoch]
        (end_epoch None = to the end); outside, AGM trains like Joint (scores still tracked).
    """

    name: ClassVar[str] = "agm"
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(
        self,
        *,
        alpha: float = 1.5,
        max_gap: float = MAX_GAP,
        clip: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = None,
    ):
        if not alpha > 0:
            raise ValueError(f"agm alpha must be > 0, got {alpha!r}")
        if start_epoch < 0 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(
                f"agm needs 0 <= start_epoch <= end_epoch, got start_epoch={start_epoch!r}, "
                f"end_epoch={end_epoch!r}"
            )
        self.alpha = float(alpha)
        self.max_gap = float(max_gap)
        self.clip = bool(clip)
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self.epoch = 0  # epochs completed so far = the index of the current epoch
        self.mean_score = [0.0, 0.0]  # running means ŝ_a, ŝ_v over all iterations
        self.iterations = 0
        self._coeffs: tuple[float, float] | None = None  # from loss() to before_step()

    @classmethod
    def check_model(cls, model) -> None:
        super().check_model(model)
        if len(model.modalities) != 2:
            raise ValueError(
                f"method {cls.name!r} is defined for exactly 2 modalities (two-player "
                f"Shapley split), got {model.modalities}"
            )

    @property
    def active(self) -> bool:
        return self.start_epoch <= self.epoch and (self.end_epoch is None or self.epoch <= self.end_epoch)

    def masked_predictions(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`(pred_za, pred_zv)`: fused logits `[B, C]` with audio zeroed / video zeroed, eval mode,
        no gradient; the model's train/eval mode is restored."""
        a, v = model.modalities
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                pred_za = model(zero_modality(batch, a)).fused
                pred_zv = model(zero_modality(batch, v)).fused
        finally:
            model.train(was_training)
        return pred_za, pred_zv

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        a, v = model.modalities
        label = batch["label"]
        pred_za, pred_zv = self.masked_predictions(model, batch)
        out_a, out_v = agm_shapley(out.fused.detach(), pred_za, pred_zv)  # [B, C] each, no grad
        loss_fused = F.cross_entropy(out.fused, label)
        probes = probe_loss(model, out, label)  # trains the unimodal heads only (detached features)
        total = loss_fused + sum(probes.values())
        logs = floats_for_log(
            {
                "loss": loss_fused,
                "loss_fused": loss_fused,  # one sync: AGM needs floats
                f"s_{a}": agm_score(out_a, label),
                f"s_{v}": agm_score(out_v, label),
            }
            | {f"loss_{m}": val for m, val in probes.items()}
        )
        score_a, score_v = logs[f"s_{a}"], logs[f"s_{v}"]
        if not (math.isfinite(score_a) and math.isfinite(score_v)):
            # a non-finite output (the trainer skips this step): keep the running means clean
            self._coeffs = (1.0, 1.0)
            return total, logs | {f"k_{a}": 1.0, f"k_{v}": 1.0}
        c = agm_coefficients(score_a, score_v, *self.mean_score, self.alpha, self.max_gap)
        self.mean_score = [
            running_mean(self.mean_score[0], self.iterations, score_a),
            running_mean(self.mean_score[1], self.iterations, score_v),
        ]
        self.iterations += 1
        self._coeffs = (c["coeff_a"], c["coeff_v"]) if self.active else (1.0, 1.0)
        logs |= {
            f"r_{a}": c["r_a"],
            f"r_{v}": c["r_v"],
            f"target_{a}": c["target_a"],
            f"target_{v}": c["target_v"],
            f"k_{a}": self._coeffs[0],
            f"k_{v}": self._coeffs[1],
        }
        return total, logs

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        if self._coeffs is None:
            raise RuntimeError("AGM.before_step called without AGM.loss for this step")
        a, v = model.modalities
        for m, k in zip((a, v), self._coeffs):
            if k != 1.0:
                scale_grad_slices(branch_grad_slices(model, m), k)
        self._coeffs = None
        clipped = self.clip and self.active and clip_if_fusion_grad_large_(model)
        return {"agm_clipped": float(clipped)}

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        self.epoch += 1
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "mean_score": list(self.mean_score), "iterations": self.iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.mean_score = [float(x) for x in state["mean_score"]]
        self.iterations = int(state["iterations"])
