"""D&R: Diagnosing & Re-learning (Wei, Li, Feng & Hu, ECCV 2024, "Diagnosing and Re-learning for Balanced
Multimodal Learning"), as the authors' code computes it (GeWu-Lab/Diagnosing_Relearning_ECCV2024 at 025085e,
`code/ours.py`, `code/models/models.py`, `code/script/ours.sh`); any fusion head, M >= 2 modalities.

Training is plain: the fused cross-entropy only (`ours.py` l. 196-201; the unimodal heads here are detached
probes, `base.probe_loss`, which reach no encoder). After every `reinit_every`-th epoch (never epoch 0), at
most `max_reinits` times, each modality m is diagnosed and its encoder softly re-initialised:

1. Diagnose (`reinit_score`, l. 99-135). Φ_D^m, Φ_V^m: encoder m's pooled features (`out.features[m]`, the
   vectors the authors' `AVClassifier` returns as `a`, `v` and concatenates for its head, models.py l. 79-98)
   of the training clips D and of the validation clips V. Each set on its own: every feature column min-max
   scaled to [−1, 1] (sklearn's MinMaxScaler, l. 108-109: a constant column becomes −1), k-means with
   K = the number of classes (l. 110), and the clusters' purity (`purity_score`, l. 63-95: every cluster
   votes for its majority class)
       P = (1/N) Σ_k max_c |{i : cluster_i = k, y_i = c}|.
   The learning state is the gap between the two (l. 122-123; a modality that separates its training clips
   much better than clips it never trained on is well learnt, or over-fitted), and the strength (l. 126-127)
       g^m = |P_D^m − P_V^m|,      α^m = tanh(λ · g^m).
2. Re-learn (`reinit`, l. 139-169, the loop at l. 156-166). Every trained parameter θ of encoder m:
       θ ← α^m · θ_init + (1 − α^m) · θ
   θ_init: the encoder's weights before the first update (the authors save the whole model right after
   building it, l. 345-349). Nothing else changes: not the fusion head nor the unimodal heads, not the
   BatchNorm running statistics (buffers), not the optimiser's state (their SGD momentum, Adam's moments
   here). (`reinit` also lists the `conv` parameters, l. 145-153, but never uses that list.)

Schedule: the authors diagnose after training epoch e (0-based) when e % reinit_epoch == 0 and e > 0, at most
reinit_num times (l. 415-427): with their 20 and 3, after epochs 20, 40 and 60 of 90. Here the same epochs
(`DiagnosingRelearning.diagnoses`). The re-initialisation decided at epoch e's end is applied at the start of
epoch e + 1 (the next `forward`), after the trainer has validated epoch e and kept its best checkpoint: the
authors too re-initialise after that epoch's evaluation (l. 386-427), and `mlb.train` calls `on_epoch_end`
before it writes best.pt, which must hold the weights that were validated.

Where the features come from:
- D, the training clips: as the diagnosed epoch's own training batches compute them (collected in `loss`,
  detached, only in a diagnosed epoch): no extra pass over the training set.
- V, the validation clips: as the trainer's end-of-epoch validation computes them (eval mode, no gradients,
  the epoch's final weights), handed over batch by batch through `observe_validation` before `on_epoch_end`
  (`mlb.train` calls it; a loop of one's own must too, or the diagnosis raises). The authors' V is their
  validation split too (l. 356, 425).

Authors' defaults: λ = 3 (`--move_lambda`, l. 53-54 and script/ours.sh), reinit_epoch = 20 (l. 55),
reinit_num = 3 (l. 56), 90 epochs (ours.sh), SGD lr 0.002, momentum 0.9, weight decay 1e-4 (l. 38, 367-368),
batch 64 (l. 34), no lr schedule (the `lr_decay_*` flags are never read), k-means `KMeans(n_clusters=n_classes,
random_state=0)` (l. 110), whose default n_init is 10 before scikit-learn 1.4 (1 from 1.4 on); the MLB
authors' rerun passes n_init=10. The MLB authors' rerun under MLB's protocol (kkontras/MCR at 338d370,
agents/general_agent/helpers/Bias_Infusion.py `Bias_Infusion_DnR`; run.sh; configs/CREMA_D/release/vit/DnR.json):
λ 3 on CREMA-D and AVE, 5 on UCF, at most 3 re-initialisations, every 4 epochs (checked at the *start* of an
epoch: after 4, 8, 12 epochs, one epoch before `reinit_every=4` here), the fused and both unimodal
cross-entropies trained (`multi_supervised_w` 1, 1, 1), every parameter whose name holds "enc_0"/"mod0"/"fc_0"
re-initialised (the encoder and, by that name match, the modality's own classifier layer), and (a slip) the
audio's validation purity computed on the video's validation features. BalanceBenchmark
(balancemm/trainer/ReLearning_trainer.py at 39ed569) has the same formulas, diagnoses before validating, takes
θ_init when `fit` starts (after a resumed checkpoint is loaded) and re-initialises every parameter whose name
holds the modality's.

Differences from the authors' code, on purpose:
- Φ_D is collected from the diagnosed epoch's training batches (train mode: BatchNorm's batch statistics,
  dropout; a model that moves during the epoch), where the authors run an extra eval-mode pass over the
  training set after the epoch (`get_feature`, l. 300-324, 423). P_D is then that of noisier features than
  the authors' (lower, mostly), and with P_D > P_V the gap g and α come out smaller; in exchange the
  diagnosis costs no extra pass. Φ_V is the authors' (eval mode, final weights).
- k-means is this module's (`kmeans`, torch, float64 on the CPU), not scikit-learn's: the same algorithm as
  sklearn's default (greedy k-means++ seeding with 2 + ⌊ln K⌋ candidates per centre, Lloyd iterations up to
  300, stopping when the labels repeat or the centres move less than 1e-4 × the mean feature variance, the
  best of `kmeans_restarts` runs by inertia), from its own generator seeded with `kmeans_seed` (the training
  RNG is left alone). Its random draws are not sklearn's: where k-means has several local optima, the
  clusters (and P) may differ from sklearn's at random_state=0. An empty cluster's centre moves to the clip
  farthest from its own centre (sklearn moves that clip's weight too). K = min(classes, clips): sklearn
  refuses fewer clips than clusters. Clips with a non-finite feature (a step the trainer skipped) are left out.
  Its cost: up to ~20 s for a set of CREMA-D's size (6k × 512, 10 restarts) on a busy 2-core CPU, 2·M sets
  per diagnosis.
- The re-initialisation waits for the next `forward` (above); only trainable parameters (requires_grad)
  are re-initialised (a frozen one would stay θ_init = θ anyway, up to rounding).
- The rest is MLB's protocol, as for every method: Adam with the per-encoder lr and cosine restarts, the
  checkpoint selected on validation (the authors keep the best *test* accuracy, l. 386-389), early stopping
  (mind `patience`: accuracy drops right after a re-initialisation).
- Any fusion head and M >= 2 (the authors: two ResNet-18 encoders, a linear head on their concatenation).

Under torchrun every rank holds its own training clips: their rows are gathered (a sum of zero-padded rows,
exact), every rank clusters all of them, and rank 0's α is broadcast, so every replica re-initialises alike.
`mlb.train` evaluates the whole validation split on every rank, so Φ_V needs no gathering.

Logs per step: `loss` (the fused CE), `loss_fused`, `loss_<m>` (the probes). Per diagnosed epoch:
`dnr_purity_train_<m>`, `dnr_purity_val_<m>`, `dnr_gap_<m>`, `dnr_alpha_<m>`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mlb.balancing.base import Balancer, fused_loss_with_probes, unwrap
from mlb.common.search_space import FloatRange, IntRange, SearchSpace

MAX_ITER = 300  # sklearn KMeans' max_iter
TOL = 1e-4  # sklearn KMeans' tol, relative to the mean feature variance
CONSTANT_RANGE = 10 * torch.finfo(torch.float32).eps  # sklearn: a column's range below this counts as 0


# ---- pure math ---------------------------------------------------------------------------------------
def min_max_scale(x: torch.Tensor) -> torch.Tensor:
    """Every column of `x [N, D]` mapped to [−1, 1] by its own min and max (sklearn's
    MinMaxScaler(feature_range=(-1, 1)), fitted on `x`); a constant column becomes −1."""
    low, high = x.min(dim=0).values, x.max(dim=0).values  # [D]
    span = high - low
    span = torch.where(span < CONSTANT_RANGE, torch.ones_like(span), span)
    return (x - low) / span * 2 - 1


def purity(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """(1/N) Σ_k max_c |{i : clusters_i = k, labels_i = c}|: each cluster votes for its majority class.
    `labels`, `clusters`: `[N]` integers."""
    _, label_index = torch.unique(labels, return_inverse=True)
    _, cluster_index = torch.unique(clusters, return_inverse=True)
    table = torch.zeros(int(cluster_index.max()) + 1, int(label_index.max()) + 1, dtype=torch.long)
    table.index_put_((cluster_index, label_index), torch.ones_like(label_index), accumulate=True)
    return float(table.max(dim=1).values.sum()) / labels.numel()


def _sq_distances(x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances `[N, K]`, as sklearn computes them: ‖x‖² − 2 x·c + ‖c‖², at least 0.
    `x_sq`: ‖x‖² `[N]`, when already known."""
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    return (x_sq[:, None] - 2 * x @ centers.T + centers.pow(2).sum(1)[None, :]).clamp_min(0)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding, as sklearn's `_kmeans_plusplus`: the first centre uniform; each next one the
    best (lowest potential) of 2 + ⌊ln k⌋ candidates drawn in proportion to the squared distance to the
    nearest centre so far. `x [N, D]` -> `[k, D]`."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    closest = (x - x[first]).pow(2).sum(dim=1)  # [N]
    potential = closest.sum()
    for _ in range(1, k):
        draws = torch.rand(trials, generator=generator, dtype=x.dtype) * potential
        candidates = torch.searchsorted(torch.cumsum(closest, 0), draws).clamp_max(n - 1)  # [trials]
        to_candidates = torch.minimum(closest[None, :], _sq_distances(x, x[candidates]).T)  # [trials, N]
        best = int(to_candidates.sum(dim=1).argmin())
        potential, closest = to_candidates[best].sum(), to_candidates[best]
        centers.append(x[candidates[best]])
    return torch.stack(centers)


