"""D&R (`mlb.balancing.diagnosing_relearning`) against independent re-expressions of the authors' code
(GeWu-Lab/Diagnosing_Relearning_ECCV2024 at 025085e, `code/ours.py`): the scaling, purity and k-means of the
diagnosis (`reinit_score`, `purity_score`, sklearn's MinMaxScaler and KMeans), α = tanh(λ·|P_D − P_V|), the soft
re-initialisation (`reinit`), the schedule (l. 415-427), one diagnosis through the hooks, the state across a
checkpoint, and a run through `mlb.train` interrupted and resumed exactly."""

from __future__ import annotations

import copy
import functools
import io
import math
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers.balancer_state import assert_state_round_trip, same_state
from helpers.models import DIMS, random_inputs
from helpers.shards import write_shard_folder
from sklearn.cluster import KMeans
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import MinMaxScaler

import mlb.train.trainer as train_module
from mlb.balancing import METHODS, build_balancer
from mlb.balancing.diagnosing_relearning import (
    DiagnosingRelearning,
    cluster_purity,
    lloyd,
    min_max_scale,
    purity,
    reinit_strength,
)
from mlb.models import build_model
from mlb.train import TrainConfig, train, train_step
from mlb.train.checkpoint import load_checkpoint
from mlb.train.step import StepContext
from mlb.world import World


# ---- the authors' code, re-expressed (ours.py) --------------------------------------------------------
def authors_purity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """`purity_score` (l. 63-95): labels renumbered 0..L-1, each cluster votes for its most frequent label
    (np.histogram + argmax), accuracy of the votes."""
    y_true = y_true.copy()
    labels = np.unique(y_true)
    for k, label in enumerate(labels):
        y_true[y_true == label] = k
    labels = np.unique(y_true)
    bins = np.concatenate((labels, [np.max(labels) + 1]), axis=0)
    voted = np.zeros(y_true.shape)
    for cluster in np.unique(y_pred):
        hist, _ = np.histogram(y_true[y_pred == cluster], bins=bins)
        voted[y_pred == cluster] = np.argmax(hist)
    return accuracy_score(y_true, voted)


def authors_purity_of(features: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """`reinit_score`'s per-set steps (l. 107-116): MinMaxScaler((-1, 1)), KMeans(n_classes, random_state=0)
    with n_init=10 (sklearn's default before 1.4, and the MLB authors' rerun), purity."""
    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    y_pred = KMeans(n_clusters=n_classes, random_state=0, n_init=10).fit_predict(scaled)
    return authors_purity(np.array(labels), y_pred)


def authors_weight(p_train: float, p_val: float, move_lambda: float) -> float:
    """l. 122-127: torch.tanh(torch.tensor(λ · |P_train − P_val|)) (a float64 tensor)."""
    return float(torch.tanh(torch.tensor(move_lambda * np.abs(p_train - p_val))))


def authors_reinit(current: torch.Tensor, init: torch.Tensor, weight: float) -> torch.Tensor:
    """`reinit` (l. 156-166): weight·init + (1 − weight)·current, weight a float64 0-d tensor."""
    w = torch.tensor(weight, dtype=torch.float64)
    return w * init + (1 - w) * current


def authors_schedule(epochs: int, reinit_epoch: int, reinit_num: int) -> list[int]:
    """The epochs (0-based) after which the authors' loop re-initialises (l. 378-427)."""
    flag, out = 0, []
    for epoch in range(epochs):
        if (epoch % reinit_epoch == 0) & (epoch > 0):
            flag += 1
            if flag <= reinit_num:
                out.append(epoch)
    return out


def separated(n: int, noise: float, flipped: float, seed: int, dim: int = 12, classes: int = 6):
    """Six tight, far-apart blobs (an unambiguous k-means optimum) whose labels are the blob index, with a
    fraction `flipped` of them replaced by a random class: purity 1 − (about) flipped."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 10
    blob = rng.integers(0, classes, size=n)
    x = centres[blob] + rng.normal(size=(n, dim)) * noise
    labels = np.where(rng.random(n) < flipped, rng.integers(0, classes, size=n), blob)
    return x.astype(np.float32), labels


# ---- the diagnosis -----------------------------------------------------------------------------------
@pytest.mark.unit
def test_scaling_matches_minmaxscaler_with_a_constant_column():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    x[:, 2] = 0.7  # a dead unit: sklearn maps it to −1
    want = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)
    got = min_max_scale(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (got[:, 2] == -1).all()


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(5))
def test_purity_matches_the_authors_purity_score(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 2, 3, 5], size=50)  # classes missing from the set, as `purity_score` allows
    clusters = rng.choice([1, 4, 6], size=50)
    assert purity(torch.from_numpy(labels), torch.from_numpy(clusters)) == pytest.approx(
        authors_purity(labels, clusters), abs=1e-12
    )


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rel_tol", [1e-4, 0.05])
def test_lloyd_from_the_same_centres_is_sklearns(seed, rel_tol):
    """From the same initial centres, our Lloyd iterations give sklearn's labels and inertia (sklearn centres
    the data itself; we are handed centred data). sklearn's tol 1e-4, and a loose one that ends the iterations
    on the centres' shift before the labels repeat (the labels are then the final centres')."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 16)) + rng.integers(0, 3, size=(300, 1)) * 0.8  # overlapping groups
    x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)
    init = x[rng.choice(300, 6, replace=False)]
    theirs = KMeans(n_clusters=6, init=init, n_init=1, algorithm="lloyd", tol=rel_tol).fit(x)
    xt = torch.from_numpy(x)
    mean = xt.mean(dim=0)
    tol = float((xt - mean).var(dim=0, unbiased=False).mean()) * rel_tol
    labels, inertia = lloyd(xt - mean, torch.from_numpy(init) - mean, tol)
    assert np.array_equal(labels.numpy(), theirs.labels_)
    assert inertia == pytest.approx(theirs.inertia_, rel=1e-10)


