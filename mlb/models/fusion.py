"""Fusion heads (paper §4.3): Late-Linear, Mid-MLP, FiLM, Gated and TF.

Every head takes `{modality: EncoderOutput}` and returns `(fused [B, C], fused_parts {m: [B, C]})`,
where `fused_parts` is filled only by additive heads (Late-Linear; see `ModelOutput`).

Every head also says which of its parameters belong to which modality, for gradient balancing
(`modality_grad_slices(m, ownership) -> [(parameter, index)]`), under one of two rules (`OWNERSHIP`):
- "input": a weight that reads only modality m's features is m's: the Late-Linear weight's columns of
  m, Mid-MLP's first layer of m, FiLM's γ/β generator (audio), Gated's per-modality projection
  weights, TF's modality token of m. Biases and layers that read a mix of modalities are shared.
- "authors": the MLB authors' rule, which matches parameter names (`fc_0_lin.weight`, `mod0`, `mod1`
  in kkontras/MLB `Bias_Infusion.py`): the Late-Linear columns and Mid-MLP's first-layer weights as
  above, Gated's per-modality projections *with their biases*, and nothing in FiLM or TF (their
  parameter names carry no modality). The paper's fusion ablation was measured under this rule.

The two heads that do not depend on the rule (Late-Linear, Mid-MLP) give the same slices under both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlb.models.encoders import EncoderOutput

FUSIONS = ("late-linear", "mid-mlp", "film", "gated", "tf")
OWNERSHIP = ("authors", "input")
COSINE_HEADS = ("per-modality", "fused")  # MMCosine on FiLM / Gated: see build_fusion


class CosineClassifier(nn.Module):
    """MMCosine's classifier: `scale · cos(x, w_c)` for every class c; no bias. `[B, D]` → `[B, C]`."""

    def __init__(self, dim: int, num_classes: int, *, scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()  # [B, C]


def _output_layer(dim: int, num_classes: int, classifier: str, cosine_scale: float) -> nn.Module:
    if classifier == "cosine":
        return CosineClassifier(dim, num_classes, scale=cosine_scale)
    return nn.Linear(dim, num_classes)


class LateLinear(nn.Module):
    """One linear layer on the concatenated pooled features: `fused = [f_1, ..., f_M] · Wᵀ + b`.

    `fused_parts[m] = f_m · W_mᵀ + b / M` (W_m = m's columns of W), so the parts sum to `fused`
    (OGM-GE's unimodal outputs). With `classifier="cosine"` (MMCosine) W has no bias and
    `fused_parts[m] = scale · cos(f_m, rows of W_m)`, each modality's block normalised on its own.
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_classes: int,
        *,
        classifier: str = "linear",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        self.modalities = modalities
        self.cosine = classifier == "cosine"
        self.scale = cosine_scale
        linear = nn.Linear(dim * len(modalities), num_classes)  # default init over the whole fan-in
        self.weight = nn.Parameter(linear.weight.detach().clone())  # [C, M*D]
        self.bias = None if self.cosine else nn.Parameter(linear.bias.detach().clone())  # [C]
        self.columns = {m: slice(i * dim, (i + 1) * dim) for i, m in enumerate(modalities)}

    def forward(self, encoded: dict[str, EncoderOutput]):
        parts = {}
        for m in self.modalities:
            w_m = self.weight[:, self.columns[m]]  # [C, D]
            f_m = encoded[m].pooled  # [B, D]
            if self.cosine:
                parts[m] = self.scale * F.normalize(f_m, dim=1) @ F.normalize(w_m, dim=1).t()
            else:
                parts[m] = f_m @ w_m.t() + self.bias / len(self.modalities)  # [B, C]
        fused = torch.stack(list(parts.values())).sum(0)  # [B, C]
        return fused, parts

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        return [(self.weight, (slice(None), self.columns[m]))]


class MidMLP(nn.Module):
    """Per-modality `Linear(D, H)` summed (+ one shared bias), ReLU, Dropout, `Linear(H, H)`, ReLU,
    Dropout, `Linear(H, C)`. H = 64 in the paper."""

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_classes: int,
        *,
        hidden: int = 64,
        dropout: float = 0.1,
        classifier: str = "linear",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        self.modalities = modalities
        self.inputs = nn.ModuleDict({m: nn.Linear(dim, hidden, bias=False) for m in modalities})
        self.input_bias = nn.Parameter(torch.zeros(hidden))
        self.mlp = nn.Sequential(
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            _output_layer(hidden, num_classes, classifier, cosine_scale),
        )

    def forward(self, encoded: dict[str, EncoderOutput]):
        h = sum(self.inputs[m](encoded[m].pooled) for m in self.modalities) + self.input_bias  # [B, H]
        return self.mlp(h), {}

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        return [(self.inputs[m].weight, None)]


class FiLM(nn.Module):
    """Feature-wise linear modulation: the first modality (audio) gives γ, β = split(Linear(a)); the
    second (video) is modulated, `h = γ ⊙ v + β`; then `Linear(D, C)`."""

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_classes: int,
        *,
        classifier: str = "linear",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        if len(modalities) != 2:
            raise ValueError(f"fusion='film' needs exactly 2 modalities, got {modalities}")
        self.modulator, self.modulated = modalities
        self.film = nn.Linear(dim, 2 * dim)
        self.out = _output_layer(dim, num_classes, classifier, cosine_scale)

    def forward(self, encoded: dict[str, EncoderOutput]):
        gamma, beta = self.film(encoded[self.modulator].pooled).chunk(2, dim=1)  # 2 x [B, D]
        return self.out(gamma * encoded[self.modulated].pooled + beta), {}

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        if ownership == "authors":
            return []
        return [(self.film.weight, None)] if m == self.modulator else []


class Gated(nn.Module):
    """Gated fusion: `h = σ(W_a · a) ⊙ (W_v · v)`, then `Linear(D, C)`; the first modality (audio) gates."""

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_classes: int,
        *,
        classifier: str = "linear",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        if len(modalities) != 2:
            raise ValueError(f"fusion='gated' needs exactly 2 modalities, got {modalities}")
        self.gate_modality, self.value_modality = modalities
        self.gate = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = _output_layer(dim, num_classes, classifier, cosine_scale)

    def forward(self, encoded: dict[str, EncoderOutput]):
        gate = torch.sigmoid(self.gate(encoded[self.gate_modality].pooled))  # [B, D]
        return self.out(gate * self.value(encoded[self.value_modality].pooled)), {}

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        layer = {self.gate_modality: self.gate, self.value_modality: self.value}.get(m)
        if layer is None:
            return []
        if ownership == "authors":
            return [(layer.weight, None), (layer.bias, None)]
        return [(layer.weight, None)]


def entropy_weights(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLA's test-time fusion weights: with e_m the entropy of softmax(logits_m) per sample,
    λ_m = exp(max_j e_j − e_m) / Σ_k exp(max_j e_j − e_k) = softmax over modalities of −e. `{m: [B, 1]}`."""
    names = list(logits)
    entropy = torch.stack(
        [-(F.softmax(x, dim=1) * F.log_softmax(x, dim=1)).sum(1) for x in logits.values()], dim=1
    )  # [B, M]
    weights = torch.softmax(-entropy, dim=1)  # [B, M]; the max shift cancels in the ratio
    return {m: weights[:, i : i + 1] for i, m in enumerate(names)}


class SharedHead(nn.Module):
    """MLA's head: one `Linear(D, C)` shared by every modality, `parts[m] = f_m · Wᵀ + b`; the fused output
    weighs the parts by their prediction uncertainty (`entropy_weights`), `fused = Σ_m λ_m · parts[m]`."""

    def __init__(self, modalities: tuple[str, ...], dim: int, num_classes: int):
        super().__init__()
        self.modalities = modalities
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, encoded: dict[str, EncoderOutput]):
        parts = {m: self.linear(encoded[m].pooled) for m in self.modalities if m in encoded}  # {m: [B, C]}
        weights = entropy_weights({m: p.detach() for m, p in parts.items()})  # {m: [B, 1]}
        fused = torch.stack([weights[m] * parts[m] for m in parts]).sum(0)  # [B, C]
        return fused, parts

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        return []  # shared by every modality


