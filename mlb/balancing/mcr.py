"""MCR: the Multimodal Competition Regularizer (Kontras, Strypsteen, Chatzichristos, Liang, Blaschko & De Vos,
"Balancing Multimodal Training Through Game-Theoretic Regularization", NeurIPS 2025, arXiv 2411.07335).

The loss of one step, modalities m = 1..M, encoder outputs e_m, fused logits f = f(e_1, ..., e_M):

    L = CE(f, y) + w_uni · Σ_m CE(head_m(e_m), y) + λ_M · L_MIPD + λ_C · L_Con + λ_CEB · L_CEB

- L_MIPD, the game over the unique information I(X_i; Y | X_rest), estimated with latent permutations.
  Each step draws S permutations π_1..π_S of the batch (one set, used for every modality). Perturbing
  modality i gives, on S·B rows, f̃_i = f(e_1, .., e_i[π], .., e_M) (e_i's rows permuted, the others'
  repeated in order) and the divergence from the unperturbed prediction (f repeated S times)

      J_i = JSD(softmax f̃_i ‖ softmax f) = ½ KL(P ‖ (P+Q)/2) + ½ KL(Q ‖ (P+Q)/2),  mean over the S·B rows.

  Each modality is a player: encoder j and its own part of the fusion head (see "Players" below)
  descend  −∇_j J_j − k · Σ_{i≠j} ∇_j J_i  (the paper's ∇θ_j L_MIPD = λ_M (∇θ_j L_MIPD_j + k ∇θ_j L_MIPD_i)
  with L_MIPD_i = −J_i): with k = −1 ("greedy", the authors' setting) player j raises the divergence that
  destroying its own modality causes and lowers the one that destroying the others' causes (it must
  also do well without them); k = 0 ("independent") keeps only the first; k = +1 ("collaborative")
  makes every player raise every J_i. The parts no player owns (the rest of the fusion head, and f
  itself through the unperturbed pass: the whole model) receive σ_i ∇J_i, σ_i the sum of the
  coefficients the authors' passes give J_i: M − 2 for greedy (0 with two modalities: those parts get
  no gradient from L_MIPD), −1 for independent and collaborative. The value logged as `mipd` is
  Σ_i σ_i J_i, the authors' regulariser value (0 for greedy with two modalities: its gradient is not).
- L_Con (shared information, I(X_1; X_2; Y)): the supervised NT-Xent loss of pytorch-metric-learning's
  `NTXentLoss(temperature=τ)` over the M·B L2-normalised pooled features of every modality, labels
  repeated: for every ordered pair (a, p), a ≠ p, with the same label,
      −log( e^{s_ap/τ} / (e^{s_ap/τ} + Σ_{n: y_n ≠ y_a} e^{s_an/τ}) ),   s = cosine similarity,
  averaged over those pairs (0 when the batch has no such pair or no pair of different labels). Pairs
  within a modality count, and the other positives of an anchor are not in its denominator.
- L_CEB (task-irrelevant shared information, the conditional entropy bottleneck): the mean squared
  error between the concatenated pooled features [e_1, .., e_M] and g(sg[f]), g the decoder
  Linear(C, D) → ReLU → Linear(D, M·D) without biases (`model.prediction_decoder`, built when
  λ_CEB > 0 through `model_options()`); both the encoders and g learn from it, f does not.

Players: the authors detach the other player's branch inside the fusion head. For their "linear" and
"nonlinear" heads (mlbpipe's Late-Linear and Mid-MLP) they detach after the per-modality projection, so
player j owns its columns of the Late-Linear weight / its first Mid-MLP layer (`modality_grad_slices(j,
"input")`) and the shared bias belongs to no player; for FiLM, Gated and TF they detach the features
before the head, so every fusion parameter is shared. That is the rule here.

Authors' code (kkontras/MCR at 338d370; the snapshot could not be fetched here, so places are given by
file and symbol, and by line for the configs and run.sh):
- `models/MCR_Models.py`, `MCR_Model.forward`: the training-mode pass (fused logits, unimodal heads
  attached: `shufflegradmulti: true`), then `shuffle_data`: a second pass of both encoders in eval mode,
  with gradients (`bias_infusion.training_mode` unset), `shuffle_ids` with `num_samples` permutations
  (`torch.randperm(batch_size)`, CPU), the same ones for both modalities; then `_forward_main` on (sa, nv)
  with `detach_v` and with `detach_a`, on (na, sv) likewise, and on both without detaching; `n_pred` is the
  training-mode fused prediction repeated, not detached. With `bias_infusion.lib > 0` also
  `CMI_yz_Loss = lib · MSE(cat(f_a, f_v), fc_yz(pred.detach()))`.
- `agents/general_agent/helpers/Bias_Infusion.py`, `Bias_Infusion_MCR.get_perturbed_gradients`
  (`js_divergence`: softmax of the logits clamped to ±1e7, probabilities and mixture clamped to
  [1e-20, 1], `F.kl_div(..., reduction="batchmean")`) and `before_backward`: greedy
  reg = l·(−JSD(sa_detv, n) + JSD(sa_deta, n) − JSD(sv_deta, n) + JSD(sv_detv, n)), ind
  l·(−JSD(sa_detv, n) − JSD(sv_deta, n)), colab l·(−JSD(sa, n) − JSD(sv, n)); `nt_xent_loss` (features
  "c", "g" of the training pass, labels, temperature 0.5); `agents/general_agent/helpers/Trainer.py`,
  `train_one_step`: CE(combined) + multil · (CE(c) + CE(g)) + the model's `losses`.
- Settings (`run.sh`, `train.py` maps `--l` → `bias_infusion.l`, `--multil` → the unimodal CE weights,
  `--contr_coeff`, `--lib`, `--num_samples`, `--reg_by`, `--pre` → `pretrainedEncoder.use`):
  CREMA-D ResNet (run.sh:18, configs/CREMA_D/release/res/MCR.json): λ_M 0.1, w_uni 0.01, S 32, greedy,
  λ_C 1, λ_CEB 0 (no `--lib`; `--lib 1` is an ablation, run.sh:27), τ 0.5, Adam lr 1e-4, wd 1e-4,
  batch 32, both encoders and their unimodal heads started from unimodal checkpoints (`--pre`;
  MCR.json:62, 67).
  CREMA-D Conformer (run.sh:50, configs/CREMA_D/release/vit/MCR.json): λ_M 0.1, w_uni 1, S 32, greedy,
  λ_C 1, λ_CEB 1, lr 5e-5, wd 5e-6, batch 8, from scratch (no `--pre`).
  AVE ResNet (run.sh:68): λ_M 0.01, w_uni 0.01, S 32, greedy, λ_C 1, lr 1e-4, wd 1e-4, batch 32, `--pre`.
  UCF-51 ResNet (run.sh:104): λ_M 0.001, w_uni 0.1, S 32, greedy, λ_C 1, lr 1e-4, wd 1e-4, batch 32, `--pre`.
  Optimiser: Adam (β 0.9, 0.999; eps 1e-7 in `agents/general_agent/helpers/Loader.py`,
  `load_models_n_optimizer`), a 780-step constant warm-up then `CosineAnnealingWarmRestarts(T_0=4, T_mult=2)`
  (configs/CREMA_D/default_config_cremad_res.json:26, `Loader.get_scheduler`), checkpoint selected on
  validation accuracy, stopped after 25 validations without improvement (MCR.json:9).
  The class defaults are CREMA-D ResNet's; the other columns' settings are `method_defaults` material.

Cost per step: M fusion-head passes on S·B rows (the encoders are not run again for them), plus, with
`feature_pass="eval"` (the authors'), one more forward and backward of every encoder in eval mode;
`feature_pass="shared"` permutes the training pass's encoder outputs instead (no extra encoder pass;
what the authors' `training_mode: true` computes, less its second dropout draw and BatchNorm update).
On one CPU thread (raw path, size "small", batch 16, S 32) a step took 2.5x a Multi-Loss step with
"eval" and 1.2x with "shared".

Logs per step: `loss` (the total), `loss_fused`, `loss_<m>` (unweighted unimodal CEs), `jsd_<m>` (J_m),
`mipd` (Σ σ_i J_i), `contrastive` (L_Con), `ceb` (L_CEB, when λ_CEB > 0).

Differences from the authors' code:
- Their release never adds the regulariser: the released configs name `"method": "ShuffleGradFinal"`
  (CREMA-D, UCF; configs/CREMA_D/release/res/MCR.json:38), which `pick_bias_infuser` does not know, so
  `General_Bias_Infusion` runs and the loss is CE(fused) + multil · ΣCE(unimodal) (+ the L_CEB term);
  `Bias_Infusion_MCR.before_backward` (AVE's `"method": "MCR"`) computes reg_term and the contrastive
  term but returns `total` unchanged, and its `reg_by` branches are named `dist_pred_cjsd` /
  `dist_pred_max_cjsd` / `dist_pred_all_max_cjsd` while run.sh passes `greedy`. No config sets
  `bias_infusion.shuffle_type`, which `shuffle_ids` reads (an EasyDict: AttributeError at the first
  step). Here the terms are added as the paper states and as the
  authors' later copy adds them (kkontras/SynIB `src/synib/training/pipeline/helpers/Bias_Infusion.py`,
  `Bias_Infusion_MCR.before_backward`: `total + reg_term`, `total + contr_coeff · cca`, `regby` greedy /
  ind / colab), with `shuffle_type="rand"` (their earlier runner's setting): S random permutations,
  fixed points allowed.
- M fusion-head passes per step (one per perturbed modality) instead of their six (for each perturbed
  modality one pass per player with the other detached, and one undetached pass, whatever the game):
  the players' gradients are routed with gradient scales on the pass's inputs and on the fusion head's
  parameters (`torch.func.functional_call`), which gives their gradients exactly when the fusion head
  has no active dropout. With dropout (Mid-MLP, TF at sizes above
  "tiny") their variant passes draw separate masks; here one mask serves every player.
- Their encoders (and unimodal heads) start from unimodal checkpoints (`--pre`) on CREMA-D ResNet, AVE
  and UCF; a balancer cannot do that: mlbpipe's trainer starts every method from scratch.
- Under torchrun each rank permutes within its own share of the batch; L_Con is computed over the
  global batch (the other ranks' features and labels are gathered, detached: `reduced_statistics`), and
  each rank's term is weighted so that the gradients summed over the ranks are the global loss's.
- M > 2: the game above for every modality (σ_i = M − 2 for greedy); the authors' three-modality
  variant (`Bias_Infusion_MCR3D`) was not reproduced.
- A batch of one clip: their `shuffle_ids` loops forever (it wants two valid rows); here the one
  permutation is the identity.
- The divergences and the contrastive loss are computed in float32 under autocast. A NaN divergence
  makes the step non-finite (the trainer skips it) instead of raising.
- Their NT-Xent adds `finfo.tiny` (older versions 1e-20) inside the log; here the same quantity is
  softplus(LSE_neg − s), equal to within that term.
- The L_CEB decoder is part of the model (`build_model(prediction_decoder=True)`), trained by the run's
  optimiser as theirs is.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlb.balancing.base import Balancer, unimodal_losses, unwrap
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.encoders import EncoderOutput
from mlb.world import World

GAMES = ("greedy", "independent", "collaborative")  # the paper's k = -1, 0, +1
FEATURE_PASSES = ("eval", "shared")
# fusion heads whose per-modality projection belongs to its modality's player (the authors' "linear" and
# "nonlinear" heads detach after it); in every other head all parameters are shared
OWNED_FUSIONS = frozenset({"late-linear", "mid-mlp"})
LOGIT_CLIP = 1e7  # the authors' clamp of the logits before the softmax
PROB_FLOOR = 1e-20  # the authors' clamp of the probabilities and of their mixture


# ---- pure math ---------------------------------------------------------------------------------------
def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 when it is half precision (autocast), else unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The authors' Jensen-Shannon divergence of softmax(p) and softmax(q), mean over the rows.
    `[R, C]`, `[R, C]` → 0-d."""
    p = torch.softmax(at_least_fp32(p_logits).clamp(-LOGIT_CLIP, LOGIT_CLIP), dim=1)  # [R, C]
    q = torch.softmax(at_least_fp32(q_logits).clamp(-LOGIT_CLIP, LOGIT_CLIP), dim=1)
    log_mix = (0.5 * (p + q)).clamp(PROB_FLOOR, 1.0).log()  # [R, C]
    p, q = p.clamp(PROB_FLOOR, 1.0), q.clamp(PROB_FLOOR, 1.0)
    return 0.5 * (F.kl_div(log_mix, p, reduction="batchmean") + F.kl_div(log_mix, q, reduction="batchmean"))