@pytest.mark.unit
@pytest.mark.parametrize("move_lambda", [3.0, 5.0])
def test_diagnosis_matches_the_authors_pipeline(move_lambda):
    """P_D, P_V and α from features with an unambiguous clustering: the same as the authors' MinMaxScaler +
    KMeans(random_state=0) + purity_score + tanh."""
    x_train, y_train = separated(240, noise=0.5, flipped=0.1, seed=1)
    x_val, y_val = separated(90, noise=0.5, flipped=0.5, seed=2)
    ours = [
        cluster_purity(torch.from_numpy(x), torch.from_numpy(y), 6, restarts=10, seed=0)
        for x, y in ((x_train, y_train), (x_val, y_val))
    ]
    theirs = [authors_purity_of(x, y, 6) for x, y in ((x_train, y_train), (x_val, y_val))]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[0] > ours[1] + 0.2  # a real gap
    want = authors_weight(*theirs, move_lambda)
    assert reinit_strength(*ours, move_lambda) == pytest.approx(want, abs=1e-12)


@pytest.mark.unit
def test_schedule_is_the_authors():
    for every, most, epochs in ((20, 3, 90), (4, 3, 30), (1, 2, 6), (5, 0, 20)):
        dnr = DiagnosingRelearning(reinit_every=every, max_reinits=most)
        assert [e for e in range(epochs) if dnr.diagnoses(e)] == authors_schedule(epochs, every, most)
    assert [e for e in range(100) if DiagnosingRelearning().diagnoses(e)] == [20, 40, 60]


# ---- the re-initialisation and the hooks ------------------------------------------------------------------
def _batch(features: str, seed: int, b: int = 12) -> dict:
    batch = random_inputs(features, torch.Generator().manual_seed(seed), b, short_audio={})
    batch["label"] = torch.arange(b) % 6
    return batch


def _set_up(features: str, **params):
    torch.manual_seed(0)
    model = build_model(features=features, fusion="late-linear", size="tiny", input_dims=DIMS)
    balancer = DiagnosingRelearning(**params)
    balancer.sync_logs = False
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    ctx = StepContext(model, balancer, optimizer, torch.amp.GradScaler("cpu", enabled=False), parameters,
                      torch.device("cpu"))  # fmt: skip
    return model, balancer, optimizer, ctx


def _validate(model, balancer, features: str, seeds=(50, 51)) -> None:
    """The trainer's validation pass as the balancer sees it: eval mode, no gradients, every batch."""
    model.eval()
    with torch.no_grad():
        for seed in seeds:
            batch = _batch(features, seed)
            balancer.observe_validation(batch, model(batch))
    model.train()


