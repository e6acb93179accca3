"""The baselines built on each encoder trained alone (the ones the MLB authors' successor paper ran beside
every balancing method: Kontras et al., NeurIPS 2025, "Balancing
Multimodal Training Through Game-Theoretic Regularization"; kkontras/MCR at 338d370,
`configs/CREMA_D/release/vit/pre_frozen.json`, `pre_finetuned.json`, `models/MCR_Models.py` `Base_Model`).

Ensemble (`ensemble`, their `configs/.../ens.json`, `Base_Ensemble_Model`, `max_epoch: 0`): nothing is
trained; the runs alone's encoders and heads are evaluated together, the fused logits being each head's
logits standardised over the evaluation batch (one mean and one unbiased standard deviation over its
`[B, C]`) and summed (`mlb.models.model.ensemble_logits`). The run validates once (its "selected" epoch is
0, step 0) and tests once like any other, so its predictions enter the paired statistics. The
standardisation depends on the evaluation batch, as theirs does (`--eval-batch-size`).

Uni-Pre: each encoder and its unimodal head start from a unimodal run's checkpoint (`audio-only`, `video-only`: the
trainer's `init_encoders`, which `mlbpipe compare` fills from the same seed's or fold's runs); the fusion
head is new (random init). The loss is the fused cross-entropy alone (their `multi_supervised_w` 0 for
every modality):
- `uni-pre-frozen`: the encoders keep their unimodal weights (no gradient, left out of the optimiser);
  their BatchNorm layers normalise with the batch's statistics in training without updating the running
  ones, and with the unimodal run's running statistics in evaluation (their `freeze_encoder` with
  `track_running_stats=False`). Only the fusion head learns.
- `uni-pre-finetuned`: everything trains, at the run's lr (theirs: the same lr as the frozen variant).
The budget: the unimodal runs have the comparison's epoch budget each, and Uni-Pre's own run the same budget
again on top of them.

Differences from the authors' code:
- The unimodal heads keep learning as detached probes (`mlb.balancing.base.probe_loss`: no gradient to an
  encoder or the fusion head), as under Joint, so the per-head accuracies read the current encoders; the
  authors freeze (frozen) or leave untouched (fine-tuned, no loss on them) their loaded heads.
- In their CREMA-D Conformer configs the two files are swapped (`pre_finetuned.json` sets
  `freeze_encoder: true`, `pre_frozen.json` false); the names here mean what they say.
"""

from __future__ import annotations

from typing import ClassVar

from mlb.balancing.base import Balancer, fused_loss_with_probes

# the runs alone these methods start from, one per modality (`mlb.balancing.unimodal`)
RUNS_ALONE = ("audio-only", "video-only")


class Ensemble(Balancer):
    """The runs alone's encoders and heads, evaluated together: standardised logits summed; nothing trains."""

    name = "ensemble"
    needs_pretrained_encoders: ClassVar[bool] = True
    frozen_encoders: ClassVar[bool] = True
    trains: ClassVar[bool] = False

    def model_options(self) -> dict:
        return {"ensemble": True}


class _UniPre(Balancer):
    uses_unimodal_heads = False
    needs_pretrained_encoders: ClassVar[bool] = True

    def loss(self, model, batch, out):
        total, terms = fused_loss_with_probes(model, out, batch["label"])  # CE(fused) + detached probes
        return total, self.log_values(terms)


class UniPreFrozen(_UniPre):
    """The encoders of the unimodal runs, frozen; a new fusion head trained on them (fused CE)."""

    name = "uni-pre-frozen"
    frozen_encoders: ClassVar[bool] = True


class UniPreFinetuned(_UniPre):
    """The encoders of the unimodal runs, trained further with a new fusion head (fused CE)."""

    name = "uni-pre-finetuned"
