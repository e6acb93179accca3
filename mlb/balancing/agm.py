"""AGM: Adaptive Gradient Modulation (Li et al., ICCV 2023), two modalities, any fusion head.

Each step, as the authors' code computes it:
1. Two extra forward passes in eval mode (no dropout, BatchNorm running statistics), *with gradients*,
   each with one modality's input zeroed (masks kept): pred_za (audio zeroed), pred_zv (video zeroed),
   `[B, C]` each. Which parts run again is the `variant`:
   - "agm" (default; Lingy12/AGM_ICCV2023, the method's authors): the whole model on the masked batch.
   - "mlb" (kkontras/MLB `OGM_Model.py`, the re-implementation behind the MLB paper's table): only the
     zeroed modality's encoder; the fusion head (eval mode) reads it beside the other modality's
     features from the full, train-mode pass.
   The default is the method's own authors' definition, since a baseline should be run as its authors
   run it; pass `variant="mlb"` to reproduce the comparison the MLB paper reports.
2. Zero-masking Shapley-style unimodal outputs (two players, no both-zeroed term):
       out_a = ½ (pred − pred_za + pred_zv),   out_v = ½ (pred − pred_zv + pred_za);   out_a + out_v = pred.
3. score_m = mean over the batch of −log max(softmax(out_m)[y], 1e-8) (the authors' clamped CE).
4. r_a = exp(score_v − score_a), r_v = exp(score_a − score_v) = 1 / r_a.
5. Targets from the running means ŝ_m of score_m over *all earlier iterations* (every epoch, every step):
   target_a = exp(ŝ_v − ŝ_a), target_v = 1 / target_a (1 before the first iteration); then
   coeff_m = exp(α · min(target_m − r_m, 10)); then ŝ_m is updated with this step's score.
6. The loss is CE(out_a + out_v, y), and the gradient flowing back through out_m is multiplied by
   coeff_m (the authors' identity modules with backward hooks; here tensor hooks). So the full pass
   gets ½(coeff_a + coeff_v) of the gradient, pred_za gets ½(coeff_v − coeff_a) and pred_zv
   ½(coeff_a − coeff_v). The shared fusion bias is thereby scaled by ½(coeff_a + coeff_v), and a fusion
   weight also receives a term built from its encoder's output on a zero input: this is not the same
   as multiplying each branch's gradient by its coefficient after `backward()`.
7. If a gradient of the fusion head's weights (Late-Linear: its weight; the other heads: all their
   parameters, as the MLB repository's check) leaves [−1, 1], the global gradient norm of the
   parameters the method trains (the model without the unimodal probe heads, which the authors'
   model does not have) is clipped to 1.
The coefficient update runs at every step (the authors' code only logs conditionally).
Plus the detached unimodal-head probes of `base.probe_loss` (no gradient to the encoders).

Logs per step: `k_<m>` (coeff_m applied), `r_<m>`, `target_<m>`, `s_<m>` (score_m), `agm_clipped`.

Authors' defaults: α = 1.5; the MLB authors ran α = 3.0 in the paper's comparison. Modulation window
[start_epoch, end_epoch] (default: always); outside it the coefficients are 1 and the masked passes
run without gradients (their gradient would be 0), so AGM trains like Joint while still tracking the
scores. Deviation: the authors' models keep the last coefficients after the window (their hooks stay);
here they return to 1.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, floats_for_log, probe_loss, unwrap
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.fusion import LateLinear
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


def fusion_weights_to_check(model) -> list[torch.nn.Parameter]:
    """The fusion-head parameters whose gradients AGM's clipping rule looks at: Late-Linear's weight
    (the authors' `fc_out.weight` / `fc_0_lin`, `fc_1_lin` weights; not the bias), every parameter of
    the other heads (the MLB repository's `common_fc` check)."""
    if isinstance(model.fusion, LateLinear):
        return [model.fusion.weight]
    return list(model.fusion.parameters())


def trained_parameters(model) -> list[torch.nn.Parameter]:
    """Every parameter except the unimodal probe heads (AGM's authors' model has no such heads)."""
    probes = {id(p) for p in model.unimodal_heads.parameters()}
    return [p for p in model.parameters() if id(p) not in probes]


def clip_if_fusion_grad_large_(model, max_abs: float = 1.0, max_norm: float = 1.0) -> bool:
    """The authors' rule: if a gradient of `fusion_weights_to_check` leaves [−max_abs, max_abs], clip the
    global gradient norm of `trained_parameters` to `max_norm`. Returns whether it clipped (one sync)."""
    grads = [p.grad for p in fusion_weights_to_check(model) if p.grad is not None]
    if not grads:
        return False
    largest = torch.stack([g.detach().abs().max() for g in grads]).max()
    if bool(largest > max_abs):
        torch.nn.utils.clip_grad_norm_(trained_parameters(model), max_norm=max_norm)
        return True
    return False


def scale_backward(t: torch.Tensor, k: float) -> torch.Tensor:
    """`t` itself, whose gradient is multiplied by k on the way back (the authors' hooked identity)."""
    if t.requires_grad and k != 1.0:
        t.register_hook(lambda g: g * k)
    return t


# ---- the method --------------------------------------------------------------------------------------
VARIANTS = ("agm", "mlb")


class AGM(Balancer):
    """Adaptive Gradient Modulation with zero-masked Shapley unimodal outputs (two modalities).

    Keyword arguments (authors' defaults):
    alpha: 1.5 (the MLB authors used 3.0).
    variant: "agm" (the AGM authors' masked passes: the whole model again) or "mlb" (the MLB
        repository's: only the zeroed encoder again); see the module docstring.
    max_gap: 10, the cap on target − r.
    clip: True applies the fusion-gradient clipping rule.
    start_epoch, end_epoch: coefficients are applied for epochs in [start_epoch, end_epoch]
        (end_epoch None = to the end); outside, AGM trains like Joint (scores still tracked).
    """

    name: ClassVar[str] = "agm"
    # this step's scores over the global batch, hence the running means and the coefficients
    reduced_statistics: ClassVar[tuple[str, ...]] = ("score",)
    search_space: ClassVar[SearchSpace] = {"alpha": FloatRange(0.1, 5.0, log=True)}
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(
        self,
        *,
        alpha: float = 1.5,
        variant: str = "agm",
        max_gap: float = MAX_GAP,
        clip: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = None,
    ):
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"agm alpha must be a finite number > 0, got {alpha!r}")
        if variant not in VARIANTS:
            raise ValueError(f"agm variant must be one of {list(VARIANTS)}, got {variant!r}")
        if start_epoch < 0 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(
                f"agm needs 0 <= start_epoch <= end_epoch, got start_epoch={start_epoch!r}, "
                f"end_epoch={end_epoch!r}"
            )
        self.alpha = float(alpha)
        self.variant = variant
        self.max_gap = float(max_gap)
        self.clip = bool(clip)
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self.epoch = 0  # epochs completed so far = the index of the current epoch
        self.mean_score = [0.0, 0.0]  # running means ŝ_a, ŝ_v over all iterations
        self.iterations = 0

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

    def masked_predictions(self, model, batch: dict, out) -> tuple[torch.Tensor, torch.Tensor]:
        """`(pred_za, pred_zv)`: fused logits `[B, C]` with audio zeroed / video zeroed, in eval mode,
        with gradients while the modulation is active; the model's train/eval mode is restored."""
        a, v = model.modalities
        was_training = model.training
        model.eval()
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.active):
                if self.variant == "agm":  # the whole model on the masked batch
                    pred_za = model(zero_modality(batch, a)).fused
                    pred_zv = model(zero_modality(batch, v)).fused
                else:  # the zeroed encoder only, beside the other modality's train-mode features
                    zeroed = {
                        m: model.encoders[m](torch.zeros_like(batch[m]), batch.get(f"{m}_mask"))
                        for m in (a, v)
                    }
                    pred_za = model.fuse({**out.encoded, a: zeroed[a]})[0]
                    pred_zv = model.fuse({**out.encoded, v: zeroed[v]})[0]
        finally:
            model.train(was_training)
        return pred_za, pred_zv

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        model = unwrap(model)
        a, v = model.modalities
        label = batch["label"]
        pred_za, pred_zv = self.masked_predictions(model, batch, out)
        out_a, out_v = agm_shapley(out.fused, pred_za, pred_zv)  # [B, C] each
        probes = probe_loss(model, out, label)  # trains the unimodal heads only (detached features)
        both = self.world.batch_mean(
            torch.stack([agm_score(out_a, label), agm_score(out_v, label)]), label.numel()
        )
        scores = floats_for_log({f"s_{a}": both[0], f"s_{v}": both[1]})
        score_a, score_v = scores[f"s_{a}"], scores[f"s_{v}"]
        if math.isfinite(score_a) and math.isfinite(score_v):
            c = agm_coefficients(score_a, score_v, *self.mean_score, self.alpha, self.max_gap)
            self.mean_score = [
                running_mean(self.mean_score[0], self.iterations, score_a),
                running_mean(self.mean_score[1], self.iterations, score_v),
            ]
            self.iterations += 1
            coeffs = (c["coeff_a"], c["coeff_v"]) if self.active else (1.0, 1.0)
            balance_logs = {
                f"r_{a}": c["r_a"],
                f"r_{v}": c["r_v"],
                f"target_{a}": c["target_a"],
                f"target_{v}": c["target_v"],
            }
        else:  # a non-finite output (the trainer skips this step): keep the running means clean
            coeffs, balance_logs = (1.0, 1.0), {}
        # CE of out_a + out_v (= pred) with the gradient through out_m scaled by coeff_m
        fused = scale_backward(out_a, coeffs[0]) + scale_backward(out_v, coeffs[1])  # [B, C]
        loss_fused = F.cross_entropy(fused, label)
        total = loss_fused + sum(probes.values())
        logs = floats_for_log(
            {"loss": loss_fused, "loss_fused": loss_fused} | {f"loss_{m}": val for m, val in probes.items()}
        )
        return total, logs | scores | balance_logs | {f"k_{a}": coeffs[0], f"k_{v}": coeffs[1]}

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        clipped = self.clip and self.active and clip_if_fusion_grad_large_(unwrap(model))
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
