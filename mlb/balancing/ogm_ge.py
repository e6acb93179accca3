"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

Each step, after `backward()`:
1. Unimodal logits are the two additive halves of the Late-Linear fusion,
   out_m = f_m · W_mᵀ + b / 2 (`ModelOutput.fused_parts`).
2. score_m = Σ_batch softmax(out_m)[y] (detached); ρ_v = score_v / score_a, ρ_a = 1 / ρ_v.
3. The leader (ρ_m > 1) gets coeff_m = 1 − tanh(α · relu(ρ_m)), the other modality 1.
   Note the tanh of ρ, not of ρ − 1 (as in the authors' code): the leader's coefficient jumps from 1 to
   1 − tanh(α) (0.336 at α = 0.8) as soon as it leads, however slightly. At an exact tie (ρ_v = 1) the
   authors' `if ratio_v > 1 ... else` slows audio; so do we.
4. The leader encoder's gradients are multiplied by coeff_m. With GE (`ge=True`), every parameter of
   *both* encoders then gets Gaussian noise N(0, std of its original gradient) added, every step.
Loss: fused cross-entropy only (plus the detached unimodal-head probes of `base.probe_loss`, which
reach no encoder). Modulation (scaling and noise) happens only for epochs in [start_epoch, end_epoch].

Logs per step: `k_<m>` (the coefficient applied; 1 outside the window), `r_<m>` (ρ_m), `s_<m>` (score_m,
a batch *sum*, unlike MLB's batch mean), `ogm_active`.

Authors' defaults: α = 0.8 (OGM-GE README, CREMA-D), modulation epochs 0-50. The MLB authors ran
OGM-GE with α = 1.0: pass `alpha=1.0` to reproduce their table.

Differences from the authors' code, on purpose:
- Only the two Late-Linear halves are defined, so other fusion heads are refused (`check_model`).
- The authors scale and perturb only 4-D tensors (conv kernels) of the ResNet encoders; we scale and
  perturb every parameter of the encoder (the Conformer path has no conv kernels), as the MLB
  repository's OGM-GE does (parameter names `enc_0` / `enc_1`). The Late-Linear weight and the unimodal
  heads are never touched (the AGM repository's OGM-GE also scales each modality's half of its additive
  classifier). At an exact tie the MLB repository slows video (`score_0 / score_1 > 1`); we follow
  the OGM-GE authors.
- A score of 0 (all softmax probabilities underflowed) is clamped at 1e-12 so ρ stays finite.
- The epoch counter is the number of `on_epoch_end` calls seen so far (0 during the first epoch).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, fused_loss_with_probes
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.world import LOCAL, World

SCORE_EPS = 1e-12  # floor for a batch score so ρ = score_v / score_a stays finite


# ---- pure math ---------------------------------------------------------------------------------------
def ogm_scores(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """score = Σ over the batch of softmax(logits)[true class], detached. logits `[B, C]` -> 0-d."""
    probs = torch.softmax(logits.detach().float(), dim=1)  # [B, C]
    return probs.gather(1, label[:, None]).sum()


def ogm_coefficients(score_a: torch.Tensor, score_v: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    """The OGM rule on two scores: `{"ratio_a", "ratio_v", "coeff_a", "coeff_v"}` (0-d tensors).

    ρ_v = score_v / score_a, ρ_a = 1 / ρ_v. If ρ_v > 1 video leads: coeff_v = 1 − tanh(α·relu(ρ_v)),
    coeff_a = 1. Otherwise (ties included) coeff_a = 1 − tanh(α·relu(ρ_a)), coeff_v = 1.
    Computed with `torch.where`, so it does not synchronise a GPU.
    """
    score_a = torch.as_tensor(score_a, dtype=torch.float32).clamp_min(SCORE_EPS)
    score_v = torch.as_tensor(score_v, dtype=torch.float32, device=score_a.device).clamp_min(SCORE_EPS)
    ratio_v = score_v / score_a
    ratio_a = 1.0 / ratio_v
    one = torch.ones_like(ratio_v)
    video_leads = ratio_v > 1
    coeff_v = torch.where(video_leads, 1 - torch.tanh(alpha * F.relu(ratio_v)), one)
    coeff_a = torch.where(video_leads, one, 1 - torch.tanh(alpha * F.relu(ratio_a)))
    return {"ratio_a": ratio_a, "ratio_v": ratio_v, "coeff_a": coeff_a, "coeff_v": coeff_v}


def modulate_gradients_(params, coeff: torch.Tensor | float, *, noise: bool, world: World = LOCAL) -> None:
    """In place, for every parameter with a gradient: grad ← coeff · grad (+ N(0, std(grad)) if noise).

    The noise std is that of the original (unscaled) gradient, as in the authors' code; a tensor with
    a single element has no std and gets no noise. Under torchrun every rank adds rank 0's draw, so the
    replicas stay equal.
    """
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        std = g.float().std() if (noise and g.numel() > 1) else None  # of the original gradient
        g.mul_(coeff)
        if std is not None:
            g.add_(world.broadcast_(torch.randn_like(g)) * std.to(g.dtype))


# ---- the method --------------------------------------------------------------------------------------
class OGMGE(Balancer):
    """OGM-GE (Peng et al., CVPR 2022), Late-Linear fusion only.

    Keyword arguments (authors' defaults):
    alpha: 0.8 (OGM-GE README for CREMA-D; the MLB authors used 1.0).
    ge: True adds the Gaussian-noise generalisation enhancement; False is plain OGM.
    start_epoch, end_epoch: modulation is active for epochs in [start_epoch, end_epoch] (0, 50).
    """

    name: ClassVar[str] = "ogm-ge"
    reduced_statistics: ClassVar[tuple[str, ...]] = ("score",)  # Σ softmax[y] per modality, global batch
    search_space: ClassVar[SearchSpace] = {"alpha": FloatRange(0.1, 1.0)}
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = frozenset({"late-linear"})

    def __init__(self, *, alpha: float = 0.8, ge: bool = True, start_epoch: int = 0, end_epoch: int = 50):
        if not alpha > 0:
            raise ValueError(f"ogm alpha must be > 0, got {alpha!r}")
        if start_epoch < 0 or end_epoch < start_epoch:
            raise ValueError(
                f"ogm needs 0 <= start_epoch <= end_epoch, got start_epoch={start_epoch!r}, "
                f"end_epoch={end_epoch!r}"
            )
        self.alpha = float(alpha)
        self.ge = bool(ge)
        self.start_epoch = int(start_epoch)
        self.end_epoch = int(end_epoch)
        self.epoch = 0  # epochs completed so far = the index of the current epoch

    @classmethod
    def check_model(cls, model) -> None:
        fusion = getattr(model, "fusion_name", None)
        if fusion != "late-linear":
            raise ValueError(
                f"method {cls.name!r} needs fusion='late-linear' (its unimodal outputs are the two halves "
                f"of the Late-Linear layer, a·W_aᵀ + b/2 and v·W_vᵀ + b/2); got fusion={fusion!r}. "
                "Use mlb, agm or mmcosine for other fusion heads."
            )
        if len(model.modalities) != 2:
            raise ValueError(
                f"method {cls.name!r} is defined for exactly 2 modalities, got {model.modalities}"
            )

    @property
    def active(self) -> bool:
        return self.start_epoch <= self.epoch <= self.end_epoch

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        total, terms = fused_loss_with_probes(model, out, batch["label"])
        return total, self.log_values(terms)

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        a, v = model.modalities
        if set(out.fused_parts) != {a, v}:
            raise ValueError(
                f"method {self.name!r} needs ModelOutput.fused_parts for {a!r} and {v!r} "
                f"(the Late-Linear halves); got {sorted(out.fused_parts)}"
            )
        label = batch["label"]
        # sums over the global batch (one collective for both under torchrun)
        score_a, score_v = self.world.sum(
            torch.stack([ogm_scores(out.fused_parts[a], label), ogm_scores(out.fused_parts[v], label)])
        ).unbind()
        c = ogm_coefficients(score_a, score_v, self.alpha)
        if self.active:
            for m, coeff in ((a, c["coeff_a"]), (v, c["coeff_v"])):
                modulate_gradients_(
                    model.encoders[m].parameters(),
                    coeff.to(out.fused.device),
                    noise=self.ge,
                    world=self.world,
                )
        # k = the coefficient applied this step (1 outside the modulation window)
        one = torch.ones_like(c["coeff_a"])
        return self.log_values(
            {
                f"k_{a}": c["coeff_a"] if self.active else one,
                f"k_{v}": c["coeff_v"] if self.active else one,
                f"r_{a}": c["ratio_a"],
                f"r_{v}": c["ratio_v"],
                f"s_{a}": score_a,
                f"s_{v}": score_v,
                "ogm_active": float(self.active),
            }
        )

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        self.epoch += 1
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])


class OGM(OGMGE):
    """Plain OGM: OGM-GE without the Gaussian-noise enhancement (`ge=False`); same other defaults."""

    name: ClassVar[str] = "ogm"

    def __init__(self, *, alpha: float = 0.8, ge: bool = False, start_epoch: int = 0, end_epoch: int = 50):
        super().__init__(alpha=alpha, ge=ge, start_epoch=start_epoch, end_epoch=end_epoch)