@pytest.mark.unit
@pytest.mark.parametrize("features", ["raw", "cached"])
def test_relearn_moves_each_encoder_towards_its_initial_weights(features):
    """After two updates, a pending (α_audio, α_video) is applied at the next forward as the authors' `reinit`
    computes it, to every encoder parameter; the heads, the fusion, the buffers and Adam's moments stay."""
    model, balancer, optimizer, ctx = _set_up(features)
    init = copy.deepcopy(model.state_dict())
    for seed in (0, 1):
        assert train_step(ctx, _batch(features, seed)) is not None
    before = copy.deepcopy(model.state_dict())
    moments = copy.deepcopy(optimizer.state_dict()["state"])
    alpha = {"audio": 0.3, "video": math.tanh(3 * 0.25)}
    expected = {}
    for name, tensor in before.items():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        trained = dict(model.named_parameters()).get(name) is not None
        expected[name] = authors_reinit(tensor, init[name], alpha[m]) if m and trained else tensor
    balancer.pending = dict(alpha)
    model.eval()  # only the re-initialisation: no BatchNorm statistics move in this forward
    with torch.no_grad():
        balancer.forward(model, _batch(features, 2))
    after = model.state_dict()
    moved = 0
    for name in before:
        assert torch.equal(after[name], expected[name]), name
        moved += not torch.equal(after[name], before[name])
    assert moved > 4 and balancer.pending is None
    assert same_state(optimizer.state_dict()["state"], moments)


@pytest.mark.unit
@pytest.mark.parametrize("features", ["raw", "cached"])
def test_one_diagnosis_through_the_hooks(features):
    """reinit_every=1: nothing is kept in epoch 0; in epoch 1 the training batches' features (those the
    update's forward computed) and the validation pass's give P_D, P_V, α = tanh(λ g); the next forward
    re-initialises the encoders with that α."""
    model, balancer, _, ctx = _set_up(features, reinit_every=1, move_lambda=4.0)
    seen = []  # the features each training forward handed to the loss
    forward = balancer.forward

    def recording_forward(model, batch):
        out = forward(model, batch)
        seen.append(({m: f.detach().clone() for m, f in out.features.items()}, batch["label"]))
        return out

    balancer.forward = recording_forward
    init = copy.deepcopy(model.state_dict())
    train_step(ctx, _batch(features, 0))
    assert balancer.state_dict()["train_rows"] == {}  # epoch 0 is never diagnosed: nothing kept
    _validate(model, balancer, features)
    assert balancer.on_epoch_end(0, {}) == {} and balancer.history == []
    seen.clear()
    for seed in (1, 2, 3):
        train_step(ctx, _batch(features, seed))
    model.eval()
    val = [(model(b).features, b["label"]) for b in (_batch(features, 50), _batch(features, 51))]
    model.train()
    _validate(model, balancer, features)
    logs = balancer.on_epoch_end(1, {})
    for m in ("audio", "video"):
        p_train = cluster_purity(torch.cat([f[m] for f, _ in seen]), torch.cat([y for _, y in seen]), 6,
                                 restarts=10, seed=0)  # fmt: skip
        p_val = cluster_purity(torch.cat([f[m] for f, _ in val]).detach(), torch.cat([y for _, y in val]), 6,
                               restarts=10, seed=0)  # fmt: skip
        assert (logs[f"dnr_purity_train_{m}"], logs[f"dnr_purity_val_{m}"]) == (p_train, p_val)
        assert logs[f"dnr_alpha_{m}"] == pytest.approx(authors_weight(p_train, p_val, 4.0), abs=1e-15)
    assert balancer.pending == {m: logs[f"dnr_alpha_{m}"] for m in ("audio", "video")}
    assert len(balancer.history) == 1 and balancer.history[0]["epoch"] == 1.0
    before = copy.deepcopy(model.state_dict())
    train_step(ctx, _batch(features, 4))  # re-initialises, then updates: check the re-initialisation alone
    balancer.pending = {m: logs[f"dnr_alpha_{m}"] for m in ("audio", "video")}
    model.load_state_dict(before)
    model.eval()
    with torch.no_grad():
        balancer.forward(model, _batch(features, 4))
    for name, p in model.encoders.named_parameters():
        m = name.split(".")[0]
        want = authors_reinit(before[f"encoders.{name}"], init[f"encoders.{name}"], logs[f"dnr_alpha_{m}"])
        assert torch.equal(p, want), name


@pytest.mark.unit
def test_a_diagnosis_without_validation_features_says_what_to_call():
    _, balancer, _, ctx = _set_up("raw", reinit_every=1)
    train_step(ctx, _batch("raw", 0))
    balancer.on_epoch_end(0, {})
    train_step(ctx, _batch("raw", 1))
    with pytest.raises(RuntimeError, match="observe_validation"):
        balancer.on_epoch_end(1, {})