class PerModalityCosine(nn.Module):
    """Base of MMCosine's symmetric FiLM and Gated heads (the MMCosine authors' `fusion_modules.py`):
    each modality's modulated feature h_m gets its own half of the output layer, normalised on its own,
    `fused_parts[m] = s · cos(h_m, rows of W_m)`, `fused = Σ_m fused_parts[m]`; no bias."""

    def __init__(self, modalities: tuple[str, ...], dim: int, num_classes: int, *, cosine_scale: float):
        super().__init__()
        if len(modalities) != 2:
            raise ValueError(f"this fusion needs exactly 2 modalities, got {modalities}")
        self.modalities = modalities
        self.scale = cosine_scale
        self.out = nn.ParameterDict({m: nn.Parameter(torch.empty(num_classes, dim)) for m in modalities})
        full = torch.empty(num_classes, 2 * dim)
        nn.init.xavier_uniform_(full)  # one layer over both halves, as the authors' fc_out
        for i, m in enumerate(modalities):
            self.out[m].data.copy_(full[:, i * dim : (i + 1) * dim])

    def modulated(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, encoded: dict[str, EncoderOutput]):
        first, second = self.modalities
        h = dict(zip(self.modalities, self.modulated(encoded[first].pooled, encoded[second].pooled)))
        parts = {m: self.scale * F.normalize(h[m], dim=1) @ F.normalize(self.out[m], dim=1).t() for m in h}
        return parts[first] + parts[second], parts  # [B, C], {m: [B, C]}

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        return []  # every layer mixes both modalities


