"""ReconBoost (Hua et al., ICML 2024, "ReconBoost: Boosting Can Achieve Modality Reconcilement"), as the
authors' code (huacong/ReconBoost at 14ab57a, `train.py`, `models/dynamic_net.py`, `schedule.py`)
computes it, on the Late-Linear model.

The boosting ensemble. With fusion "late-linear", `fused = Σ_m fused_parts[m]`, `fused_parts[m] =
f_m · W_mᵀ + b / M`: learner m is encoder m with its columns W_m of the fusion weight, and the ensemble
is their sum (the authors' `DynamicNet`, the sum of the newest learner of every modality, times
`boost_rate`). The shared bias b stands for the authors' shared classifier (`--common_space`: every
learner ends in the same `net_ensemble.head`, which both of their stages train), so it is trained in
every update.

Schedule (`reconboost_phase`; one epoch = one pass over the training set, counted in `on_epoch_end`
and saved in `state_dict`). Stage s lasts `boost_epochs + ensemble_epochs` epochs (the authors'
`--epochs_per_stage 4`, `--correct_epoch 4`) and boosts modality m = modalities[s mod M] (their
`schedule.py` "fixed_mode": audio, visual, audio, ... ; with M = 3 the cycle m0, m1, m2, m0, ... in
`model.modalities` order, as their MOSEI cycle text, visual, audio):
1. boosting epochs (`train.py` l. 296-356): only learner m is trained (the others get `p.grad = None`,
   so Adam skips them; their Late-Linear columns, which live in the same tensor as W_m, are put back
   exactly after `optimizer.step()`, with their Adam moments: `FrozenColumns`). Loss, per sample i with
   C classes, z_m = fused_parts[m] (`train.py` l. 339-351):
       ℓ_boost,i = (−w1 · log softmax(z_m)_i[y_i] + w2 · q_i · log softmax(z_m)_i[y_i]) / C
       q_i = softmax(Σ_{k ∈ E, k ≠ m} z_k)_i[y_i]   (detached; the ensemble without m)
   where E is the set of learners boosted in an earlier stage (the authors' `net_ensemble`, which grows
   as stages add their learner; from stage M-1 on it holds every modality). At stage 0, E is empty: the
   authors' ensemble is then the constant c0, a `[B, 1]` tensor whose softmax is 1, so q_i = 1 and
   ℓ_boost,i = −(w1 − w2) · log p_m(y_i) / C. The reconcilement term w2 · q · log p_m lowers the weight
   of the samples the other learners already classify (the paper's KL reconcilement restricted, as
   their code does, to the true class). The loss is mean_i ℓ_boost,i + α · ℓ_GA with, from stage 1 on,
   the memory-consolidation ("GA") term
       ℓ_GA = mean_{i,c} (softmax(z_m)_{i,c} − softmax(z_p)_{i,c})²,   p = modalities[(s − 1) mod M]
   (the learner boosted in the previous stage, the authors' `pre_model`). The authors compute ℓ_GA on
   *detached* softmaxes (`out_obj.detach()`, `pre_out_obj.detach()`, l. 349), so it adds a constant to
   the loss and no gradient; so does BalanceBenchmark (`ReconBoost_trainer.py` l. 344). That is the
   default here too; `ga_gradient=True` lets its gradient reach learner m (the paper's intent).
2. ensemble ("global rectification") epochs (`train.py` l. 366-399): CE(Σ_{k ∈ E'} z_k, y) with E'
   = E plus m (the authors add m to `net_ensemble` before this stage); every learner in E' is trained
   (from stage M-1 on, all of them: the loss is then CE(fused)); learners not yet boosted stay frozen.
Plus the detached unimodal-head probes of `base.probe_loss` in every update (per-head accuracies; no
gradient to an encoder or the fusion head).

Forward passes, as the authors run them (they matter for BatchNorm: every run in train mode moves the
running statistics that eval-mode outputs use). Their training is always in train mode (`to_train()`;
the learners not yet in `net_ensemble` were never put in eval mode), and per update they run:
- boosting epochs: every learner of E except m once (`net_ensemble.forward(data, mask_model=m)`, under
  `torch.no_grad()`), m once (`model(...)`, with gradients), and from stage 1 the previous learner p once
  more (`pre_model(...)` for ℓ_GA, l. 348): p, which is in E, runs twice;
- ensemble epochs: every learner of E' once (`net_ensemble.forward_grad`);
- a learner outside these (at stage 0 every one but m; with M = 3 at stage 1 the third) never runs.
`Phase.forwards` lists these counts. Here every encoder still runs once per update in train mode (the
fusion sum, the probes and `loss_fused` need every modality's features); a learner the authors do not run
has its BatchNorm running statistics (every buffer of its encoder) put back right after its pass, and p
runs a second time without gradients in boosting epochs, that second output being ℓ_GA's target as in
`train.py`. So after any number of updates the running statistics are those of the authors' forward calls
on the same batches and weights; the extra pass costs one gradient-free forward of one encoder per
boosting update from stage 1. The learners this epoch does not train run without gradients (the authors'
`torch.no_grad()` in `DynamicNet.forward`).

Defaults: the authors' (`train.py` l. 59-77, their CREMA-D/AVE commands): weight1 = 5, weight2 = 1,
alpha = 0.5, boost_epochs = 4, ensemble_epochs = 4. BalanceBenchmark (`configs/trainer_config.yaml`):
5, 1, 0.5 with T_epochs = 1 (boost_epochs = ensemble_epochs = 1 here). The MLB authors' runs (their
comparison table): weight1 = 3, weight2 = 1, alpha = 0.5.

Logs per update: `loss` (the method's loss: mean ℓ_boost + α ℓ_GA, or the ensemble CE), `loss_fused`
(CE of the full Late-Linear sum, for reference), `loss_<m>` (probes), `stage`, `boost_modality` (index
of m in `model.modalities`), `boosting` (1 boosting, 0 ensemble), and `loss_boost`, `loss_ga` (boosting
epochs, `loss_ga` from stage 1) or `loss_ensemble`. `on_epoch_end` returns `stage`, `boosting` and
`stage_end` (1 on the last epoch of a stage, where the authors evaluate) for the epoch that ended.

Differences from the authors' code:
- One Adam over every parameter with the trainer's learning-rate schedule, its state kept across
  stages; the authors build a fresh SGD (lr 0.01, momentum 0.9, weight decay 5e-4) for each stage's
  learner and for each ensemble stage, with their own step decay (× 0.1 every 30 stages on CREMA-D).
  A frozen learner is skipped by Adam (`p.grad = None`) and its Late-Linear columns are restored with
  their moments, but the weight tensor's shared Adam step count still advances.
- Learners have their own Late-Linear columns W_m and share only the bias; the authors' learners
  share a whole classifier (`Head`: Linear(512, 256), ReLU, Linear(256, C)) on top of their encoders.
- No learnable `boost_rate`: the ensemble is the plain sum (the authors' scalar starts at 1.0 and is
  trained in the ensemble stage; BalanceBenchmark's starts at 0.01).
- The trainer validates (and selects the best checkpoint) every epoch on the full Late-Linear sum; the
  authors evaluate once per stage, after its ensemble epochs (`stage_end` marks those epochs), on the
  learners added so far: during the first M-1 stages the validation sum here also holds the
  not-yet-boosted learners at their initial weights and initial BatchNorm statistics (never run, as
  in the authors' training).
- From scratch only: the authors' `--use_pretrain` (pre-trained unimodal learners, all in the ensemble
  from stage 0, as BalanceBenchmark always has them) has no counterpart here.
- BalanceBenchmark differs from the authors as follows (this module follows the authors): it boosts
  every modality within each of its epochs (boost m, fine-tune, boost the next, fine-tune), keeps all
  learners in the ensemble from the start, and skips ℓ_GA during its whole first epoch.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from mlb.balancing.base import Balancer, probe_loss, unwrap
from mlb.common.search_space import FloatRange, SearchSpace
from mlb.models.fusion import LateLinear
from mlb.models.model import ModelOutput


# ---- the schedule ------------------------------------------------------------------------------------
class Phase(NamedTuple):
    """Where epoch `epoch` sits in the schedule.

    stage: the stage index s. modality: the learner boosted in stage s. boosting: True in its boosting
    epochs, False in its ensemble epochs. previous: the learner boosted in stage s-1 (the GA target;
    None at stage 0). others: the ensemble the boosted learner is reconciled against (boosted in an
    earlier stage, not m). members: the ensemble of the ensemble epochs (boosted up to stage s).
    trainable: the learners this epoch trains.
    """

    stage: int
    modality: str
    boosting: bool
    previous: str | None
    others: tuple[str, ...]
    members: tuple[str, ...]

    @property
    def trainable(self) -> tuple[str, ...]:
        return (self.modality,) if self.boosting else self.members

    @property
    def forwards(self) -> dict[str, int]:
        """{learner: how many times the authors' code runs its encoder per update} (train mode; a learner
        not listed never runs): `net_ensemble.forward(mask_model=m)`, `model(...)`, `pre_model(...)` in
        boosting epochs, `net_ensemble.forward_grad` in ensemble epochs."""
        if not self.boosting:
            return dict.fromkeys(self.members, 1)
        counts = dict.fromkeys((*self.others, self.modality), 1)
        if self.previous is not None:
            counts[self.previous] += 1  # in E (so already run once), run again for ℓ_GA
        return counts


def reconboost_phase(
    epoch: int, modalities: tuple[str, ...], boost_epochs: int, ensemble_epochs: int
) -> Phase:
    """The stage, boosted modality and phase of 0-based `epoch` (see the module docstring)."""
    if len(modalities) < 2:
        raise ValueError(f"reconboost needs >= 2 modalities, got {modalities}")
    length = boost_epochs + ensemble_epochs
    stage, within = divmod(int(epoch), length)
    n = len(modalities)
    m = modalities[stage % n]
    boosted_before = modalities[: min(stage, n)]  # the authors' net_ensemble when stage s starts
    return Phase(
        stage=stage,
        modality=m,
        boosting=within < boost_epochs,
        previous=None if stage == 0 else modalities[(stage - 1) % n],
        others=tuple(k for k in boosted_before if k != m),
        members=modalities[: min(stage + 1, n)],
    )


# ---- pure math ---------------------------------------------------------------------------------------
def boosting_loss(
    logits: torch.Tensor,
    others: torch.Tensor | None,
    label: torch.Tensor,
    weight1: float,
    weight2: float,
) -> torch.Tensor:
    """Per-sample boosting loss `[B]`: (−w1 log p_m[y] + w2 q[y] log p_m[y]) / C, q = softmax(others)
    detached (q[y] = 1 when `others` is None: the authors' first stage). `logits`, `others`: `[B, C]`."""
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, label[:, None]).squeeze(1)  # [B]
    if others is None:
        q = torch.ones_like(log_p)
    else:
        q = torch.softmax(others.detach().float(), dim=1).gather(1, label[:, None]).squeeze(1)  # [B]
    return (-weight1 * log_p + weight2 * q * log_p) / num_classes