def lloyd(x: torch.Tensor, centers: torch.Tensor, tol: float) -> tuple[torch.Tensor, float]:
    """Lloyd's iterations from `centers [K, D]` as sklearn's `_kmeans_single_lloyd` runs them: assign, move
    the centres to their clusters' means; stop when the labels repeat, or the centres moved (sum of squared
    shifts) by at most `tol`, or after 300 iterations; the labels are then those of the final centres.
    Returns (labels `[N]`, inertia)."""
    k = centers.shape[0]
    x_sq = x.pow(2).sum(1)  # [N]
    labels_old = None
    converged = False
    for _ in range(MAX_ITER):
        distances = _sq_distances(x, centers, x_sq)  # [N, K]
        labels = distances.argmin(dim=1)  # [N]
        members = F.one_hot(labels, k).to(x.dtype)  # [N, K]
        counts = members.sum(dim=0)  # [K]
        new = (members.T @ x) / counts.clamp_min(1)[:, None]  # the clusters' means [K, D]
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # to the clips farthest from their own centre
            far = distances.gather(1, labels[:, None]).squeeze(1).argsort(descending=True)[: empty.numel()]
            new[empty] = x[far]
        shift = float((new - centers).pow(2).sum())
        centers = new
        if labels_old is not None and torch.equal(labels, labels_old):
            converged = True
            break
        if shift <= tol:
            break
        labels_old = labels
    distances = _sq_distances(x, centers, x_sq)
    if not converged:
        labels = distances.argmin(dim=1)
    return labels, float(distances.gather(1, labels[:, None]).sum())


