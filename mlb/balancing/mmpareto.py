"""MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance (Wei & Hu, ICML 2024).

Loss: the Multi-Loss, CE(fused) + Σ_m CE(unimodal_m). For each encoder m, with θ_m its parameters,
g_f = ∂CE(fused)/∂θ_m and g_u = ∂CE(unimodal_m)/∂θ_m (flattened over all of θ_m):

    cos_m = cos(g_f, g_u)
    (w_f, w_u) = (1/2, 1/2)                                   if cos_m > 0   (no conflict)
               = the two-task min-norm (MGDA) weights          otherwise (a tie cos_m = 0 included):
                 w_f = (g_u·g_u − g_f·g_u) / ‖g_f − g_u‖², clipped to 0.999 if g_f·g_u >= g_f·g_f and
                 to 0.001 if g_f·g_u >= g_u·g_u (the MGDA-UB solver's edge cases); w_u = 1 − w_f
    h = 2 (w_f g_f + w_u g_u)                                 (= g_f + g_u when there is no conflict)

and then, for every parameter *tensor* p of θ_m separately, the magnitude is restored and enhanced:

    grad_p = γ · max(1, ‖g_f,p + g_u,p‖ / ‖h_p‖) · h_p         (h_p = 0 gives grad_p = 0)

so the direction is h's and the size is at least that of the plain sum, times γ. Every other parameter
(fusion head, unimodal heads) keeps the plain summed gradient of the Multi-Loss.

M >= 2: per encoder the two tasks are always the multimodal loss and that encoder's own unimodal loss
(no other unimodal loss reaches it), exactly as the authors' code does for audio and visual; M = 3
therefore runs three independent two-task problems, one per encoder, not a three-task MGDA.

Authors' code: GeWu-Lab/MMPareto_ICML2024, `code/MMPareto.py` (`train_epoch`) and
`code/min_norm_solvers.py` (`MinNormSolver.find_min_norm_element`, two-task closed form
`_min_norm_element_from2`). Authors' default γ = 1.5 (hard-coded `gamma`); their CREMA-D run: SGD
lr 0.002, momentum 0.9, weight decay 1e-4, batch 64, 50 epochs, lr × 0.1 every 30.

Fitting the hooks: `loss()` takes g_f and g_u with two `torch.autograd.grad(..., retain_graph=True)`
calls (the fused CE, and Σ_m CE(unimodal_m), whose gradient on θ_m is CE(unimodal_m)'s alone because
head m reads only encoder m), computes the combined encoder gradients, and returns the Multi-Loss for
the ordinary `backward()`; `before_step()` overwrites each encoder parameter's `.grad` with them. Cost:
about three backward passes per step instead of one. Call `before_step` after `scaler.unscale_` (as
`mlb.train` does): the gradients it writes are unscaled. Parameters that get no gradient from one of
the two losses count as zeros there.

Logs per step: `loss` (the Multi-Loss), `loss_fused`, `loss_<m>`; from `before_step`: `cos_<m>` and
`w_<m>` (the unimodal weight w_u of encoder m; the multimodal weight is 1 − w_<m>).

Differences from the authors' code:
- They take the per-loss gradients with three `backward(retain_graph=True)` passes plus a fourth for
  the sum; we use two `autograd.grad` calls plus the ordinary backward (same values).
- ‖g_f,p + g_u,p‖ is computed from the stored per-loss gradients, not read from `p.grad` (equal in exact
  arithmetic, and independent of a loss scaler).
- A parameter tensor with h_p = 0 gets a zero gradient (theirs divides by zero: inf or NaN).
- They pick encoder parameters by name ('audio' / 'visual' in the name, not 'head'); we take
  `model.encoders[m]`. Any fusion head and M >= 2 (theirs: concatenation, two modalities).
- γ is a keyword hyper-parameter (theirs a constant).
- Under torchrun the per-loss gradients are averaged over the ranks before they are combined
  (`reduced_statistics`): `autograd.grad` alone would give each rank its own.
- With fp16 autocast and a `GradScaler`, the per-loss gradients come from the unscaled losses and may
  underflow; use bf16 or fp32.
"""

from __future__ import annotations

import math
import weakref
from typing import ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, unwrap
from mlb.balancing.multi_loss import multi_loss_terms
from mlb.common.search_space import FloatRange, SearchSpace

# the MGDA-UB solver's edge cases: weight of the multimodal gradient when one gradient dominates
W_FUSED_MAX, W_FUSED_MIN = 0.999, 0.001