def ga_loss(logits: torch.Tensor, previous: torch.Tensor, *, gradient: bool = False) -> torch.Tensor:
    """Memory consolidation: mean over `[B, C]` of (softmax(logits) − softmax(previous))², the previous
    learner detached; `logits` detached too unless `gradient` (the authors detach both)."""
    p = torch.softmax(logits.float() if gradient else logits.detach().float(), dim=1)
    return F.mse_loss(p, torch.softmax(previous.detach().float(), dim=1))


# ---- BatchNorm statistics of a pass the authors do not make ------------------------------------------
class KeptBuffers:
    """Puts every buffer of `module` (BatchNorm's running mean, variance and batch count) back as it was
    on entering, so that a train-mode pass inside leaves no trace in them; its outputs are unchanged
    (train-mode BatchNorm normalises with the batch's own statistics)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self._saved = [b.detach().clone() for b in self.module.buffers()]

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self.module.buffers(), self._saved):
                buffer.copy_(saved)


@dataclass
class ReconBoostOutput(ModelOutput):
    """`ModelOutput` plus `previous_again`: `[B, C]`, the previous learner's part from its second pass
    (the authors' `pre_out_obj`, ℓ_GA's target), or None when there is none (stage 0, ensemble epochs,
    eval mode)."""

    previous_again: torch.Tensor | None = None


# ---- freezing columns of a shared tensor -------------------------------------------------------------
class FrozenColumns:
    """Keeps columns of `weight` exactly as they are across the next `step()` of an optimiser that holds
    `weight`, together with the same columns of that optimiser's per-parameter state tensors of the
    weight's shape (Adam's moments; zeros when the state did not exist yet). Needed because W_m of every
    learner lives in one Late-Linear tensor: a zero gradient does not stop Adam (momentum, weight decay).
    Uses PyTorch's global optimiser step hooks, removed after that step (or by `remove()`)."""

    def __init__(self, weight: torch.nn.Parameter, columns: list[slice]):
        self.weight = weight
        self.columns = columns
        self._saved: tuple[Any, list[torch.Tensor], dict[str, list[torch.Tensor]] | None] | None = None
        self._handles = [
            register_optimizer_step_pre_hook(self._before),
            register_optimizer_step_post_hook(self._after),
        ]

    def _holds(self, optimizer) -> bool:
        return any(p is self.weight for group in optimizer.param_groups for p in group["params"])

    def _before(self, optimizer, args, kwargs) -> None:
        if not self._holds(optimizer):
            return
        state = optimizer.state.get(self.weight)
        with torch.no_grad():
            values = [self.weight[:, c].clone() for c in self.columns]
            moments = None
            if state:
                moments = {
                    key: [v[:, c].clone() for c in self.columns]
                    for key, v in state.items()
                    if torch.is_tensor(v) and v.shape == self.weight.shape
                }
        self._saved = (optimizer, values, moments)

    def _after(self, optimizer, args, kwargs) -> None:
        if self._saved is None or self._saved[0] is not optimizer:
            return
        _, values, moments = self._saved
        state = optimizer.state.get(self.weight, {})
        with torch.no_grad():
            for c, v in zip(self.columns, values):
                self.weight[:, c] = v
            for key, t in state.items():
                if not (torch.is_tensor(t) and t.shape == self.weight.shape):
                    continue
                for i, c in enumerate(self.columns):
                    if moments is None:
                        t[:, c] = 0  # a state created by this step: its initial value
                    elif key in moments:
                        t[:, c] = moments[key][i]
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._saved = None