class SymmetricFiLM(PerModalityCosine):
    """MMCosine's FiLM: each modality modulates the other, `h_a = γ_v ⊙ a + β_v`, `h_v = γ_a ⊙ v + β_a`
    (γ_m, β_m = split(Linear_m(m)))."""

    def __init__(self, modalities, dim, num_classes, *, cosine_scale: float = 10.0):
        super().__init__(modalities, dim, num_classes, cosine_scale=cosine_scale)
        self.film = nn.ModuleDict({m: nn.Linear(dim, 2 * dim) for m in modalities})

    def modulated(self, a, v):
        first, second = self.modalities
        gamma_a, beta_a = self.film[first](a).chunk(2, dim=1)  # 2 x [B, D]
        gamma_v, beta_v = self.film[second](v).chunk(2, dim=1)
        return gamma_v * a + beta_v, gamma_a * v + beta_a


class SymmetricGated(PerModalityCosine):
    """MMCosine's Gated: each modality gates the other, `h_a = σ(W_v v) ⊙ W_a a`, `h_v = σ(W_a a) ⊙ W_v v`."""

    def __init__(self, modalities, dim, num_classes, *, cosine_scale: float = 10.0):
        super().__init__(modalities, dim, num_classes, cosine_scale=cosine_scale)
        self.project = nn.ModuleDict({m: nn.Linear(dim, dim) for m in modalities})

    def modulated(self, a, v):
        first, second = self.modalities
        pa, pv = self.project[first](a), self.project[second](v)  # [B, D] each
        return torch.sigmoid(pv) * pa, torch.sigmoid(pa) * pv


class TransformerFusion(nn.Module):
    """TF: a learned modality token is added to every token of that modality's unpooled sequence, a
    learned CLS token is prepended, a 2-layer Transformer encoder runs over `[CLS, tokens of m_1, ...]`
    with padded tokens masked, and the CLS output goes through `Linear(D, C)`. No positional encoding
    (as in the paper's description: class and modality tokens only)."""

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_classes: int,
        *,
        layers: int = 2,
        heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        classifier: str = "linear",
        cosine_scale: float = 10.0,
    ):
        super().__init__()
        self.modalities = modalities
        self.modality_tokens = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(dim) * 0.02) for m in modalities}
        )
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = _output_layer(dim, num_classes, classifier, cosine_scale)

    def forward(self, encoded: dict[str, EncoderOutput]):
        first = encoded[self.modalities[0]].sequence
        b = first.shape[0]
        tokens = [self.cls.expand(b, 1, -1)]  # [B, 1, D]
        valid = [torch.ones(b, 1, dtype=torch.bool, device=first.device)]
        for m in self.modalities:
            e = encoded[m]
            tokens.append(e.sequence + self.modality_tokens[m])  # [B, L_m, D]
            valid.append(
                e.mask
                if e.mask is not None
                else torch.ones(e.sequence.shape[:2], dtype=torch.bool, device=first.device)
            )
        x = self.transformer(torch.cat(tokens, 1), src_key_padding_mask=~torch.cat(valid, 1))  # [B, L, D]
        return self.out(self.norm(x[:, 0])), {}

    def modality_grad_slices(self, m: str, ownership: str = "input"):
        if ownership == "authors":
            return []
        return [(self.modality_tokens[m], None)]


def build_fusion(
    name: str,
    *,
    modalities: tuple[str, ...],
    dim: int,
    num_classes: int,
    sizes: dict,
    classifier: str = "linear",
    cosine_scale: float = 10.0,
    cosine_head: str = "per-modality",
) -> nn.Module:
    """One of `FUSIONS`, sized by `sizes` (see `mlb.models.encoders.SIZES`).

    cosine_head (with classifier="cosine"): "per-modality" builds FiLM and Gated as the MMCosine
    authors' symmetric heads with one normalised output half per modality (`SymmetricFiLM`,
    `SymmetricGated`); "fused" keeps the paper's FiLM / Gated with one cosine output layer on the fused
    vector. Late-Linear is per-modality either way; Mid-MLP and TF always get one cosine output layer
    (the authors have no version of them)."""
    if classifier == "shared":
        if name != "late-linear":
            raise ValueError(
                f"classifier='shared' (MLA's shared head) replaces late-linear only, got fusion={name!r}"
            )
        return SharedHead(modalities, dim, num_classes)
    if cosine_head not in COSINE_HEADS:
        raise ValueError(f"cosine_head must be one of {list(COSINE_HEADS)}, got {cosine_head!r}")
    if classifier == "cosine" and cosine_head == "per-modality" and name in ("film", "gated"):
        symmetric = SymmetricFiLM if name == "film" else SymmetricGated
        return symmetric(modalities, dim, num_classes, cosine_scale=cosine_scale)
    common = {"classifier": classifier, "cosine_scale": cosine_scale}
    if name == "late-linear":
        return LateLinear(modalities, dim, num_classes, **common)
    if name == "mid-mlp":
        return MidMLP(
            modalities, dim, num_classes, hidden=sizes["fusion_hidden"], dropout=sizes["dropout"], **common
        )
    if name == "film":
        return FiLM(modalities, dim, num_classes, **common)
    if name == "gated":
        return Gated(modalities, dim, num_classes, **common)
    if name == "tf":
        return TransformerFusion(
            modalities,
            dim,
            num_classes,
            layers=sizes["tf_layers"],
            heads=sizes["heads"],
            ffn_dim=sizes["ffn_dim"],
            dropout=sizes["dropout"],
            **common,
        )
    raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {name!r}")
