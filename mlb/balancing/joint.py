"""Joint Training: the fused cross-entropy only; no unimodal losses, no balancing (the baseline)."""

from __future__ import annotations

from mlb.balancing.base import Balancer, fused_loss_with_probes


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
        if not self.probe_unimodal:
            return super().loss(model, batch, out)  # fused cross-entropy only
        total, terms = fused_loss_with_probes(model, out, batch["label"])
        return total, self.log_values(terms)
