"""MLA: alternating unimodal adaptation (Zhang et al., CVPR 2024, "Multimodal Representation Learning by
Alternating Unimodal Adaptation"), as the paper describes it.

The fusion head is one linear head h shared by every modality (`mlb.models.fusion.SharedHead`, built
through `model_options()`; it takes the place of Late-Linear). Each batch, for every modality m in turn,
one optimiser update (`updates_per_batch` = M):
1. forward encoder m alone, `logits_m = h(f_m)`, loss `CE(logits_m, y)` (plus m's detached probe head);
2. gradient modification of the shared head (orthogonal weight modification, OWM): with P the
   projector built from the inputs of the earlier updates, `∇W ← ∇W · P` (W: `[C, D]`, P: `[D, D]`), so
   the update for m does not undo what the head learnt for the other modalities; then P takes this
   update's input, `r = batch mean of f_m` (`[D, 1]`): `k = P r`, `P ← P − k kᵀ / (α + rᵀ k)`;
3. step.
Test time (validation, test): `fused = Σ_m λ_m · h(f_m)` with `λ = softmax over m of −entropy(softmax(h(f_m)))`
per clip (the paper's uncertainty-based fusion).

`owm_form` chooses between the paper's projector update above ("paper", the default) and the one of the
public GS plugins ("authors": kkontras/MLB `utils/GS_Plugin.py` and BalanceBenchmark `MLA_trainer.py`,
`GSPlugin.before_update`), which differs in two ways:
- the denominator: they write `torch.mm(k, r)` with r the `[1, D]` batch mean and k = P rᵀ `[D, 1]`, the
  outer product k rᵀ `[D, D]`, so `P ← P − k kᵀ ⊘ (α + k rᵀ)`, divided element-wise; P is then no longer
  symmetric, and the gradient takes it as they do, transposed: `∇W ← ∇W · Pᵀ`;
- the very first update of the run is skipped (`exp_count != 0`): its input never enters P (its
  gradient is unchanged in both forms: P = I then).
Default "paper": the paper's (and OWM's) rank-one update keeps P symmetric and shrinks it along each
input seen (the new P maps r to α P r / (α + rᵀ P r)), which is what "orthogonal to earlier inputs" means;
the element-wise form has no such derivation, and its denominators α + k_i r_j reach zero wherever
k_i r_j = −α, possible once r or k has entries of both signs (Conformer features do). The MLA
authors' own repository does not settle it: its plugin (Cecile-hi/Multimodal-Learning-with-Alternating-
Unimodal-Adaptation `utils/utils.py`, `GSPlugin.before_update`, called on `fusion_module.fc_out` in
`main.py`) modifies only a parameter named "module.weight", a name an `nn.Linear`'s parameters ("weight",
"bias") never have, so their public plugin never changes a gradient.

Authors' defaults: OWM α = 0.1 at the start of an epoch (their code decays it to 0.01 over the epoch).
Differences from the GS plugins (kkontras' and CXianRen's notes on them, BalanceBenchmark's
`MLA_trainer.py`), in both forms, where this follows the paper instead:
- they normalise P by its Frobenius norm after each update, then kkontras/MLB replaces ∇W by `∇W · Pᵀ`
  and BalanceBenchmark *adds* `∇W · Pᵀ` to ∇W (which leaves the gradient nearly unchanged); here
  `∇W ← ∇W · P` (OWM; `· Pᵀ` in the "authors" form), unnormalised, with P updated after it is applied
  (their code updates P with the current input first);
- their entropy is taken over the batch dimension; here over classes, per clip;
- α is held constant (a balancer does not know the epoch's length in advance).
- The unimodal heads are mlbpipe's detached probes (per-head accuracies); MLA's own unimodal outputs
  are `out.fused_parts[m]` of the shared head.
Logs per update: `loss_shared_<m>` (the shared head's CE on m), `loss_<m>` (probe); `loss` is the
sum over the batch's updates.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, unwrap
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.fusion import SharedHead
from mlb.models.model import ModelOutput

OWM_FORMS = ("paper", "authors")


def owm_update(projector: torch.Tensor, r: torch.Tensor, alpha: float, form: str = "paper") -> torch.Tensor:
    """OWM's recursive projector update, `k = P r`: "paper" `P − k kᵀ / (α + rᵀ k)` (a scalar denominator);
    "authors" `P − k kᵀ ⊘ (α + k rᵀ)` (element-wise, the GS plugins'). `[D, D]`, `[D]` -> `[D, D]`."""
    r = r.reshape(-1, 1)  # [D, 1]
    k = projector @ r  # [D, 1]
    if form == "authors":
        return projector - (k @ k.t()) / (alpha + k @ r.t())  # [D, D] / [D, D]
    return projector - (k @ k.t()) / (alpha + (r.t() @ k))  # [D, D] / [1, 1]


class MLA(Balancer):
    """Alternating unimodal updates through a shared head, with orthogonal weight modification.

    Keyword arguments:
    owm_alpha: α of the OWM projector update (> 0), default 0.1.
    modify: True applies the gradient modification (False: plain alternating training).
    owm_form: "paper" (default) or "authors": the projector update's denominator, the gradient's P or
        Pᵀ, and whether the run's first update is skipped (module docstring).
    """

    name: ClassVar[str] = "mla"
    reduced_statistics: ClassVar[tuple[str, ...]] = ("feature_mean",)  # r, the OWM projector's update
    search_space: ClassVar[SearchSpace] = {"owm_alpha": FloatRange(0.01, 1.0, log=True)}
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = frozenset({"late-linear"})

    def __init__(self, *, owm_alpha: float = 0.1, modify: bool = True, owm_form: str = "paper"):
        if not (isinstance(owm_alpha, (int, float)) and math.isfinite(owm_alpha) and owm_alpha > 0):
            raise ValueError(f"mla owm_alpha must be a finite number > 0, got {owm_alpha!r}")
        if modify not in (True, False):
            raise ValueError(f"mla modify must be true or false, got {modify!r}")
        if not (isinstance(owm_form, str) and owm_form in OWM_FORMS):
            raise ValueError(f"mla owm_form must be one of {', '.join(OWM_FORMS)}, got {owm_form!r}")
        self.owm_alpha = float(owm_alpha)
        self.modify = bool(modify)
        self.owm_form = owm_form
        self.projector: torch.Tensor | None = None  # P [D, D], built lazily on the head's device
        self._batch_loss = 0.0

    def model_options(self) -> dict[str, Any]:
        return {"classifier": "shared"}

    @classmethod
    def check_model(cls, model) -> None:
        super().check_model(model)
        if type(unwrap(model).fusion) is not SharedHead:  # built without MLA's model_options()
            raise ValueError(
                "method 'mla' needs the shared head (build the model with MLA().model_options(), "
                "{'classifier': 'shared'}, and fusion='late-linear')"
            )

    def updates_per_batch(self, model) -> int:
        return len(unwrap(model).modalities)

    def modality(self, model) -> str:
        return unwrap(model).modalities[self.substep]

    def forward(self, model, batch: dict) -> ModelOutput:
        """Encoder m alone (m = this update's modality) and the shared head on it."""
        inner, m = unwrap(model), self.modality(model)
        encoded = {m: inner.encoders[m](batch[m], batch.get(f"{m}_mask"))}
        fused, parts = inner.fuse(encoded)  # [B, C]: the shared head on f_m (weight 1)
        feature = encoded[m].pooled  # [B, D]
        return ModelOutput(
            fused=fused,
            unimodal={m: inner.unimodal_heads[m](feature)},
            features={m: feature},
            fused_parts=parts,
            encoded=encoded,
        )

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        m, label = self.modality(model), batch["label"]
        shared = F.cross_entropy(out.fused, label)
        probe = F.cross_entropy(unwrap(model).unimodal_heads[m](out.features[m].detach()), label)
        logs = self.log_values({f"loss_shared_{m}": shared, f"loss_{m}": probe})
        self._batch_loss = (0.0 if self.substep == 0 else self._batch_loss) + float(logs[f"loss_shared_{m}"])
        if self.substep == self.updates_per_batch(model) - 1:
            logs["loss"] = self._batch_loss
        return shared + probe, logs

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        if not self.modify:
            return {}
        m = self.modality(model)
        weight = unwrap(model).fusion.linear.weight  # [C, D]
        feature = out.features[m].detach().float()  # [B, D]
        r = self.world.batch_mean(feature.mean(0), feature.shape[0])  # [D], the global batch's mean
        if self.projector is None:
            self.projector = torch.eye(r.numel(), dtype=torch.float32)  # [D, D]
            if self.owm_form == "authors":  # their `exp_count != 0`: the run's first input never enters P
                return {}
        self.projector = self.projector.to(r.device)  # a resumed run loads it on the CPU
        if weight.grad is not None:
            # "authors": their `torch.mm(w.grad, torch.t(Pl))`, P not symmetric under their update
            p = self.projector if self.owm_form == "paper" else self.projector.t()
            weight.grad.copy_(weight.grad @ p.to(weight.grad))  # [C, D] @ [D, D]
        self.projector = owm_update(self.projector, r, self.owm_alpha, self.owm_form)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"projector": None if self.projector is None else self.projector.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projector = state["projector"]