def kmeans(x: torch.Tensor, k: int, *, restarts: int, seed: int) -> torch.Tensor:
    """Cluster labels `[N]` of `x [N, D]` into min(k, N) clusters: the best (lowest inertia) of `restarts`
    k-means++ + Lloyd runs, in float64 on the CPU, from a generator seeded with `seed`."""
    x = x.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0)  # as sklearn centres the data (the clusters do not change)
    k = min(k, x.shape[0])
    tol = float(x.var(dim=0, unbiased=False).mean()) * TOL
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor] | None = None
    for _ in range(restarts):
        labels, inertia = lloyd(x, kmeans_plusplus(x, k, generator), tol)
        if best is None or inertia < best[0]:
            best = (inertia, labels)
    return best[1]


def cluster_purity(
    features: torch.Tensor, labels: torch.Tensor, k: int, *, restarts: int, seed: int
) -> float:
    """The authors' diagnosis of one feature set: min-max scaling to [−1, 1], k-means with k clusters, purity.
    `features [N, D]`, `labels [N]`."""
    scaled = min_max_scale(features.detach().to("cpu", torch.float64))
    return purity(labels.cpu(), kmeans(scaled, k, restarts=restarts, seed=seed))


def reinit_strength(purity_train: float, purity_val: float, move_lambda: float) -> float:
    """α = tanh(λ · |P_D − P_V|)."""
    return math.tanh(move_lambda * abs(purity_train - purity_val))


