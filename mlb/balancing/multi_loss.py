"""Multi-Loss (paper Eq. 3): fused cross-entropy plus one cross-entropy per unimodal head, weights 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, unimodal_losses


def multi_loss_terms(out, label: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`(total, terms)`: total = CE(fused) + Σ_m CE(unimodal_m); terms = {loss, loss_fused, loss_<m>}."""
    loss_fused = F.cross_entropy(out.fused, label)
    per_modality = unimodal_losses(out, label)  # {m: scalar}
    total = loss_fused + sum(per_modality.values())
    return total, {
        "loss": total,
        "loss_fused": loss_fused,
        **{f"loss_{m}": v for m, v in per_modality.items()},
    }


class MultiLoss(Balancer):
    """`loss = CE(fused, y) + Σ_m CE(unimodal_m, y)`; no gradient changes."""

    name = "multi-loss"
    uses_unimodal_heads = True

    def loss(self, model, batch, out):
        total, terms = multi_loss_terms(out, batch["label"])
        return total, self.log_values(terms)