@pytest.mark.unit
def test_state_mid_epoch_survives_a_checkpoint_and_gives_the_same_diagnosis():
    """Half a diagnosed epoch's rows, θ_init, the epoch: saved (torch.save, weights_only load) into a fresh
    balancer, which then diagnoses exactly as the original."""
    model, balancer, _, ctx = _set_up("raw", reinit_every=1)
    train_step(ctx, _batch("raw", 0))
    _validate(model, balancer, "raw")
    balancer.on_epoch_end(0, {})
    for seed in (1, 2):
        train_step(ctx, _batch("raw", seed))
    buffer = io.BytesIO()
    torch.save(balancer.state_dict(), buffer)
    buffer.seek(0)
    restored = DiagnosingRelearning(reinit_every=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert same_state(restored.state_dict(), balancer.state_dict())
    assert restored.state_dict()["train_rows"]["audio"].shape == (24, 16)  # two batches of 12, tiny D = 16
    last = _batch("raw", 3)
    out = model(last)  # the epoch's last training batch and its validation pass, the same for both
    model.eval()
    with torch.no_grad():
        val = [(batch, model(batch)) for batch in (_batch("raw", 50), _batch("raw", 51))]
    outputs = []
    for b in (balancer, restored):
        b.loss(model, last, out)
        for batch, val_out in val:
            b.observe_validation(batch, val_out)
        outputs.append(b.on_epoch_end(1, {}))
    assert outputs[0] == outputs[1] and outputs[0]
    assert_state_round_trip("dnr", balancer)
    with pytest.raises(ValueError, match="train_rows"):
        restored.load_state_dict({"epoch": 1})


@pytest.mark.unit
@pytest.mark.parametrize(
    "key, value",
    [("move_lambda", 0), ("move_lambda", float("nan")), ("move_lambda", True), ("reinit_every", 0),
     ("reinit_every", 2.0), ("max_reinits", -1), ("kmeans_restarts", 0), ("kmeans_seed", -1)],
)  # fmt: skip
def test_bad_hyper_parameters_name_key_and_value(key, value):
    with pytest.raises(ValueError, match=key):
        DiagnosingRelearning(**{key: value})


@pytest.mark.unit
def test_defaults_are_the_authors():
    dnr = build_balancer("dnr")
    assert METHODS["dnr"] is DiagnosingRelearning and dnr.supported_fusions is None
    assert (dnr.move_lambda, dnr.reinit_every, dnr.max_reinits) == (3.0, 20, 3)  # ours.sh, ours.py l. 53-56
    assert (dnr.kmeans_restarts, dnr.kmeans_seed) == (10, 0)
    assert set(dnr.search_space) == {"move_lambda", "reinit_every"}


# ---- several training processes, in threads ------------------------------------------------------------
class _Exchange:
    """What torch.distributed's all_reduce / broadcast do, for `size` threads."""

    def __init__(self, size: int):
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * size

    def share(self, rank: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = tensor.detach().clone()
        self.barrier.wait()
        every = [t.clone() for t in self.slots]
        self.barrier.wait()  # nobody overwrites a slot before every rank has read it
        return every


@dataclass(frozen=True)
class ThreadWorld(World):
    """A World whose collectives run between threads of this process (rank order, as NCCL and gloo sum)."""

    exchange: _Exchange | None = None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        every = self.exchange.share(self.rank, tensor)
        return functools.reduce(torch.add, every[1:], every[0])

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.copy_(self.exchange.share(self.rank, tensor)[0])


@pytest.mark.unit
def test_two_ranks_cluster_every_ranks_training_rows_and_take_rank_0s_alpha():
    """Rank r holds its own training batches (and, here, its own validation batch): both ranks report the
    diagnosis of one process that saw both ranks' training rows, with rank 0's validation rows."""
    model, _, _, _ = _set_up("raw")
    model.eval()  # the same outputs, whichever thread asks
    with torch.no_grad():
        train_batches = [[_batch("raw", 10 + 2 * r + i) for i in range(2)] for r in range(2)]  # rank, step
        train_out = [[model(b) for b in batches] for batches in train_batches]
        val = [(_batch("raw", 60 + r), None) for r in range(2)]
        val = [(b, model(b)) for b, _ in val]

    def epoch_end(balancer, steps, val_rank) -> dict[str, float]:
        for batch, out in steps:
            balancer.loss(model, batch, out)
        balancer.observe_validation(*val[val_rank])
        return balancer.on_epoch_end(1, {})

    exchange = _Exchange(2)
    ranks = [DiagnosingRelearning(reinit_every=1) for _ in range(2)]
    results: list[dict | None] = [None, None]

    def run(rank: int) -> None:
        ranks[rank].world = ThreadWorld(rank=rank, size=2, exchange=exchange)
        ranks[rank].epoch = 1
        results[rank] = epoch_end(ranks[rank], zip(train_batches[rank], train_out[rank]), rank)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one = DiagnosingRelearning(reinit_every=1)
    one.epoch = 1
    steps = [*zip(train_batches[0], train_out[0]), *zip(train_batches[1], train_out[1])]  # rank order
    want = epoch_end(one, steps, 0)
    alphas = [{k: v for k, v in want.items() if k.startswith("dnr_alpha")}] * 2
    assert [{k: v for k, v in r.items() if k.startswith("dnr_alpha")} for r in results] == alphas
    assert results[0] == want  # rank 0's purities are those of all the training rows
    assert ranks[1].pending == ranks[0].pending == one.pending


# ---- through the trainer -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return write_shard_folder(out / "raw", "raw", counts={"train": 24, "validation": 12, "test": 8})


@pytest.mark.integration
@pytest.mark.parametrize("stop_at", [4, 7])
def test_train_and_resume_exactly(shards, tmp_path, stop_at):
    """Three epochs of three batches, diagnosed after epochs 1 and 2 (the first α applied at step 7):
    interrupted in the middle of the first diagnosed epoch (step 4: half its training rows in last.pt) or
    right after its re-initialisation (step 7: last.pt of the epoch's end holds the pending α), then resumed,
    the run ends with the weights and the balancer state of an uninterrupted one."""
    kw = {
        "data": shards, "features": "raw", "size": "tiny", "epochs": 3, "batch_size": 8, "seed": 1,
        "device": "cpu", "dvclive": False, "method": "dnr", "fusion": "late-linear", "checkpoint_every": 2,
        "method_params": {"reinit_every": 1},
    }  # fmt: skip
    train(TrainConfig(out=tmp_path / "straight", **kw))

    class Interrupt(Exception):
        pass

    def interrupt(state):
        if state.step == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(TrainConfig(out=tmp_path / "resumed", **kw), on_step=interrupt)
    performed = []
    train(
        TrainConfig(out=tmp_path / "resumed", resume=True, **kw), on_step=lambda s: performed.append(s.step)
    )
    resumed_from = {4: 4, 7: 6}[stop_at]  # last.pt: step 4 (checkpoint_every), the end of epoch 1 (step 6)
    assert performed == list(range(resumed_from + 1, 10))
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert same_state(a["balancer"], b["balancer"])
    history = a["balancer"]["history"]
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    assert all(0 <= h[f"dnr_alpha_{m}"] < 1 for h in history for m in ("audio", "video"))


@pytest.mark.integration
def test_best_checkpoint_holds_the_weights_validated_before_the_reinitialisation(
    shards, tmp_path, monkeypatch
):
    """A diagnosed epoch selected as the best: best.pt holds the weights its validation saw, not the
    re-initialised ones (the authors too re-initialise after that epoch's evaluation)."""
    real = train_module.evaluate_split
    seen = []

    def scripted(model, loader, *args, **kw):  # epoch 1 (diagnosed) is the best: 0.2, 0.9, 0.1
        metrics, loss = real(model, loader, *args, **kw)
        if loader.split == "validation" and len(seen) < 3:
            metrics["fused"]["accuracy"] = (0.2, 0.9, 0.1)[len(seen)]
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return metrics, loss

    monkeypatch.setattr(train_module, "evaluate_split", scripted)
    config = TrainConfig(
        data=shards, out=tmp_path / "run", features="raw", size="tiny", epochs=3, batch_size=8, seed=1,
        device="cpu", dvclive=False, method="dnr", method_params={"reinit_every": 1, "move_lambda": 10.0},
    )  # fmt: skip
    result = train(config)
    assert result["selected"]["epoch"] == 1
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(best[k], seen[1][k]) for k in best)
    history = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["balancer"]["history"]
    assert history[0]["epoch"] == 1.0 and max(history[0][f"dnr_alpha_{m}"] for m in ("audio", "video")) > 0