@torch.no_grad()
def relearn_(encoder: torch.nn.Module, initial: dict[str, torch.Tensor], alpha: float) -> None:
    """In place, every trained parameter θ of `encoder`: θ ← α · θ_init + (1 − α) · θ, with α a float64
    0-d tensor as in the authors' code (the arithmetic runs in θ's dtype)."""
    a = torch.tensor(alpha, dtype=torch.float64)
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            p.copy_(a * initial[name].to(p.device) + (1 - a) * p)


def encoder_snapshot(model) -> dict[str, dict[str, torch.Tensor]]:
    """`{modality: {parameter name: a copy}}` of every trained encoder parameter of `model`."""
    inner = unwrap(model)
    return {
        m: {n: p.detach().clone() for n, p in inner.encoders[m].named_parameters() if p.requires_grad}
        for m in inner.modalities
    }


# ---- the method --------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class DiagnosingRelearning(Balancer):
    """Periodic diagnosis (purity gap of each encoder's features, train vs validation) and soft
    re-initialisation of each encoder towards its initial weights (module docstring).

    Keyword arguments (the authors' defaults):
    move_lambda: 3, λ in α = tanh(λ · |P_D − P_V|) (> 0; the MLB authors ran 3, and 5 on UCF).
    reinit_every: 20, diagnose after every reinit_every-th epoch (0-based epoch e with e % reinit_every == 0,
        e > 0; the authors' `reinit_epoch`; the MLB authors ran 4, checked one epoch earlier).
    max_reinits: 3, at most this many diagnoses (the authors' `reinit_num`).
    kmeans_restarts: 10, k-means runs per feature set, the best kept (sklearn's n_init before 1.4).
    kmeans_seed: 0, the k-means generator's seed (the authors' random_state=0; the draws differ from sklearn's).
    """

    name: ClassVar[str] = "dnr"
    # the diagnosed epoch's training features (gathered from every rank) and α (rank 0's, broadcast)
    reduced_statistics: ClassVar[tuple[str, ...]] = ("train_features", "alpha")
    search_space: ClassVar[SearchSpace] = {
        "move_lambda": FloatRange(1.0, 10.0, log=True),
        "reinit_every": IntRange(2, 20),
    }
    uses_unimodal_heads: ClassVar[bool] = False
    supported_fusions: ClassVar[frozenset[str] | None] = None

    def __init__(
        self,
        *,
        move_lambda: float = 3.0,
        reinit_every: int = 20,
        max_reinits: int = 3,
        kmeans_restarts: int = 10,
        kmeans_seed: int = 0,
    ):
        number = isinstance(move_lambda, (int, float)) and not isinstance(move_lambda, bool)
        if not (number and math.isfinite(move_lambda) and move_lambda > 0):
            raise ValueError(f"dnr move_lambda must be a finite number > 0, got {move_lambda!r}")
        for key, value, low in (
            ("reinit_every", reinit_every, 1),
            ("max_reinits", max_reinits, 0),
            ("kmeans_restarts", kmeans_restarts, 1),
            ("kmeans_seed", kmeans_seed, 0),
        ):
            if not (_is_int(value) and value >= low):
                raise ValueError(f"dnr {key} must be an integer >= {low}, got {value!r}")
        self.move_lambda = float(move_lambda)
        self.reinit_every = reinit_every
        self.max_reinits = max_reinits
        self.kmeans_restarts = kmeans_restarts
        self.kmeans_seed = kmeans_seed
        self.epoch = 0  # epochs completed so far = the index of the current epoch
        self.pending: dict[str, float] | None = None  # α per modality, applied at the next forward
        self.history: list[dict[str, float]] = []  # one entry per diagnosis: the epoch, P, g, α
        self._initial: dict[str, dict[str, torch.Tensor]] | None = None  # θ_init per modality
        self._train: dict[str, list[torch.Tensor]] = {}  # "label" and each modality: the epoch's rows
        self._val: dict[str, list[torch.Tensor]] = {}
        self._num_classes: int | None = None

    def diagnoses(self, epoch: int) -> bool:
        """Whether the end of (0-based) `epoch` is a diagnosis: e % reinit_every == 0, e > 0, and at most
        `max_reinits` of them (the authors' l. 418-420)."""
        return epoch > 0 and epoch % self.reinit_every == 0 and epoch // self.reinit_every <= self.max_reinits

    # ---- hooks -------------------------------------------------------------------------------------
    def forward(self, model, batch: dict):
        """`model(batch)`, after keeping θ_init (before the first update) and applying a pending
        re-initialisation."""
        if self._initial is None:
            self._initial = encoder_snapshot(model)
        if self.pending is not None:
            self._relearn(model)
        return model(batch)

    def loss(self, model, batch: dict, out) -> tuple[torch.Tensor, dict[str, float]]:
        if self.diagnoses(self.epoch):
            _collect(self._train, batch["label"], out.features)
        total, terms = fused_loss_with_probes(model, out, batch["label"])
        return total, self.log_values(terms)

    def observe_validation(self, batch: dict, out) -> None:
        """The validation batch's features, kept in a diagnosed epoch (module docstring)."""
        if self.diagnoses(self.epoch):
            _collect(self._val, batch["label"], out.features)
            self._num_classes = int(out.fused.shape[-1])

    def on_epoch_end(self, epoch: int, val_metrics: dict[str, float]) -> dict[str, float]:
        diagnosed = self.diagnoses(self.epoch)
        logs: dict[str, float] = {}
        if diagnosed:
            logs = self._diagnose()
        self._train, self._val = {}, {}
        self.epoch += 1
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "pending": None if self.pending is None else dict(self.pending),
            "history": [dict(h) for h in self.history],
            "initial": None
            if self._initial is None
            else {m: dict(params) for m, params in self._initial.items()},
            "train_rows": {key: _cat(rows) for key, rows in self._train.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"epoch", "pending", "history", "initial", "train_rows"}
        if set(state) != keys:
            raise ValueError(f"dnr state must have the keys {sorted(keys)}, got {sorted(state)}")
        self.epoch = int(state["epoch"])
        pending = state["pending"]
        self.pending = None if pending is None else {m: float(a) for m, a in pending.items()}
        self.history = [{k: float(v) for k, v in h.items()} for h in state["history"]]
        initial = state["initial"]
        self._initial = None if initial is None else {m: dict(p) for m, p in initial.items()}
        self._train = {key: [rows] for key, rows in state["train_rows"].items()}
        self._val = {}

    # ---- the diagnosis and the re-initialisation ---------------------------------------------------
    def _diagnose(self) -> dict[str, float]:
        """P_D, P_V, g and α of every modality from the epoch's rows; α (rank 0's) becomes pending."""
        if not self._val:
            raise RuntimeError(
                "method 'dnr' diagnoses this epoch but saw no validation features: call "
                "balancer.observe_validation(batch, out) for every validation batch before on_epoch_end "
                "(mlb.train does)"
            )
        train = self._gathered_train_rows()
        val = {key: _cat(rows) for key, rows in self._val.items()}
        modalities = [key for key in val if key != "label"]
        logs: dict[str, float] = {}
        alpha = []
        for m in modalities:
            p_train, p_val = self._purity(train[m], train["label"]), self._purity(val[m], val["label"])
            alpha.append(reinit_strength(p_train, p_val, self.move_lambda))
            logs |= {f"dnr_purity_train_{m}": p_train, f"dnr_purity_val_{m}": p_val}
            logs[f"dnr_gap_{m}"] = abs(p_train - p_val)
        agreed = self.world.broadcast_(torch.tensor(alpha, dtype=torch.float64)).tolist()  # rank 0's α
        self.pending = dict(zip(modalities, agreed))
        logs |= {f"dnr_alpha_{m}": a for m, a in self.pending.items()}
        self.history.append({"epoch": float(self.epoch), **logs})
        return logs

    def _purity(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        features, labels = _finite(features, labels)
        return cluster_purity(
            features, labels, self._num_classes, restarts=self.kmeans_restarts, seed=self.kmeans_seed
        )

    def _gathered_train_rows(self) -> dict[str, torch.Tensor]:
        """The epoch's training rows of every rank, in rank order: `{"label": [N], m: [N, D_m]}`."""
        if not self._train:
            raise RuntimeError(
                f"method 'dnr' diagnoses epoch {self.epoch} but collected no training features in it"
            )
        keys = sorted(self._train)
        local = {key: _cat(self._train[key]) for key in keys}
        if not self.world.distributed:
            return local
        # one [n, Σ D_m + 1] float32 block (labels < 2^24 are exact); the ranks' blocks summed into place
        block = torch.cat([local[k].float().reshape(local[k].shape[0], -1) for k in keys], dim=1)
        counts = torch.zeros(self.world.size, dtype=torch.float64)
        counts[self.world.rank] = block.shape[0]
        counts = self.world.sum(counts).long().tolist()
        start = sum(counts[: self.world.rank])
        padded = torch.zeros(sum(counts), block.shape[1], dtype=block.dtype, device=block.device)
        padded[start : start + block.shape[0]] = block
        rows = self.world.sum(padded)
        out, column = {}, 0
        for key in keys:
            width = 1 if key == "label" else local[key].shape[1]
            out[key] = rows[:, column : column + width]
            column += width
        out["label"] = out["label"].squeeze(1).round().long()
        return out

    def _relearn(self, model) -> None:
        inner = unwrap(model)
        for m, alpha in self.pending.items():
            expected = {n for n, p in inner.encoders[m].named_parameters() if p.requires_grad}
            if set(self._initial.get(m, {})) != expected:
                raise ValueError(
                    f"method 'dnr': the initial weights kept for {m!r} do not match its encoder's parameters "
                    "(a checkpoint of another model?)"
                )
            relearn_(inner.encoders[m], self._initial[m], alpha)
        self.pending = None


def _collect(
    rows: dict[str, list[torch.Tensor]], label: torch.Tensor, features: dict[str, torch.Tensor]
) -> None:
    """Append one batch's labels `[B]` and features `{m: [B, D]}` (detached, float32) to `rows`."""
    rows.setdefault("label", []).append(label.detach())
    for m, f in features.items():
        rows.setdefault(m, []).append(f.detach().float())


def _cat(rows: list[torch.Tensor]) -> torch.Tensor:
    """The rows concatenated on the device of the newest (those restored from a checkpoint are on the CPU)."""
    return torch.cat([r.to(rows[-1].device) for r in rows])


def _finite(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows whose features are all finite."""
    keep = torch.isfinite(features).all(dim=1)
    return features[keep], labels[keep]
