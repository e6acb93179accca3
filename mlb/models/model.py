"""The multimodal model of the paper's Eq. 1: one encoder per modality, a fusion head over their
features, and one linear unimodal head per modality (docs/CONTRACTS.md, "Models").

    model = build_model(features="cached", fusion="late-linear", num_classes=6, size="paper",
                        input_dims={"audio": 768, "video": 1408})
    out = model(batch)       # ModelOutput(fused [B, C], unimodal {m: [B, C]}, features {m: [B, D]})

Gradient balancing needs to know which parameters belong to which modality:
`model.modality_grad_slices(m)` returns `[(parameter, index), ...]` covering modality m's encoder,
its unimodal head, and its own part of the fusion head (`index` is `None` for a whole tensor or a
tuple of slices, e.g. the Late-Linear weight's columns of m). Shared parameters (biases and layers
that read every modality) belong to no modality; `model.shared_parameters()` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from mlb.models.encoders import EncoderOutput, build_encoder, encoder_sizes
from mlb.models.fusion import OWNERSHIP, CosineClassifier, build_fusion

GradSlice = tuple[nn.Parameter, tuple[slice, ...] | None]


@dataclass
class ModelOutput:
    """What `MultimodalModel.forward` returns.

    fused:    `[B, C]` fused logits.
    unimodal: `{modality: [B, C]}` logits of each modality's own head (on the pooled features).
    features: `{modality: [B, D]}` pooled encoder features (D = 512 at size "paper").
    fused_parts: `{modality: [B, C]}` per-modality additive parts of `fused` when the fusion head is
        additive (Late-Linear: `f_m · W_mᵀ + b / M`, so `sum(fused_parts.values()) == fused`; the
        cosine classifier: `s · cos(f_m, W_m)`); empty for the other heads. OGM-GE and MMCosine use it.
    encoded: `{modality: EncoderOutput}` the encoders' outputs the fusion head read (pooled, sequence,
        mask), so a method can run the fusion head again on changed inputs (`model.fuse`): AGM's
        masked passes, DGL's detached features.
    """

    fused: torch.Tensor
    unimodal: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    fused_parts: dict[str, torch.Tensor] = field(default_factory=dict)
    encoded: dict[str, EncoderOutput] = field(default_factory=dict)


class MultimodalModel(nn.Module):
    """Encoders `{m: encoder}`, a fusion head, and unimodal heads `{m: head}`.

    Each encoder takes its modality's input (and `<m>_mask` when the batch has one) and returns an
    `EncoderOutput(pooled [B, D], sequence [B, L, D], mask [B, L] | None)`; the fusion head reads the
    `EncoderOutput`s (TF uses the sequences, the others the pooled features). `prediction_decoder`
    (None unless a method asks for one, `build_model(prediction_decoder=True)`) maps the fused logits
    back to the concatenated pooled features; the forward pass does not use it (MCR's loss does).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module,
        unimodal_heads: dict[str, nn.Module],
        *,
        fusion_name: str,
        prediction_decoder: nn.Module | None = None,
        ensemble: bool = False,
    ):
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"a multimodal model needs >= 2 modalities, got {list(encoders)}")
        if set(unimodal_heads) != set(encoders):
            raise ValueError(f"unimodal_heads {sorted(unimodal_heads)} != encoders {sorted(encoders)}")
        self.modalities: tuple[str, ...] = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.unimodal_heads = nn.ModuleDict({m: unimodal_heads[m] for m in self.modalities})
        self.fusion_name = fusion_name
        # MCR's L_CEB decoder (`prediction_decoder`): built only when a method asks for it, so every other
        # method's model and checkpoint keep their parameters
        self.prediction_decoder = prediction_decoder
        # the Ensemble baseline: `fused` is the unimodal heads' standardised logits summed (`ensemble_logits`);
        # the fusion head is built (the same parameters as any model) but never read
        self.ensemble = ensemble
        self._grad_slices: dict[tuple[str, str], list[GradSlice]] = {}

    def encode(self, batch: dict) -> dict[str, EncoderOutput]:
        """Run every encoder on its input: `{m: EncoderOutput}`."""
        return {m: self.encoders[m](batch[m], batch.get(f"{m}_mask")) for m in self.modalities}

    def forward(self, batch: dict) -> ModelOutput:
        encoded = self.encode(batch)
        features = {m: e.pooled for m, e in encoded.items()}  # {m: [B, D]}
        unimodal = {m: self.unimodal_heads[m](f) for m, f in features.items()}  # {m: [B, C]}
        if self.ensemble:
            fused, fused_parts = ensemble_logits(unimodal)  # [B, C], {m: [B, C]}
        else:
            fused, fused_parts = self.fuse(encoded)  # [B, C], {m: [B, C]}
        return ModelOutput(
            fused=fused, unimodal=unimodal, features=features, fused_parts=fused_parts, encoded=encoded
        )

    def fuse(self, encoded: dict[str, EncoderOutput]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fusion head alone on encoder outputs: `(fused [B, C], fused_parts {m: [B, C]})`."""
        return self.fusion(encoded)

    def modality_grad_slices(self, m: str, ownership: str = "input") -> list[GradSlice]:
        """Every parameter of modality m as `(parameter, index)`; index None = the whole tensor.

        ownership: which fusion-head parameters count as m's (`mlb.models.fusion.OWNERSHIP`): "input"
        (a weight that reads only m's features) or "authors" (the MLB authors' name-matching rule)."""
        if m not in self.modalities:
            raise KeyError(f"unknown modality {m!r}; model has {self.modalities}")
        if ownership not in OWNERSHIP:
            raise ValueError(f"ownership must be one of {list(OWNERSHIP)}, got {ownership!r}")
        key = (m, ownership)
        if key not in self._grad_slices:  # parameters never change: compute once per rule
            self._grad_slices[key] = (
                [(p, None) for p in self.encoders[m].parameters()]
                + [(p, None) for p in self.unimodal_heads[m].parameters()]
                + list(self.fusion.modality_grad_slices(m, ownership))
            )
        return self._grad_slices[key]

    def shared_parameters(self, ownership: str = "input") -> list[nn.Parameter]:
        """Fusion parameters that no modality owns wholly (biases, layers reading every modality).
        A parameter that is only partly owned (the Late-Linear weight) is not listed."""
        owned = {id(p) for m in self.modalities for p, _ in self.modality_grad_slices(m, ownership)}
        return [p for p in self.fusion.parameters() if id(p) not in owned]


def ensemble_logits(unimodal: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Ensemble baseline's fused logits: each head's logits `[B, C]` standardised by their own mean and
    (unbiased) standard deviation over the whole batch, one scalar each, then summed with equal weights (the
    MLB authors' `Base_Ensemble_Model`, `norm_decision: "standardization"`, kkontras/MCR). Returns (fused
    `[B, C]`, {m: standardised `[B, C]`}). A batch of one value leaves the logits centred only."""
    parts = {}
    for m, logits in unimodal.items():
        spread = logits.std() if logits.numel() > 1 else logits.new_ones(())
        parts[m] = (logits - logits.mean()) / spread.clamp_min(torch.finfo(logits.dtype).tiny)
    return sum(parts.values()), parts


def build_prediction_decoder(num_classes: int, dim: int, num_modalities: int) -> nn.Module:
    """MCR's L_CEB decoder (kkontras/MCR `MCR_Model.fc_yz`): fused logits `[B, C]` → Linear(C, D), ReLU,
    Linear(D, M·D), no biases → `[B, M·D]`, the concatenated pooled features it is trained to predict."""
    return nn.Sequential(
        nn.Linear(num_classes, dim, bias=False),
        nn.ReLU(),
        nn.Linear(dim, dim * num_modalities, bias=False),
    )


def zero_modality(batch: dict, m: str) -> dict:
    """A shallow copy of `batch` with modality m's input replaced by zeros (AGM's masked passes).
    The mask, if any, is kept so sequence encoders still see the same lengths."""
    return {**batch, m: torch.zeros_like(batch[m])}


def build_model(
    *,
    features: Literal["raw", "cached"],
    fusion: str = "late-linear",
    num_classes: int = 6,
    size: Literal["tiny", "small", "paper"] = "paper",
    input_dims: dict[str, int] | None = None,
    modalities: tuple[str, ...] = ("audio", "video"),
    classifier: Literal["linear", "cosine"] = "linear",
    cosine_scale: float = 10.0,
    cosine_head: str = "per-modality",
    dropout: float | None = None,
    prediction_decoder: bool = False,
    ensemble: bool = False,
) -> MultimodalModel:
    """Build the paper's model.

    features: "raw" (ResNet-18 from scratch on a `[B, 1, F, T]` spectrogram for audio and a
        `[B, N, 3, H, W]` frame stack for video) or "cached" (1x1 projection + Conformer per modality
        over `[B, T, D_in]` frozen-feature sequences with `<m>_mask`).
    fusion: "late-linear", "mid-mlp", "film", "gated" or "tf" (FiLM and Gated: exactly audio + video).
    size: "tiny" (unit tests on CPU), "small" (CPU benchmarks), "paper" (the paper's sizes, D = 512).
    input_dims: cached only: the feature size of every modality, e.g. `{"audio": 768, "video": 1408}`.
    classifier: "linear", or "cosine" for MMCosine (the unimodal heads and the fusion's output layer
        become cosine classifiers with scale `cosine_scale`; Late-Linear becomes the sum of the
        per-modality cosine logits, as MMCosine defines it).
    cosine_head: with classifier="cosine", how FiLM and Gated are built (`mlb.models.fusion.build_fusion`).
    classifier="shared" (MLA, late-linear only): one linear head shared by the modalities, its outputs
        fused by their prediction uncertainty (`mlb.models.fusion.SharedHead`); unimodal heads linear.
    dropout: overrides the size's dropout (encoders and fusion).
    ensemble: the fused output is the unimodal heads' standardised logits summed (`ensemble_logits`, the
        Ensemble baseline); the fusion head is still built, never read.
    prediction_decoder: also build `model.prediction_decoder` (MCR's L_CEB decoder,
        `build_prediction_decoder`), trained with the rest of the model; False (no such module) for every
        other method.
    """
    if features not in ("raw", "cached"):
        raise ValueError(f"features must be 'raw' or 'cached', got {features!r}")
    if classifier not in ("linear", "cosine", "shared"):
        raise ValueError(f"classifier must be 'linear', 'cosine' or 'shared', got {classifier!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    sizes = encoder_sizes(size)  # raises on an unknown size
    if dropout is not None:
        sizes = {**sizes, "dropout": dropout}
    encoders = {}
    for m in modalities:
        if features == "cached":
            if not input_dims or m not in input_dims:
                raise ValueError(
                    f"input_dims must give the feature size of {m!r} for features='cached', "
                    f"got {input_dims!r}"
                )
            encoders[m] = build_encoder("conformer", sizes=sizes, input_dim=int(input_dims[m]))
        else:
            kind = {"audio": "resnet-spectrogram", "video": "resnet-frames"}.get(m)
            if kind is None:
                raise ValueError(f"features='raw' knows modalities 'audio' and 'video', got {m!r}")
            encoders[m] = build_encoder(kind, sizes=sizes)
    dim = sizes["dim"]

    def head() -> nn.Module:  # the unimodal heads (probes under MLA)
        if classifier == "cosine":
            return CosineClassifier(dim, num_classes, scale=cosine_scale)
        return nn.Linear(dim, num_classes)

    fusion_head = build_fusion(
        fusion,
        modalities=modalities,
        dim=dim,
        num_classes=num_classes,
        sizes=sizes,
        classifier=classifier,
        cosine_scale=cosine_scale,
        cosine_head=cosine_head,
    )
    heads = {m: head() for m in modalities}
    # drawn last, so every other parameter starts as it would without the decoder
    decoder = build_prediction_decoder(num_classes, dim, len(modalities)) if prediction_decoder else None
    return MultimodalModel(
        encoders, fusion_head, heads, fusion_name=fusion, prediction_decoder=decoder, ensemble=ensemble
    )