# ---- the method --------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ReconBoost(Balancer):
    """Alternating boosting stages and ensemble stages on the Late-Linear sum (module docstring).

    Keyword arguments (the authors' defaults):
    weight1: 5, the weight of the learner's own cross-entropy term (> 0; the MLB authors ran 3).
    weight2: 1, the weight of the reconcilement term (>= 0).
    alpha: 0.5, the weight of the memory-consolidation term (>= 0).
    boost_epochs: 4, boosting epochs per stage (>= 1; the authors' `epochs_per_stage`).
    ensemble_epochs: 4, ensemble epochs per stage (>= 0; the authors' `correct_epoch`).
    ga_gradient: False (the authors': the GA term is computed on detached outputs, no gradient);
        True lets its gradient reach the boosted learner.
    """

    name: ClassVar[str] = "reconboost"
    search_space: ClassVar[SearchSpace] = {
        "weight1": FloatRange(1.0, 10.0, log=True),
        "alpha": FloatRange(0.1, 1.0),
    }
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = frozenset({"late-linear"})

    def __init__(
        self,
        *,
        weight1: float = 5.0,
        weight2: float = 1.0,
        alpha: float = 0.5,
        boost_epochs: int = 4,
        ensemble_epochs: int = 4,
        ga_gradient: bool = False,
    ):
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (number(weight1) and weight1 > 0):
            raise ValueError(f"reconboost weight1 must be a finite number > 0, got {weight1!r}")
        if not (number(weight2) and weight2 >= 0):
            raise ValueError(f"reconboost weight2 must be a finite number >= 0, got {weight2!r}")
        if not (number(alpha) and alpha >= 0):
            raise ValueError(f"reconboost alpha must be a finite number >= 0, got {alpha!r}")
        if not (_is_int(boost_epochs) and boost_epochs >= 1):
            raise ValueError(f"reconboost boost_epochs must be an integer >= 1, got {boost_epochs!r}")
        if not (_is_int(ensemble_epochs) and ensemble_epochs >= 0):
            raise ValueError(f"reconboost ensemble_epochs must be an integer >= 0, got {ensemble_epochs!r}")
        if ga_gradient not in (True, False):
            raise ValueError(f"reconboost ga_gradient must be true or false, got {ga_gradient!r}")
        self.weight1 = float(weight1)
        self.weight2 = float(weight2)
        self.alpha = float(alpha)
        self.boost_epochs = int(boost_epochs)
        self.ensemble_epochs = int(ensemble_epochs)
        self.ga_gradient = bool(ga_gradient)
        self.epoch = 0  # epochs completed so far = the index of the current epoch
        self._frozen: FrozenColumns | None = None

    @classmethod
    def check_model(cls, model) -> None:
        super().check_model(model)
        fusion = unwrap(model).fusion
        if not isinstance(fusion, LateLinear) or fusion.cosine:
            raise ValueError(
                f"method {cls.name!r} needs the plain Late-Linear head (fusion='late-linear', linear "
                f"classifier: its per-modality parts are the boosted learners), got {type(fusion).__name__}"
                + (" with a cosine classifier" if getattr(fusion, "cosine", False) else "")
            )

    def phase(self, model) -> Phase:
        """The schedule at the current epoch for `model`'s modalities."""
        modalities = tuple(unwrap(model).modalities)
        return reconboost_phase(self.epoch, modalities, self.boost_epochs, self.ensemble_epochs)

    # ---- hooks -------------------------------------------------------------------------------------
    def forward(self, model, batch: dict) -> ReconBoostOutput:
        """The full model, with the encoders of the learners this epoch does not train run without
        gradients (the authors' frozen learners run under `torch.no_grad()`), and the BatchNorm running
        statistics moved as the authors' passes move them (`Phase.forwards`, module docstring)."""
        self._unfreeze()  # a step that never ran (non-finite gradients): nothing left to restore
        inner = unwrap(model)
        phase = self.phase(inner)
        runs = phase.forwards if inner.training else {}  # eval mode moves no statistics
        encoded = {}
        for m in inner.modalities:
            skipped = inner.training and m not in runs  # a pass the authors never make
            kept = KeptBuffers(inner.encoders[m]) if skipped else contextlib.nullcontext()
            with torch.set_grad_enabled(torch.is_grad_enabled() and m in phase.trainable), kept:
                encoded[m] = inner.encoders[m](batch[m], batch.get(f"{m}_mask"))
        fused, parts = inner.fuse(encoded)  # [B, C], {m: [B, C]}
        again = None
        p = phase.previous
        if runs.get(p, 0) == 2:  # the authors' `pre_model(...)`: p's second pass, ℓ_GA's target
            with torch.no_grad():
                second = {**encoded, p: inner.encoders[p](batch[p], batch.get(f"{p}_mask"))}
                again = inner.fuse(second)[1][p]  # [B, C]
        features = {m: e.pooled for m, e in encoded.items()}  # {m: [B, D]}
        unimodal = {m: inner.unimodal_heads[m](f) for m, f in features.items()}  # {m: [B, C]}
        return ReconBoostOutput(
            fused=fused,
            unimodal=unimodal,
            features=features,
            fused_parts=parts,
            encoded=encoded,
            previous_again=again,
        )

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        inner = unwrap(model)
        phase = self.phase(inner)
        label = batch["label"]
        parts = out.fused_parts
        probes = probe_loss(inner, out, label)  # trains the unimodal heads only (detached features)
        loss_fused = F.cross_entropy(out.fused.float(), label)
        values: dict[str, Any] = {
            "stage": phase.stage,
            "boost_modality": inner.modalities.index(phase.modality),
            "boosting": float(phase.boosting),
        }
        if phase.boosting:
            others = sum(parts[k] for k in phase.others) if phase.others else None
            loss_boost = boosting_loss(
                parts[phase.modality], others, label, self.weight1, self.weight2
            ).mean()
            method = loss_boost
            values["loss_boost"] = loss_boost
            if phase.previous is not None:
                target = getattr(out, "previous_again", None)  # p's second pass, when `forward` made one
                target = parts[phase.previous] if target is None else target  # [B, C]
                loss_ga = ga_loss(parts[phase.modality], target, gradient=self.ga_gradient)
                method = loss_boost + self.alpha * loss_ga
                values["loss_ga"] = loss_ga
        else:
            if len(phase.members) == len(inner.modalities):
                method = loss_fused
            else:
                method = F.cross_entropy(sum(parts[k] for k in phase.members).float(), label)
            values["loss_ensemble"] = method
        total = method + sum(probes.values())
        logs = {"loss": method, "loss_fused": loss_fused} | {f"loss_{m}": v for m, v in probes.items()}
        return total, self.log_values(logs | values)

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        """Frozen learners: encoder gradients set to None (Adam skips them), their Late-Linear columns
        (and Adam moments) kept exactly across the coming `optimizer.step()`."""
        self._unfreeze()
        inner = unwrap(model)
        trainable = self.phase(inner).trainable
        frozen = [m for m in inner.modalities if m not in trainable]
        if not frozen:
            return {}
        for m in frozen:
            for p in inner.encoders[m].parameters():
                p.grad = None
        fusion = inner.fusion
        columns = [fusion.columns[m] for m in frozen]
        if fusion.weight.grad is not None:
            for c in columns:
                fusion.weight.grad[:, c] = 0.0
            self._frozen = FrozenColumns(fusion.weight, columns)
        return {}

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        self._unfreeze()
        length = self.boost_epochs + self.ensemble_epochs
        stage, within = divmod(self.epoch, length)
        logs = {
            "stage": float(stage),
            "boosting": float(within < self.boost_epochs),
            "stage_end": float(within == length - 1),
        }
        self.epoch += 1
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"epoch"}:
            raise ValueError(f"reconboost state must have the key 'epoch', got keys {sorted(state)}")
        self.epoch = int(state["epoch"])

    def _unfreeze(self) -> None:
        if self._frozen is not None:
            self._frozen.remove()
            self._frozen = None
