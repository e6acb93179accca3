"""DGL: Disentangled Gradient Learning (Wei, Luo & Luo, ICCV 2025, arXiv 2507.10213).

The fused loss's gradient is truncated at the encoders, and the unimodal losses' gradient never reaches
the fusion head:

    loss = CE(fusion(sg[e_1], ..., sg[e_M]), y) + α · Σ_m CE(head_m(e_m), y)

where e_m is encoder m's output (`EncoderOutput`: pooled, sequence, mask) and sg[·] stops the gradient.
So encoder m learns from α · CE(head_m) alone, the unimodal head m from the same term, and the fusion
head from the fused loss on detached encoder outputs. One extra pass of the fusion head per step (the
encoders are not run again): nearly free. Works for every fusion head and M >= 2.

Authors' code: shicaiwei123/ICCV2025-GDL, `main_dgl.py` (`train_epoch`: back-propagate
α · (loss_a + loss_v), drop the fusion module's gradients, back-propagate loss_f) and
`models/fusion_modules.py` (`*_DGL` heads: the fused branch reads `.detach()`ed features).
Authors' default α = 4.0 (`--alpha`; their CREMA-D script runs 4 and 5, Kinetics-Sounds 2 and 3);
the fused loss has weight 1.

Logs per step: `loss` (the total above), `loss_fused`, `loss_<m>` (unweighted unimodal CEs).

Differences from the authors' code:
- Their unimodal logits come from the fusion module's own layers applied to one modality (Concat: the
  fused linear layer with the other modality's features zeroed; Sum, FiLM, Gated: the per-modality
  branches), and the unimodal losses' gradient to the fusion module is thrown away, so those "heads"
  are trained by the fused loss only. mlbpipe has a separate linear head per modality, trained by its
  unimodal loss; that loss reaches no fusion parameter, so the "unimodal gradient truncation" holds by
  construction.
- Their Gated head detaches *after* the per-modality projections, so those projections get no gradient
  at all (their unimodal gradient is dropped too); we detach at the encoder outputs, so the whole
  fusion head learns from the fused loss, for every fusion (TF included, which they do not have).
- Their optimiser: SGD lr 0.002, momentum 0.9, weight decay 1e-4, batch 64 (mlbpipe: the trainer's Adam).
- `out.fused` (the forward's fused logits on attached features, used for the training accuracy) is not
  back-propagated; the fused loss uses a second pass of the fusion head, which gives the same logits
  unless the fusion head has active dropout.

Authors' gradient clipping: the total gradient norm clipped at 40 every step (`main_dgl.py` l. 129 at
b72a55f, `clip_grad_norm_(model.parameters(), max_norm=40, norm_type=2)`, after both backward passes,
before `optimizer.step()`). The trainer does it here too (`DGL.grad_clip_norm`; `mlb.train.step`: over the
trained parameters, after the no-op `before_step`); a run's `--grad-clip-norm` overrides it, 0 turns it off.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, unimodal_losses, unwrap
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.encoders import EncoderOutput


def detached_fused_logits(model, out) -> torch.Tensor:
    """The fusion head on `out.encoded` with pooled features and sequences detached: `[B, C]`.

    The masks are kept (they carry no gradient). Gradients from these logits reach the fusion head only.
    """
    if not out.encoded:
        raise ValueError(
            "dgl needs ModelOutput.encoded (the encoder outputs the fusion head read) to run the fusion "
            "head again on detached features; this model's forward did not fill it"
        )
    detached = {
        m: EncoderOutput(e.pooled.detach(), e.sequence.detach(), e.mask)  # [B, D], [B, L, D], [B, L]
        for m, e in out.encoded.items()
    }
    fused, _ = unwrap(model).fuse(detached)  # [B, C]
    return fused


class DGL(Balancer):
    """Disentangled Gradient Learning: encoders learn from their unimodal losses only, the fusion head
    from the fused loss on detached encoder outputs. No gradient changes after `backward()`.

    alpha: weight of the summed unimodal losses (> 0; authors' default 4.0, see the module docstring).
    Authors' defaults also: the global gradient norm clipped at 40 every update (`grad_clip_norm`).
    """

    name: ClassVar[str] = "dgl"
    grad_clip_norm: ClassVar[float | None] = 40.0  # authors' main_dgl.py: clip_grad_norm_(..., max_norm=40)
    search_space: ClassVar[SearchSpace] = {"alpha": FloatRange(0.5, 10.0, log=True)}
    uses_unimodal_heads: ClassVar[bool] = True

    def __init__(self, *, alpha: float = 4.0):
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"dgl alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        label = batch["label"]
        loss_fused = F.cross_entropy(detached_fused_logits(model, out), label)  # reaches the fusion only
        per_modality = unimodal_losses(out, label)  # {m: scalar}; each reaches encoder m and head m only
        total = loss_fused + self.alpha * sum(per_modality.values())
        return total, self.log_values(
            {"loss": total, "loss_fused": loss_fused} | {f"loss_{m}": v for m, v in per_modality.items()}
        )