def nt_xent(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised NT-Xent (pytorch-metric-learning's `NTXentLoss`): `[N, D]` features, `[N]` labels → 0-d.

    Mean over the ordered same-label pairs (a, p), a ≠ p, of −log(e^{s_ap/τ} / (e^{s_ap/τ} + Σ_n e^{s_an/τ})),
    n over the rows labelled differently from a, s the cosine similarity; 0 without such pairs."""
    z = F.normalize(at_least_fp32(features), dim=1)  # [N, D]
    sim = z @ z.t() / temperature  # [N, N]
    same = labels[:, None] == labels[None, :]  # [N, N]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    if not bool(positive.any()) or not bool(negative.any()):
        return sim.new_zeros(())
    # log Σ_n e^{s_an}; an anchor without negatives gets the dtype's minimum: its pairs cost softplus(-inf)
    lse = torch.logsumexp(sim.masked_fill(~negative, torch.finfo(sim.dtype).min), dim=1)  # [N]
    return F.softplus(lse[:, None] - sim)[positive].mean()  # −log(e^s / (e^s + e^lse)) = softplus(lse − s)


def game_scales(game: str, perturbed: str, modalities: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """`({player: scale}, shared scale)`: what multiplies ∇J_i on each player's parameters and on the shared
    ones when modality `perturbed` (i) is permuted (module docstring)."""
    others, shared = {
        "greedy": (1.0, len(modalities) - 2.0),  # -∇J_i for i, +∇J_i for every other player
        "independent": (0.0, -1.0),  # only i: -∇J_i
        "collaborative": (-1.0, -1.0),  # one pass through every player: -∇J_i everywhere
    }[game]
    return {m: (-1.0 if m == perturbed else others) for m in modalities}, shared


def scale_grad(t: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    """`t`, whose gradient is multiplied by `k` (a number, or a tensor of t's shape) on the way back."""
    if not t.requires_grad:
        return t
    if not torch.is_tensor(k):
        if k == 1.0:
            return t
        if k == 0.0:
            return t.detach()
    view = t.view_as(t)
    view.register_hook(lambda g: g * k)
    return view


def draw_permutations(batch_size: int, samples: int) -> torch.Tensor:
    """`[S, B]` permutations of the batch rows, each `torch.randperm(B)` on the CPU generator (as theirs)."""
    return torch.stack([torch.randperm(batch_size) for _ in range(samples)])


def permuted_inputs(
    encoded: dict[str, EncoderOutput],
    perturbed: str,
    perms: torch.Tensor,
    scales: dict[str, float],
    with_sequences: bool,
) -> dict[str, EncoderOutput]:
    """The fusion head's inputs on S·B rows: modality `perturbed`'s rows permuted by each of `perms` `[S, B]`,
    every other modality's repeated in order; each modality's gradient scaled by `scales[m]`. Sequences and
    masks are gathered only `with_sequences` (the TF head reads them; the others read the pooled features)."""
    samples, batch = perms.shape
    device = next(iter(encoded.values())).pooled.device
    moved = perms.reshape(-1).to(device)  # [S·B]
    kept = torch.arange(batch, device=device).repeat(samples)  # [S·B]
    inputs = {}
    for m, e in encoded.items():
        rows = moved if m == perturbed else kept
        sequence, mask = e.sequence, e.mask
        if with_sequences:
            sequence = scale_grad(e.sequence[rows], scales[m])  # [S·B, L, D]
            mask = None if e.mask is None else e.mask[rows]  # [S·B, L]
        inputs[m] = EncoderOutput(scale_grad(e.pooled[rows], scales[m]), sequence, mask)  # pooled [S·B, D]
    return inputs


def routed_fusion(
    model, inputs: dict[str, EncoderOutput], scales: dict[str, float], shared: float
) -> torch.Tensor:
    """The fusion head on `inputs` with each player's own parameters' gradient scaled by `scales[player]` and
    every other fusion parameter's by `shared`: `[R, C]` fused logits."""
    fusion = model.fusion
    whole: dict[int, float | torch.Tensor] = {}
    if model.fusion_name in OWNED_FUSIONS:
        for m, k in scales.items():
            for p, index in fusion.modality_grad_slices(m, "input"):
                if index is None:
                    whole[id(p)] = k
                    continue
                if not torch.is_tensor(whole.get(id(p))):
                    whole[id(p)] = torch.full(p.shape, shared, dtype=p.dtype, device=p.device)
                whole[id(p)][index] = k  # e.g. Late-Linear's columns of m
    params = {name: scale_grad(p, whole.get(id(p), shared)) for name, p in fusion.named_parameters()}
    fused, _ = functional_call(fusion, params, (inputs,))
    return fused


def global_rows(world: World, rows: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """`(every rank's rows [N, F] in rank order, this rank's n, N)`: the other ranks' rows detached, this
    rank's attached; on one process `(rows, n, n)`. Two collectives."""
    n = rows.shape[0]
    if not world.distributed:
        return rows, n, n
    counts = torch.zeros(world.size, dtype=torch.float64, device=rows.device)
    counts[world.rank] = n
    counts = world.sum(counts)  # [W]
    start, total = int(counts[: world.rank].sum()), int(counts.sum())
    placed = rows.new_zeros(total, rows.shape[1])
    placed[start : start + n] = rows.detach()
    everyone = world.sum(placed)  # [N, F]
    return torch.cat([everyone[:start], rows, everyone[start + n :]]), n, total


# ---- the method --------------------------------------------------------------------------------------
class MCR(Balancer):
    """The Multimodal Competition Regularizer (see the module docstring).

    Keyword arguments (the authors' CREMA-D ResNet settings):
    mipd_weight: λ_M, 0.1 (`--l`).
    unimodal_weight: w_uni, the weight of each unimodal cross-entropy, 0.01 (`--multil`).
    contrastive_weight: λ_C, 1.0 (`--contr_coeff`); 0 turns L_Con off.
    ceb_weight: λ_CEB, 0.0 (`--lib`; 1 on their Conformer runs); > 0 adds the decoder to the model.
    samples: S permutations per step, 32 (`--num_samples`).
    game: "greedy" (k = -1, `--reg_by greedy`), "independent" (k = 0) or "collaborative" (k = +1).
    temperature: τ of L_Con, 0.5.
    feature_pass: "eval" (the authors': the permuted features come from a second, eval-mode pass of the
        encoders, with gradients) or "shared" (the training pass's encoder outputs; no extra encoder pass).
    """

    name: ClassVar[str] = "mcr"
    uses_unimodal_heads: ClassVar[bool] = True
    # L_Con's features and labels are those of the global batch (gathered over the training processes)
    reduced_statistics: ClassVar[tuple[str, ...]] = ("contrastive_features",)
    # the authors' tuned settings span λ_M 0.001-0.1 and w_uni 0.001-1 across their corpora; λ_C is 1 in all
    search_space: ClassVar[SearchSpace] = {
        "mipd_weight": FloatRange(1e-3, 1.0, log=True),
        "unimodal_weight": FloatRange(1e-3, 1.0, log=True),
        "contrastive_weight": FloatRange(0.1, 3.0, log=True),
    }

    def __init__(
        self,
        *,
        mipd_weight: float = 0.1,
        unimodal_weight: float = 0.01,
        contrastive_weight: float = 1.0,
        ceb_weight: float = 0.0,
        samples: int = 32,
        game: str = "greedy",
        temperature: float = 0.5,
        feature_pass: str = "eval",
    ):
        weights = {
            "mipd_weight": mipd_weight,
            "unimodal_weight": unimodal_weight,
            "contrastive_weight": contrastive_weight,
            "ceb_weight": ceb_weight,
        }
        for key, value in weights.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"mcr {key} must be a finite number >= 0, got {value!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"mcr samples must be an integer >= 1, got {samples!r}")
        if game not in GAMES:
            raise ValueError(f"mcr game must be one of {list(GAMES)}, got {game!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"mcr temperature must be a finite number > 0, got {temperature!r}")
        if feature_pass not in FEATURE_PASSES:
            raise ValueError(f"mcr feature_pass must be one of {list(FEATURE_PASSES)}, got {feature_pass!r}")
        self.mipd_weight = float(mipd_weight)
        self.unimodal_weight = float(unimodal_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.ceb_weight = float(ceb_weight)
        self.samples = samples
        self.game = game
        self.temperature = float(temperature)
        self.feature_pass = feature_pass

    def model_options(self) -> dict[str, Any]:
        return {"prediction_decoder": True} if self.ceb_weight > 0 else {}

    def check_model(self, model) -> None:
        super().check_model(model)
        if self.ceb_weight > 0 and getattr(unwrap(model), "prediction_decoder", None) is None:
            raise ValueError(
                f"method 'mcr' with ceb_weight={self.ceb_weight:g} needs the model's L_CEB decoder: build it "
                f"with MCR(...).model_options() ({self.model_options()})"
            )

    # ---- the terms -------------------------------------------------------------------------------
    def permuted_features(self, model, batch: dict, out) -> dict[str, EncoderOutput]:
        """The encoder outputs the permutations act on: a second pass in eval mode, with gradients (the
        authors'), or the training pass's (`feature_pass="shared"`)."""
        if self.feature_pass == "shared":
            return out.encoded
        was_training = model.training
        model.eval()
        try:
            return model.encode(batch)
        finally:
            model.train(was_training)

    def mipd(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(term to back-propagate, {m: J_m})`: the term's value is Σ_i σ_i J_i, its gradient the game's."""
        encoded = self.permuted_features(model, batch, out)
        perms = draw_permutations(out.fused.shape[0], self.samples)  # [S, B]
        clean = out.fused.repeat(self.samples, 1)  # [S·B, C]: the unperturbed prediction, not detached
        term, divergences = at_least_fp32(out.fused.new_zeros(())), {}
        for i in model.modalities:
            players, shared = game_scales(self.game, i, model.modalities)
            inputs = permuted_inputs(encoded, i, perms, players, with_sequences=model.fusion_name == "tf")
            j = js_divergence(routed_fusion(model, inputs, players, shared), scale_grad(clean, shared))
            term = term + j + (shared - 1.0) * j.detach()  # value σ_i J_i, gradient routed
            divergences[i] = j.detach()
        return term, divergences

    def contrastive(self, model, out, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(term to back-propagate, L_Con)` over the global batch. The term's value is L_Con, its gradient
        N / n times L_Con's through this rank's rows: the trainer's n / N weighting of each rank's loss then
        sums to L_Con in value and in gradient over the ranks (on one process: L_Con itself)."""
        mods = model.modalities
        feats = [at_least_fp32(out.features[m]) for m in mods]
        rows = torch.cat(feats + [label[:, None].to(feats[0].dtype)], dim=1)
        everyone, n, total = global_rows(self.world, rows)  # [N, M·D + 1]
        dim = out.features[mods[0]].shape[1]
        features = torch.cat([everyone[:, k * dim : (k + 1) * dim] for k in range(len(mods))])  # [M·N, D]
        labels = everyone[:, -1].round().long().repeat(len(mods))  # [M·N]
        value = nt_xent(features, labels, self.temperature)
        if total == n:
            return value, value
        return value * (total / n) - value.detach() * (total / n - 1.0), value

    def ceb(self, model, out) -> torch.Tensor:
        """L_CEB: MSE between the concatenated pooled features and the decoder's reading of sg[fused]."""
        target = torch.cat([out.features[m] for m in model.modalities], dim=1)  # [B, M·D]
        return F.mse_loss(target, model.prediction_decoder(out.fused.detach()))

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        inner = unwrap(model)
        label = batch["label"]
        loss_fused = F.cross_entropy(out.fused, label)
        per_modality = unimodal_losses(out, label)  # {m: scalar}
        total = loss_fused + self.unimodal_weight * sum(per_modality.values())
        values: dict[str, torch.Tensor] = {"loss_fused": loss_fused} | {
            f"loss_{m}": v for m, v in per_modality.items()
        }
        if self.mipd_weight > 0:
            term, divergences = self.mipd(inner, batch, out)
            total = total + self.mipd_weight * term
            values |= {"mipd": term.detach()} | {f"jsd_{m}": j for m, j in divergences.items()}
        if self.contrastive_weight > 0:
            term, value = self.contrastive(inner, out, label)
            total = total + self.contrastive_weight * term
            values["contrastive"] = value.detach()
        if self.ceb_weight > 0:
            if getattr(inner, "prediction_decoder", None) is None:
                self.check_model(inner)  # raises, naming the fix
            value = self.ceb(inner, out)
            total = total + self.ceb_weight * value
            values["ceb"] = value.detach()
        # every term's value is its loss's (the routing and the rank weighting change gradients only)
        return total, self.log_values({"loss": total.detach()} | values)
