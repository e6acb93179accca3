"""The interface every balancing method implements, and helpers the methods share.

A balancer is one object per run, used from any PyTorch loop (docs/CONTRACTS.md, "Balancing methods"):

    for balancer.substep in range(balancer.updates_per_batch(model)):  # 1, but M for MLA
        out = balancer.forward(model, batch)            # ModelOutput; model(batch) unless overridden
        loss, logs = balancer.loss(model, batch, out)   # scalar loss + floats to log
        optimizer.zero_grad(); loss.backward()
        logs |= balancer.before_step(model, batch, out) # may change gradients in place
        optimizer.step()
    for batch in validation: balancer.observe_validation(batch, model(batch))  # eval mode; D&R's features
    balancer.on_epoch_end(epoch, val_metrics)           # per-epoch methods (MSLR, PMR, G-Blending, D&R)

A plain loop that ignores `updates_per_batch` and `forward` serves every method but MLA (the only one
that overrides them).

To write a new method: subclass `Balancer`, set the class attributes below, override the hooks you
need (the defaults do nothing), and give it a unique `name`. `mlb.balancing` registers every
`Balancer` subclass found in the modules it imports, keyed by `name`.

What a trainer reads and sets, all declared on `Balancer` below (docs/CONTRACTS.md, "Balancing methods"):
- class attributes it reads:
  - `name`: the `--method` value (`"mlb"`, `"multi-loss"`, ...).
  - `uses_unimodal_heads`: True when the loss trains the unimodal heads end to end (Multi-Loss, MLB).
    When False the heads are still trained as detached *probes* if the method calls `probe_loss`
    (so per-head accuracies and the agreement table stay meaningful), but no gradient from them
    reaches an encoder.
  - `selection_head`: None (select the checkpoint on the fused head's validation accuracy), or the
    modality whose head a method trains alone (`audio-only`: "audio").
  - `search_space`: {init keyword: FloatRange | IntRange} that `mlbpipe tune` searches; `{}` (only the
    shared learning rate and weight decay) by default.
  - `supported_fusions`: the fusion heads (`"late-linear"`, `"mid-mlp"`, `"film"`, `"gated"`, `"tf"`)
    the method works with; `None` means all. `check_model(model)` enforces it.
  - `reduced_statistics`: what a method reduces over the training processes (documentation and tests).
  - `needs_pretrained_encoders`, `frozen_encoders`: the method's encoders start from unimodal runs'
    checkpoints (Uni-Pre, Ensemble; the run's `init_encoders`), and stay fixed.
  - `trains`: False for a method that trains nothing (Ensemble): the trainer only validates and tests.
  - `grad_clip_norm`: None, or the global gradient norm the method's authors clip to at every update (DGL:
    40); the trainer clips to it after `before_step` unless the run sets its own (`--grad-clip-norm`).
- instance attributes it sets:
  - `world` (`mlb.world.World`): the training processes, set once before training. A method whose
    coefficients come from batch statistics reduces them with `self.world.batch_mean(...)` /
    `self.world.sum(...)` (the identity on one process), so every rank computes the same coefficients from
    the global batch. The gradients a hook sees after `backward()` are already the global batch's (the
    trainer sums them first).
  - `substep`: which of the batch's `updates_per_batch(model)` optimiser updates is running (0-based),
    set before each update's `forward`, so the hooks know which update they serve.
  - `sync_logs`: see below; the trainer sets it to False.
- the hooks (`updates_per_batch`, `forward`, `loss`, `before_step`, `observe_validation`, `on_epoch_end`,
  `state_dict`, `load_state_dict`), and before the model is built `model_options()`: extra keyword
  arguments for `mlb.models.build_model` (MMCosine returns `{"classifier": "cosine", "cosine_scale": s}`);
  `{}` by default.

`logs` values are plain Python floats, named `loss`, `loss_fused`, `loss_<modality>`, `k_<modality>`,
`r_<modality>`, `s_<modality>` and so on. Methods build them with `self.log_values(...)`, which
gathers them with one `.tolist()` (one device sync). A GPU trainer that wants no sync inside the step
sets `balancer.sync_logs = False`: the values are then detached 0-d tensors, and
`floats_for_log(logs)` turns them into floats once, after `optimizer.step()`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.common.search_space import SearchSpace
from mlb.world import LOCAL, World

# search spaces (what `mlbpipe tune` may vary) are declared by each method beside its code, with the types of
# `mlb.common.search_space` (torch-free, so the command line reads them without importing torch)


class Balancer:
    """Base class: Joint-style defaults (fused cross-entropy, no gradient changes).

    Hooks (override what you need):
    - `forward(model, batch) -> ModelOutput`: the training forward pass, `model(batch)` by default; a
      method that trains one modality per substep runs only what that update needs.
    - `loss(model, batch, out) -> (loss, logs)`: the scalar to back-propagate.
    - `before_step(model, batch, out) -> logs`: called after `backward()`, before `optimizer.step()`;
      may change `p.grad` in place. With `torch.amp.GradScaler`, call it before `scaler.unscale_`
      or after: a method that only multiplies gradients does not care; one that reads gradient
      magnitudes (OGM-GE's noise) should call `scaler.unscale_(optimizer)` first (the trainer does).
    - `observe_validation(batch, out)`: every batch of the epoch's validation pass (eval mode, no gradients),
      before `on_epoch_end`; D&R keeps the encoders' features. Does nothing by default.
    - `on_epoch_end(epoch, val_metrics) -> logs`: once per epoch after validation. `val_metrics` is the
      metrics dict of the validation set (e.g. `{"acc": .., "acc_audio": .., "acc_video": ..}`).
    - `state_dict()` / `load_state_dict(state)`: what must survive a resume (tensors, floats, lists;
      it is saved with `torch.save` and loaded with `weights_only=True`).
    """

    name: ClassVar[str] = "base"
    uses_unimodal_heads: ClassVar[bool] = False
    # The head whose validation accuracy selects the checkpoint: None for the fused head, a modality for a
    # method that trains that head alone (its fused output is not trained).
    selection_head: str | None = None
    supported_fusions: ClassVar[frozenset[str] | None] = None
    # The method's own hyper-parameters that `mlbpipe tune` searches (keyword arguments of __init__), with
    # their ranges; the learning rate and weight decay are searched for every method (mlb.experiment.tune).
    search_space: ClassVar[SearchSpace] = {}
    # Batch statistics this method reduces across training processes (see `world` in the module docstring)
    reduced_statistics: ClassVar[tuple[str, ...]] = ()
    # The global gradient norm the method's authors clip to at every update (torch.nn.utils.clip_grad_norm_
    # over the trained parameters, after `before_step`); None: no clipping. A run's grad_clip_norm wins.
    grad_clip_norm: ClassVar[float | None] = None
    # The method starts its encoders (and unimodal heads) from unimodal runs' checkpoints (the trainer's
    # init_encoders; Uni-Pre); frozen_encoders: and keeps them fixed (no gradient, BatchNorm statistics kept).
    needs_pretrained_encoders: ClassVar[bool] = False
    frozen_encoders: ClassVar[bool] = False
    # False: the run trains nothing (Ensemble): the trainer validates and tests the model as built
    trains: ClassVar[bool] = True
    # Set by the trainer (module docstring): the training processes; whether logs are floats now (True) or
    # detached 0-d tensors made floats once after the update (False); the update of the batch in progress.
    world: World = LOCAL
    sync_logs: bool = True
    substep: int = 0

    # ---- hooks ---------------------------------------------------------------------------------
    def updates_per_batch(self, model) -> int:
        """Optimiser updates per batch: 1; a method alternating over modalities within a batch (MLA)
        returns M."""
        return 1

    def forward(self, model, batch: dict):
        """The training forward pass: `model(batch)`."""
        return model(batch)

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        """Fused cross-entropy only."""
        loss_fused = F.cross_entropy(out.fused, batch["label"])
        return loss_fused, self.log_values({"loss": loss_fused, "loss_fused": loss_fused})

    def before_step(self, model, batch: dict, out) -> dict[str, float]:
        return {}

    def observe_validation(self, batch: dict, out) -> None:
        """One batch of the epoch's validation pass and its `ModelOutput` (eval mode, no gradients), called
        for every validation batch before `on_epoch_end`; never for the test split."""

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    # ---- set-up checks -------------------------------------------------------------------------
    def model_options(self) -> dict[str, Any]:
        """Extra keyword arguments for `mlb.models.build_model` that this method needs."""
        return {}

    @classmethod
    def check_model(cls, model) -> None:
        """Fail early, naming the fusion, when this method cannot balance `model`."""
        model = unwrap(model)
        fusion = getattr(model, "fusion_name", None)
        if cls.supported_fusions is not None and fusion not in cls.supported_fusions:
            raise ValueError(
                f"method {cls.name!r} does not support fusion={fusion!r}; "
                f"supported: {sorted(cls.supported_fusions)}"
            )
        if len(model.modalities) < 2:
            raise ValueError(f"method {cls.name!r} needs >= 2 modalities, got {model.modalities}")

    def log_values(self, values: dict[str, torch.Tensor | float]) -> dict[str, Any]:
        """Floats (one sync) when `sync_logs`, else detached tensors and floats as given."""
        if self.sync_logs:
            return floats_for_log(values)
        return {k: v.detach() if torch.is_tensor(v) else v for k, v in values.items()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


# ---- helpers shared by the methods -----------------------------------------------------------------
def unwrap(model):
    """The `MultimodalModel` inside a DDP / DataParallel (`.module`) or `torch.compile` (`._orig_mod`)
    wrapper, so methods can reach `modalities`, `unimodal_heads` and `modality_grad_slices`."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def floats_for_log(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Turn 0-d tensors (and floats) into Python floats with a single device sync."""
    keys = list(values)
    tensors = [v.detach().float().reshape(()) if torch.is_tensor(v) else None for v in values.values()]
    present = [t for t in tensors if t is not None]
    as_list = torch.stack(present).tolist() if present else []  # one sync for all tensors
    it = iter(as_list)
    return {k: (next(it) if t is not None else float(v)) for k, t, v in zip(keys, tensors, values.values())}


def unimodal_losses(out, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy of every unimodal head: `{modality: scalar}`."""
    return {m: F.cross_entropy(logits, label) for m, logits in out.unimodal.items()}


def fused_loss_with_probes(model, out, label: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the methods without unimodal losses: CE(fused) plus each unimodal head trained as a
    probe (`probe_loss`). Returns (total, terms); terms["loss"] is the fused CE alone (what the method
    optimises), with `loss_fused` and `loss_<m>` beside it."""
    loss_fused = F.cross_entropy(out.fused, label)
    probes = probe_loss(model, out, label)
    total = loss_fused + sum(probes.values())
    return total, {"loss": loss_fused, "loss_fused": loss_fused} | {f"loss_{m}": v for m, v in probes.items()}


def probe_loss(model, out, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy of each unimodal head on *detached* features: `{modality: scalar}`.

    Methods without unimodal losses (Joint, OGM-GE, MSLR, ...) add these to their loss so the heads
    learn to read their encoder (per-head accuracy, the agreement table) while no gradient reaches an
    encoder or the fusion: the method's training of the multimodal model is unchanged.
    """
    heads = unwrap(model).unimodal_heads
    return {m: F.cross_entropy(heads[m](feat.detach()), label) for m, feat in out.features.items()}


def true_class_scores(out, label: torch.Tensor) -> torch.Tensor:
    """MLB's s_i: batch mean of softmax(unimodal logits_i)[true class], detached. Shape `[M]`
    in `model.modalities` order (the order of `out.unimodal`)."""
    probs = [torch.softmax(lg.detach().float(), dim=1) for lg in out.unimodal.values()]  # M x [B, C]
    return torch.stack([p.gather(1, label[:, None]).mean() for p in probs])  # [M]
