"""MMCosine: multi-modal cosine loss (Xu et al., ICASSP 2023; GeWu-Lab/MMCosine_ICASSP23).

The classifier becomes a cosine classifier: features and class weights are L2-normalised, so no
modality can dominate the fused logits through a larger feature or weight norm:
    out_m = s · cos(h_m, W_m)  (per class c: s · ⟨h_m/‖h_m‖, w_{m,c}/‖w_{m,c}‖⟩),   fused = Σ_m out_m,
and the loss is the cross-entropy of `fused` (no bias). s is the scaling that restores a usable
softmax temperature (cosines lie in [−1, 1]).

The cosine head lives in the model, so evaluation uses the same classifier as training: this method
asks `mlb.models.build_model` for it through `model_options()` →
`{"classifier": "cosine", "cosine_scale": s, "cosine_head": head}`. Per fusion head:
- Late-Linear: h_m = f_m, each modality's block of W normalised on its own (the authors' `main_CD.py`).
- FiLM and Gated, `head="per-modality"` (default, the authors' recipe): the authors' *symmetric*
  variants (`models/fusion_modules.py`: each modality modulates or gates the other), h_m = modality m's
  modulated feature, each with its own normalised half of the output layer
  (`mlb.models.fusion.SymmetricFiLM`, `SymmetricGated`). Note that the architecture then differs from
  the paper's one-directional FiLM / Gated that the other methods train. `head="fused"` keeps the
  paper's FiLM / Gated and makes their output layer one cosine classifier on the fused vector
  (mlbpipe's own choice: same architecture as the other methods; not the authors').
- Mid-MLP and TF: the authors have no version; their output layer becomes one cosine classifier on the
  fused vector (mlbpipe's extension).
The MLB authors' re-implementation (kkontras/MLB `OGM_Model.py`) normalises Late-Linear as above and
leaves FiLM / Gated / TF heads plain linear. The unimodal heads are cosine too and are trained as
detached probes (`base.probe_loss`).

Authors' defaults: s = 10; they advise s ≈ 50 for FiLM and Gated fusion. `cosine_logits` below is the
formula on plain tensors (the tests check the model's head against it).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, fused_loss_with_probes
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.fusion import COSINE_HEADS, CosineClassifier, PerModalityCosine


# ---- pure math ---------------------------------------------------------------------------------------
def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """s · cos(feature, class weight): `[B, D]`, `[C, D]` -> `[B, C]`."""
    return scale * F.normalize(features, dim=1) @ F.normalize(weight, dim=1).t()


def cosine_scales(model) -> list[float]:
    """The scale of every cosine layer in the model's fusion head (empty when it has none)."""
    scales = [float(mod.scale) for mod in model.fusion.modules() if isinstance(mod, CosineClassifier)]
    if getattr(model.fusion, "cosine", False) or isinstance(model.fusion, PerModalityCosine):
        scales.append(float(model.fusion.scale))  # Late-Linear (classifier="cosine"), symmetric FiLM/Gated
    return scales


# ---- the method --------------------------------------------------------------------------------------
class MMCosine(Balancer):
    """Cosine classifier with scaling s; fused cross-entropy.

    Keyword arguments (authors' defaults):
    scale: s = 10 (authors advise ~50 for FiLM / Gated fusion).
    head: "per-modality" (the authors' symmetric FiLM / Gated with per-modality halves) or "fused"
        (one cosine layer on the paper's FiLM / Gated); Late-Linear, Mid-MLP and TF are not affected.
    """

    name: ClassVar[str] = "mmcosine"
    search_space: ClassVar[SearchSpace] = {"scale": FloatRange(1.0, 50.0, log=True)}
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(self, *, scale: float = 10.0, head: str = "per-modality"):
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"mmcosine scale must be a finite number > 0, got {scale!r}")
        if head not in COSINE_HEADS:
            raise ValueError(f"mmcosine head must be one of {list(COSINE_HEADS)}, got {head!r}")
        self.scale = float(scale)
        self.head = head
        self._checked = False

    def model_options(self) -> dict[str, Any]:
        return {"classifier": "cosine", "cosine_scale": self.scale, "cosine_head": self.head}

    @classmethod
    def check_model(cls, model) -> None:
        super().check_model(model)
        if not cosine_scales(model):
            raise ValueError(
                f"method 'mmcosine' needs a model built with classifier='cosine' (see "
                f"MMCosine.model_options()); fusion={getattr(model, 'fusion_name', None)!r} "
                "has a plain linear output layer"
            )

    def check_scale(self, model) -> None:
        """Fail when the model's cosine head was built with another s than this method's."""
        self.check_model(model)
        scales = cosine_scales(model)
        if any(abs(s - self.scale) > 1e-9 for s in scales):
            raise ValueError(
                f"method 'mmcosine' has scale={self.scale:g} but the model's cosine head was "
                f"built with cosine_scale={scales}; build it with {self.model_options()}"
            )

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        if not self._checked:  # once: the model is fixed for the run
            self.check_scale(model)
            self._checked = True
        total, terms = fused_loss_with_probes(model, out, batch["label"])
        return total, self.log_values(terms)