# ---- pure math ---------------------------------------------------------------------------------------
def pareto_weights(g_fused: torch.Tensor, g_uni: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`(cos, w_fused, w_uni)` (0-d float32 tensors) for two flattened gradients `[N]`.

    cos > 0: equal weights 1/2; otherwise (ties included) the two-task min-norm weights. Computed with
    `torch.where`, so no host-device sync.
    """
    a, b = g_fused.float(), g_uni.float()  # [N], [N]
    cos = F.cosine_similarity(a, b, dim=0)  # 0-d
    aa, ab, bb = a @ a, a @ b, b @ b  # 0-d each
    # argmin_c ‖c·a + (1 − c)·b‖² = (b·b − a·b) / ‖a − b‖²; the division is only used where it is finite
    interior = (bb - ab) / (aa + bb - 2 * ab)
    w_min_norm = torch.where(
        ab >= aa,
        torch.full_like(aa, W_FUSED_MAX),
        torch.where(ab >= bb, torch.full_like(aa, W_FUSED_MIN), interior),
    )
    w_fused = torch.where(cos > 0, torch.full_like(aa, 0.5), w_min_norm)
    return cos, w_fused, 1.0 - w_fused


def mmpareto_gradients(
    g_fused: list[torch.Tensor], g_uni: list[torch.Tensor], gamma: float
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One encoder's combined gradient, per parameter tensor: `(grads, cos, w_uni)`.

    g_fused, g_uni: the two losses' gradients on the same parameter tensors (same shapes, zeros where a
    loss does not reach a tensor). grads[p] = γ · max(1, ‖g_f,p + g_u,p‖ / ‖h_p‖) · h_p with
    h = 2 (w_f g_f + w_u g_u); see the module docstring.
    """
    if len(g_fused) != len(g_uni) or not g_fused:
        raise ValueError(f"need two equally long, non-empty gradient lists, got {len(g_fused)}, {len(g_uni)}")
    cos, w_f, w_u = pareto_weights(
        torch.cat([g.reshape(-1) for g in g_fused]), torch.cat([g.reshape(-1) for g in g_uni])
    )
    h = [2 * (w_f.to(gf.dtype) * gf + w_u.to(gu.dtype) * gu) for gf, gu in zip(g_fused, g_uni)]
    norm_h = torch.stack([n.float() for n in torch._foreach_norm(h)])  # [P]
    norm_sum = torch.stack([(gf + gu).float().norm() for gf, gu in zip(g_fused, g_uni)])  # [P]
    # scale up to at least the plain sum's size (never down); a zero h_p stays zero
    ratio = torch.where(norm_h > 0, norm_sum / norm_h.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
    scale = gamma * ratio.clamp_min(1.0)  # [P]
    return [hp * scale[i].to(hp.dtype) for i, hp in enumerate(h)], cos, w_u


# ---- the method --------------------------------------------------------------------------------------
class MMPareto(Balancer):
    """MMPareto: the Multi-Loss, with each encoder's gradient replaced by the Pareto combination of its
    multimodal and unimodal gradients (see the module docstring).

    gamma: the magnitude enhancement γ (> 0; authors' 1.5).
    """

    name: ClassVar[str] = "mmpareto"
    # the per-loss encoder gradients (autograd.grad), averaged over the global batch before they are combined
    reduced_statistics: ClassVar[tuple[str, ...]] = ("per_loss_gradients",)
    search_space: ClassVar[SearchSpace] = {"gamma": FloatRange(1.0, 3.0)}
    uses_unimodal_heads: ClassVar[bool] = True

    def __init__(self, *, gamma: float = 1.5):
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"mmpareto gamma must be a finite number > 0, got {gamma!r}")
        self.gamma = float(gamma)
        self._pending = None

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        label = batch["label"]
        total, terms = multi_loss_terms(out, label)
        self._pending = None
        if not total.requires_grad:  # no graph (evaluation): nothing to combine
            return total, self.log_values(terms)
        inner = unwrap(model)
        params = {m: [p for p in inner.encoders[m].parameters() if p.requires_grad] for m in inner.modalities}
        flat = [p for m in inner.modalities for p in params[m]]
        uni_sum = sum(terms[f"loss_{m}"] for m in inner.modalities)
        # keep the graph for the trainer's backward(); None = the loss does not reach that tensor
        g_f = torch.autograd.grad(terms["loss_fused"], flat, retain_graph=True, allow_unused=True)
        g_u = torch.autograd.grad(uni_sum, flat, retain_graph=True, allow_unused=True)
        if self.world.distributed:  # the global batch's gradients (None stays None: same graph on every rank)
            n = label.numel()
            g_f = tuple(None if g is None else self.world.batch_mean(g, n) for g in g_f)
            g_u = tuple(None if g is None else self.world.batch_mean(g, n) for g in g_u)
        writes, balance = [], {}
        start = 0
        for m in inner.modalities:
            n = len(params[m])
            ps, gfs, gus = params[m], g_f[start : start + n], g_u[start : start + n]
            start += n
            keep = [i for i in range(n) if gfs[i] is not None or gus[i] is not None]
            if not keep:  # encoder reached by neither loss: leave its gradients alone
                continue
            gf = [gfs[i] if gfs[i] is not None else torch.zeros_like(ps[i]) for i in keep]
            gu = [gus[i] if gus[i] is not None else torch.zeros_like(ps[i]) for i in keep]
            grads, cos, w_u = mmpareto_gradients(gf, gu, self.gamma)
            writes += [(ps[i], g) for i, g in zip(keep, grads)]
            balance |= {f"cos_{m}": cos, f"w_{m}": w_u}
        logs = self.log_values(terms | balance)  # one sync for the loss terms and cos, w
        self._pending = (weakref.ref(out), writes, {k: logs[k] for k in balance})
        return total, {k: logs[k] for k in terms}

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        pending, self._pending = self._pending, None
        if pending is None or pending[0]() is not out:
            raise RuntimeError(
                "mmpareto.before_step needs the gradients its loss() took for this same model output: "
                "call balancer.loss(model, batch, out) first, then backward(), then before_step"
            )
        _, writes, logs = pending
        for p, g in writes:
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)
        return logs
