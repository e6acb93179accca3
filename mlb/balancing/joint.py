"""Joint Training: the fused cross-entropy only; no unimodal losses, no balancing (the baseline)."""

from __future__ import annotations

import torch.nn.functional as F

from mlb.balancing.base import Balancer, probe_loss


class Joint(Balancer):
    """`loss = CE(fused, y)`.

    probe_unimodal: also train each unimodal head on its encoder's *detached* features
        (`mlb.balancing.base.probe_loss`), so per-head accuracies and the agreement table (paper
        Figure 4) are meaningful; no gradient of these terms reaches an encoder or the fusion, so the
        multimodal model trains exactly as under Joint Training. Default True.
    """

    name = "joint"
    uses_unimodal_heads = False

    def __init__(self, *, probe_unimodal: bool = True):
        self.probe_unimodal = bool(probe_unimodal)

    def loss(self, model, batch, out):
        label = batch["label"]
        loss_fused = F.cross_entropy(out.fused, label)
        terms = {"loss_fused": loss_fused}
        total = loss_fused
        if self.probe_unimodal:
            probes = probe_loss(model, out, label)
            total = total + sum(probes.values())
            terms |= {f"loss_{m}": v for m, v in probes.items()}
        return total, self.log_values({"loss": loss_fused, **terms})
