"""Multi-Loss Balanced (MLB), paper Eq. 2-7, as the authors' code computes it.

Every step, after `backward()` and before `optimizer.step()`:
  s_i = batch mean of softmax(unimodal logits_i)[true class]             (detached; Eq. 4, mean not sum)
  r_i = mean_{j != i} s_j / s_i                                          (Eq. 5)
  β_i = β_max if r_i > 1 (modality i lags: accelerate) else 2 (it leads: decelerate)   (Eq. 6)
  k_i = 1 + (β_i - 1) · tanh(α · (r_i - 1))                              (Eq. 7)
and the gradient of every parameter of modality i (encoder, unimodal head, its part of the fusion
head) is multiplied by k_i. Which fusion-head parameters are "its part" follows the authors' rule by
default (`ownership="authors"`: the Late-Linear weight's columns of i, Mid-MLP's first-layer weights of
i, the Gated head's projection of i with its bias, nothing in FiLM or TF), the rule the paper's fusion
ablation was measured under; `ownership="input"` is mlbpipe's structural rule (a weight that reads only
i's features: FiLM's γ/β generator for audio, the Gated projection weights without biases, TF's
modality tokens), documented in `mlb.models.fusion`. The loss is the Multi-Loss (Eq. 3). No moving
average and no hard stop: as the unimodal heads converge r_i → 1 and k_i → 1.

k_i depends only on the forward pass, so `MLB.loss` already computes it (its host copy for the logs
then costs no extra device sync); `before_step` applies it. `before_step` also works alone, after
any loss, computing k_i from the `out` it is given.
"""

from __future__ import annotations

import math
import weakref
from typing import ClassVar

import torch

from mlb.balancing.base import true_class_scores
from mlb.balancing.grads import scale_modality_grads
from mlb.balancing.multi_loss import MultiLoss, multi_loss_terms
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.fusion import OWNERSHIP

EPS = 1e-6  # floor for s_i so r_i stays finite when a head gives the true class ~0 probability


def performance_ratios(scores: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq. 5: r_i = mean_{j != i} s_j / s_i for a 1-D tensor of M >= 2 scores; s clamped at eps."""
    if scores.dim() != 1 or scores.numel() < 2:
        raise ValueError(f"scores must be a 1-D tensor of M >= 2 values, got shape {tuple(scores.shape)}")
    s = torch.nan_to_num(scores.float(), nan=eps).clamp_min(eps)  # [M]
    m = s.numel()
    off_diagonal = 1.0 - torch.eye(m, dtype=s.dtype, device=s.device)  # [M, M]
    others_mean = (off_diagonal * s[None, :]).sum(1) / (m - 1)  # [M]; no sum-minus-self cancellation
    return others_mean / s  # [M]


def mlb_coefficients(scores: torch.Tensor, alpha: float, beta_max: float, eps: float = EPS) -> torch.Tensor:
    """Eq. 5-7: the M balancing coefficients k_i from the M scores s_i (1-D tensor in, 1-D out).

    Finite for any finite alpha > 0 and beta_max: s is clamped at eps (r <= (max s)/eps), tanh is
    bounded, so k_i lies in [1 - 1, 1 + (beta_max - 1)] = [0, beta_max] (or [beta_max, 1] if
    beta_max < 1). Use `performance_ratios` for the r_i.
    """
    r = performance_ratios(scores, eps)  # [M]
    beta = torch.where(r > 1, torch.full_like(r, float(beta_max)), torch.full_like(r, 2.0))  # [M]
    return 1.0 + (beta - 1.0) * torch.tanh(alpha * (r - 1.0))  # [M]


class MLB(MultiLoss):
    """Multi-Loss Balanced. `loss` is the Multi-Loss; `before_step` scales each modality's gradients by
    k_i and returns `{k_m, r_m, s_m}` for every modality m.

    alpha: slope of tanh (> 0). beta_max: the largest acceleration (paper: >= 1; the authors' scripts
        also use < 1, which then slows the laggard too). Defaults: the authors' CREMA-D ResNet
        Late-Linear setting (0.5, 10).
    eps: floor for s_i.
    ownership: "authors" (default) or "input": which fusion-head parameters count as modality i's
        (see the module docstring and `mlb.models.fusion.OWNERSHIP`).

    The authors' (alpha, beta_max): CREMA-D with ResNet-18 (raw input) Late-Linear (0.5, 10), Mid-MLP
    (0.5, 5), Gated (0.5, 10), FiLM (0.5, 20), TF (0.5, 20); CREMA-D with the Conformer (cached
    features) (5, 2) for every fusion; AVE (2, 1) in the paper, (2, 2) in the authors' AVE run (their
    default k = 1 + tanh(alpha (r - 1))); UCF101 (2, 0.5). The trainer takes a corpus's settings from
    its shards' meta.json (`mlb.method_defaults`, written from the corpus plug-in), not from here.
    """

    name = "mlb"
    reduced_statistics = ("s",)  # the true-class scores, over the global batch
    search_space: ClassVar[SearchSpace] = {
        "alpha": FloatRange(0.1, 10.0, log=True),
        "beta_max": FloatRange(0.5, 20.0, log=True),
    }
    uses_unimodal_heads = True

    def __init__(
        self, *, alpha: float = 0.5, beta_max: float = 10.0, eps: float = EPS, ownership: str = "authors"
    ):
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"mlb alpha must be a finite number > 0, got {alpha!r}")
        if not (isinstance(beta_max, (int, float)) and math.isfinite(beta_max) and beta_max > 0):
            raise ValueError(f"mlb beta_max must be a finite number > 0, got {beta_max!r}")
        if not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise ValueError(f"mlb eps must be in (0, 1), got {eps!r}")
        if ownership not in OWNERSHIP:
            raise ValueError(f"mlb ownership must be one of {list(OWNERSHIP)}, got {ownership!r}")
        self.alpha = float(alpha)
        self.beta_max = float(beta_max)
        self.eps = float(eps)
        self.ownership = ownership

    def _balance(self, out, label):
        """s, r, k (each `[M]`, `out.unimodal` order) and their log entries, all still tensors."""
        scores = self.world.batch_mean(
            true_class_scores(out, label), label.numel()
        )  # [M], the global batch's
        ratios = performance_ratios(scores, self.eps)  # [M]
        ks = mlb_coefficients(scores, self.alpha, self.beta_max, self.eps)  # [M]
        logs = {}
        for i, m in enumerate(out.unimodal):
            logs |= {f"k_{m}": ks[i], f"r_{m}": ratios[i], f"s_{m}": scores[i]}
        return ks, logs

    def loss(self, model, batch, out):
        # k depends only on this forward's unimodal logits: compute it here so the loss terms and
        # k, r, s reach the host in one sync (a second sync after backward() would stall a GPU step)
        total, terms = multi_loss_terms(out, batch["label"])
        ks, balance_logs = self._balance(out, batch["label"])
        logs = self.log_values(terms | balance_logs)
        self._pending = (weakref.ref(out), ks, {k: logs[k] for k in balance_logs})
        return total, {k: logs[k] for k in terms}

    def before_step(self, model, batch, out):
        pending = getattr(self, "_pending", None)
        self._pending = None
        if pending is not None and pending[0]() is out:  # computed by loss() for this very output
            ks, logs = pending[1], pending[2]
        else:  # used without our loss(): compute now
            ks, balance_logs = self._balance(out, batch["label"])
            logs = self.log_values(balance_logs)
        for i, m in enumerate(out.unimodal):
            scale_modality_grads(model, m, ks[i], self.ownership)  # 0-d tensor on the device: no host sync
        return logs
