"""ReconBoost: the boosting loss against a per-sample re-expression of the authors' formula
(huacong/ReconBoost `train.py`: `boosting_loss`, `ga_loss`), the freezing of the learners that are not
trained (exact, under Adam with weight decay and warm moments), the ensemble update, the BatchNorm
running statistics against the authors' encoder passes, the stage / modality schedule with its
state_dict round trip, and the refusals."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import three_modality_model_and_batch

from mlb.balancing.reconboost import ReconBoost, reconboost_phase
from mlb.models import build_model
from mlb.models.model import ModelOutput

pytestmark = pytest.mark.unit

AV = ("audio", "video")


# ---- models and batches ------------------------------------------------------------------------------
def _raw_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(b, 1, 32, 24, generator=g),
        "video": torch.randn(b, 3, 3, 32, 32, generator=g),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _cached_batch(b=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 9, dtype=torch.bool)
    mask[0, 5:] = False
    return {
        "audio": torch.randn(b, 9, 5, generator=g),
        "audio_mask": mask,
        "video": torch.randn(b, 4, 7, generator=g),
        "video_mask": torch.ones(b, 4, dtype=torch.bool),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _model(features):
    torch.manual_seed(0)
    return build_model(
        features=features, fusion="late-linear", size="tiny", input_dims={"audio": 5, "video": 7}
    )


def _step(model, batch, balancer, optimizer, set_to_none=True):
    """One update as `mlb.train.step.train_step` runs it."""
    out = balancer.forward(model, batch)
    loss, logs = balancer.loss(model, batch, out)
    optimizer.zero_grad(set_to_none=set_to_none)
    loss.backward()
    logs |= balancer.before_step(model, batch, out)
    optimizer.step()
    return out, logs


# ---- the authors' formula, per sample ----------------------------------------------------------------
def _reference(parts, label, m, others, previous, w1, w2, alpha):
    """train.py l. 339-351, one sample at a time: boosting_loss_i = −w1 · mean_c(t_c log p_c)
    + w2 · mean_c(t_c q_c log p_c), t the one-hot target, q the softmax of the other learners' summed
    logits (or a [B, 1] constant, softmax 1, at the first stage); loss = mean_i + α · MSE(softmaxes)."""
    b, c = parts[m].shape
    total_boost = 0.0
    for i in range(b):
        z = parts[m][i].detach().double()
        y = int(label[i])
        log_p = [float(z[j] - torch.logsumexp(z, 0)) for j in range(c)]
        if others:
            o = sum(parts[k][i].detach().double() for k in others)
            q = [math.exp(float(o[j] - torch.logsumexp(o, 0))) for j in range(c)]
        else:
            q = [1.0] * c  # softmax over the single column of c0, broadcast
        t = [1.0 if j == y else 0.0 for j in range(c)]
        own = sum(t[j] * log_p[j] for j in range(c)) / c
        recon = sum(t[j] * q[j] * log_p[j] for j in range(c)) / c
        total_boost += -w1 * own + w2 * recon
    boost = total_boost / b
    if previous is None:
        return boost, None, boost
    sq = 0.0
    for i in range(b):
        pm = torch.softmax(parts[m][i].detach().double(), 0)
        pp = torch.softmax(parts[previous][i].detach().double(), 0)
        sq += float(((pm - pp) ** 2).sum())
    ga = sq / (b * c)
    return boost, ga, boost + alpha * ga


def _random_out(model, b=7, c=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    mods = model.modalities
    dim = model.unimodal_heads[mods[0]].in_features
    parts = {m: (3 * torch.randn(b, c, generator=g)).requires_grad_() for m in mods}
    features = {m: torch.randn(b, dim, generator=g) for m in mods}
    fused = sum(parts.values())
    out = ModelOutput(
        fused=fused,
        unimodal={m: model.unimodal_heads[m](f) for m, f in features.items()},
        features=features,
        fused_parts=parts,
    )
    return out, torch.randint(0, c, (b,), generator=g)


CASES = [  # (modalities, epoch with boost_epochs = ensemble_epochs = 2, boosted, others, previous)
    (AV, 0, "audio", (), None),  # first stage: q = 1, no GA term
    (AV, 1, "audio", (), None),
    (AV, 4, "video", ("audio",), "audio"),
    (AV, 8, "audio", ("video",), "video"),
    (("a", "b", "c"), 4, "b", ("a",), "a"),
    (("a", "b", "c"), 8, "c", ("a", "b"), "b"),
    (("a", "b", "c"), 13, "a", ("b", "c"), "c"),
]


@pytest.mark.parametrize("mods, epoch, m, others, previous", CASES)
@pytest.mark.parametrize("w1, w2, alpha", [(5.0, 1.0, 0.5), (3.0, 1.0, 0.5), (2.0, 1.5, 2.0)])
def test_boosting_loss_matches_the_authors_formula(mods, epoch, m, others, previous, w1, w2, alpha):
    model = _model("cached") if mods == AV else three_modality_model_and_batch()[0]
    c = 6 if mods == AV else 4
    out, label = _random_out(model, c=c)
    rb = ReconBoost(weight1=w1, weight2=w2, alpha=alpha, boost_epochs=2, ensemble_epochs=2)
    rb.epoch = epoch
    phase = rb.phase(model)
    assert (phase.boosting, phase.modality, phase.others, phase.previous) == (True, m, others, previous)

    total, logs = rb.loss(model, {"label": label}, out)
    boost, ga, want = _reference(out.fused_parts, label, m, others, previous, w1, w2, alpha)
    assert logs["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert logs["loss_boost"] == pytest.approx(boost, rel=1e-5, abs=1e-7)
    assert ("loss_ga" in logs) == (ga is not None)
    if ga is not None:
        assert logs["loss_ga"] == pytest.approx(ga, rel=1e-5, abs=1e-7)
    probes = sum(F.cross_entropy(model.unimodal_heads[k](out.features[k]), label) for k in mods)
    assert float(total.detach()) == pytest.approx(want + float(probes.detach()), rel=1e-5)
    assert logs["boost_modality"] == mods.index(m) and logs["boosting"] == 1.0
    assert logs["stage"] == epoch // 4

    # gradient: only z_m gets one, that of the boosting term alone (the GA term is detached)
    total.backward()
    z = out.fused_parts[m].detach().clone().requires_grad_()
    y = label
    log_p = F.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    if others:
        q = (
            torch.softmax(sum(out.fused_parts[k].detach() for k in others), 1)
            .gather(1, y[:, None])
            .squeeze(1)
        )
    else:
        q = torch.ones_like(log_p)
    ((-w1 * log_p + w2 * q * log_p) / c).mean().backward()
    torch.testing.assert_close(out.fused_parts[m].grad, z.grad)
    for k in mods:
        if k != m:
            assert out.fused_parts[k].grad is None


def test_ga_gradient_option_lets_the_ga_term_reach_the_boosted_learner():
    model = _model("cached")
    out, label = _random_out(model)
    rb = ReconBoost(alpha=2.0, boost_epochs=1, ensemble_epochs=1, ga_gradient=True)
    rb.epoch = 2  # stage 1: video boosted, GA against audio
    total, _ = rb.loss(model, {"label": label}, out)
    total.backward()
    z = out.fused_parts["video"].detach().clone().requires_grad_()
    a = out.fused_parts["audio"].detach()
    log_p = F.log_softmax(z, 1).gather(1, label[:, None]).squeeze(1)
    q = torch.softmax(a, 1).gather(1, label[:, None]).squeeze(1)
    ref = ((-5 * log_p + q * log_p) / 6).mean() + 2.0 * (
        (torch.softmax(z, 1) - torch.softmax(a, 1)) ** 2
    ).mean()
    ref.backward()
    torch.testing.assert_close(out.fused_parts["video"].grad, z.grad)
    assert out.fused_parts["audio"].grad is None


# ---- freezing under Adam -----------------------------------------------------------------------------
def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("features", ["raw", "cached"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_boosting_update_moves_only_the_boosted_learner(features, set_to_none):
    model = _model(features)
    batch = _raw_batch() if features == "raw" else _cached_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    rb.epoch = 3  # stage 1's ensemble epoch: every learner trained, so Adam's moments are warm everywhere
    _step(model, batch, rb, opt, set_to_none)
    _step(model, batch, rb, opt, set_to_none)
    fusion = model.fusion
    for boosted, frozen, epoch in (("video", "audio", 2), ("audio", "video", 4)):
        rb.epoch = epoch
        assert rb.phase(model).modality == boosted and rb.phase(model).boosting
        before = _snapshot(model)
        moments = {k: v.clone() for k, v in opt.state[fusion.weight].items() if torch.is_tensor(v)}
        enc_state = {
            id(p): {k: v.clone() for k, v in opt.state[p].items()}
            for p in model.encoders[frozen].parameters()
        }
        _, logs = _step(model, batch, rb, opt, set_to_none)
        assert logs["boost_modality"] == AV.index(boosted) and "loss_ga" in logs
        after = _snapshot(model)
        for n in before:
            same = torch.equal(before[n], after[n])
            if n.startswith(f"encoders.{frozen}."):
                assert same, f"{n} of the frozen learner moved"
        moved = [
            n for n in before if n.startswith(f"encoders.{boosted}.") and not torch.equal(before[n], after[n])
        ]
        assert moved, "the boosted encoder did not move"
        cols_f, cols_b = fusion.columns[frozen], fusion.columns[boosted]
        assert torch.equal(before["fusion.weight"][:, cols_f], after["fusion.weight"][:, cols_f])
        assert not torch.equal(before["fusion.weight"][:, cols_b], after["fusion.weight"][:, cols_b])
        assert not torch.equal(before["fusion.bias"], after["fusion.bias"])  # shared: trained in every update
        for k, v in opt.state[fusion.weight].items():
            if torch.is_tensor(v) and v.shape == fusion.weight.shape:
                assert torch.equal(v[:, cols_f], moments[k][:, cols_f]), (
                    f"Adam {k} of the frozen columns changed"
                )
                assert not torch.equal(v[:, cols_b], moments[k][:, cols_b])
        for p in model.encoders[frozen].parameters():
            assert p.grad is None
            for k, v in opt.state[p].items():
                assert torch.equal(v, enc_state[id(p)][k])  # Adam skipped it: state untouched
        for m in AV:  # the probes train in every update
            assert not torch.equal(before[f"unimodal_heads.{m}.weight"], after[f"unimodal_heads.{m}.weight"])


def test_first_step_frozen_columns_keep_zero_moments():
    """At the very first step Adam creates its state: the frozen columns' moments stay at their initial 0."""
    model = _model("cached")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    rb = ReconBoost()
    w0 = model.fusion.weight.detach().clone()
    _step(model, _cached_batch(), rb, opt)  # epoch 0: audio boosted
    cols = model.fusion.columns["video"]
    assert torch.equal(model.fusion.weight[:, cols], w0[:, cols])
    for v in opt.state[model.fusion.weight].values():
        if torch.is_tensor(v) and v.shape == w0.shape:
            assert torch.equal(v[:, cols], torch.zeros_like(v[:, cols]))
            assert v[:, model.fusion.columns["audio"]].abs().sum() > 0


def test_three_modalities_boosting_freezes_the_other_two():
    model, batch = three_modality_model_and_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    rb.epoch = 5  # stage 2's ensemble epoch: all three trained
    _step(model, batch, rb, opt)
    rb.epoch = 6  # stage 3: a boosted against the ensemble of b and c, GA against c
    before = _snapshot(model)
    _step(model, batch, rb, opt)
    after = _snapshot(model)
    for m in ("b", "c"):
        assert all(torch.equal(before[n], after[n]) for n in before if n.startswith(f"encoders.{m}."))
        cols = model.fusion.columns[m]
        assert torch.equal(before["fusion.weight"][:, cols], after["fusion.weight"][:, cols])
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("encoders.a."))


@pytest.mark.parametrize("features", ["raw", "cached"])
def test_ensemble_update_trains_every_learner(features):
    model = _model(features)
    batch = _raw_batch() if features == "raw" else _cached_batch()
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    rb.epoch = 3  # stage 1 ensemble epoch: both learners boosted once
    out = rb.forward(model, batch)
    total, logs = rb.loss(model, batch, out)
    assert logs["boosting"] == 0.0 and logs["loss"] == pytest.approx(logs["loss_fused"])
    assert logs["loss_ensemble"] == pytest.approx(float(F.cross_entropy(out.fused.detach(), batch["label"])))
    model.zero_grad(set_to_none=True)
    total.backward()
    rb.before_step(model, batch, out)
    for m in AV:
        grads = [p.grad for p in model.encoders[m].parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        assert model.fusion.weight.grad[:, model.fusion.columns[m]].abs().sum() > 0
    assert rb._frozen is None  # nothing to freeze


def test_first_stage_ensemble_holds_only_the_boosted_learner():
    """Stage 0's ensemble epochs fine-tune the audio-only ensemble (the authors' net_ensemble then holds
    audio alone); video, not boosted yet, stays frozen."""
    model = _model("cached")
    batch = _cached_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    rb.epoch = 1
    before = _snapshot(model)
    out, logs = _step(model, batch, rb, opt)
    want = F.cross_entropy(out.fused_parts["audio"].detach(), batch["label"])
    assert logs["loss"] == pytest.approx(float(want), rel=1e-5)
    after = _snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("encoders.video."))
    cols = model.fusion.columns["video"]
    assert torch.equal(before["fusion.weight"][:, cols], after["fusion.weight"][:, cols])
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("encoders.audio."))


def test_skipped_step_leaves_no_hook_behind():
    """A step the trainer skips (non-finite gradients) must not leave the freeze armed for a later step."""
    model = _model("cached")
    batch = _cached_batch()
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    out = rb.forward(model, batch)
    loss, _ = rb.loss(model, batch, out)
    loss.backward()
    rb.before_step(model, batch, out)  # armed, but no optimizer.step() follows
    frozen = rb._frozen
    assert frozen is not None and frozen._handles
    rb.epoch = 3  # the next update trains everything
    rb.forward(model, batch)
    assert not frozen._handles and rb._frozen is None


# ---- BatchNorm running statistics: the authors' encoder passes -------------------------------------------
def _authors_passes(encoders, batch, mods, stage, boosting):
    """The encoder passes of one update of the authors' `train.py` (l. 329-348 boosting, l. 397 ensemble)
    with `DynamicNet.forward` / `forward_grad`, written out (train mode throughout). `net_ensemble` holds
    the learners boosted in the stages before s, and in the ensemble epochs also s's (`add` at l. 366)."""

    def run(k):
        encoders[k](batch[k], batch.get(f"{k}_mask"))

    m = mods[stage % len(mods)]
    if boosting:
        for k in mods[: min(stage, len(mods))]:  # net_ensemble.forward(data, mask_model=m)
            if k != m:
                run(k)
        run(m)  # out_obj = model(model_input_map[model_name])
        if stage > 0:  # use_ga: pre_out_obj = pre_model(...), the learner of stage s - 1
            run(mods[(stage - 1) % len(mods)])
    else:
        for k in mods[: min(stage + 1, len(mods))]:  # net_ensemble.forward_grad(data)
            run(k)


@pytest.mark.parametrize(
    "case, passes",  # passes: each encoder's train-mode passes over 4 stages, counted by hand
    [("raw", {"audio": 10, "video": 7}), ("three", {"a": 9, "b": 7, "c": 5})],
)
def test_batchnorm_statistics_follow_the_authors_passes(case, passes):
    """Stages 0-3 (1 boosting + 1 ensemble epoch each, 2 batches per epoch) through the trainer's hooks;
    a copy of the model, given the trained weights before each update, makes the authors' passes on the
    same batch: every encoder buffer (BatchNorm running mean, variance, batch count) must match. The passes
    per update (boosting + ensemble) by hand, M = 2: audio 1 + 1 (stage 0), 2 + 1, 1 + 1, 2 + 1; video 0 + 0,
    1 + 1, 2 + 1, 1 + 1. M = 3: a 1 + 1, 2 + 1, 1 + 1, 1 + 1; b 0, 1 + 1, 2 + 1, 1 + 1; c 0, 0, 1 + 1, 2 + 1."""
    if case == "raw":
        model, mods = _model("raw"), AV
        batches = [_raw_batch(seed=s) for s in range(2)]
    else:
        model, batch = three_modality_model_and_batch()
        mods = ("a", "b", "c")
        g = torch.Generator().manual_seed(5)
        other = {m: torch.randn_like(batch[m]) for m in mods} | {
            "label": torch.randint(0, 4, (5,), generator=g)
        }
        batches = [batch, other]
    assert any("running_mean" in n for n, _ in model.encoders[mods[0]].named_buffers())  # BatchNorm inside
    reference = copy.deepcopy(model)
    model.train()
    reference.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    start = {m: [b.clone() for b in model.encoders[m].buffers()] for m in mods}
    for epoch in range(8):
        stage, within = divmod(epoch, 2)
        for batch in batches:
            with torch.no_grad():
                for theirs, ours in zip(reference.parameters(), model.parameters()):
                    theirs.copy_(ours)  # the weights this update starts from, not the buffers
                _authors_passes(reference.encoders, batch, mods, stage, within == 0)
            _step(model, batch, rb, opt)
            for m in mods:
                for (name, ours), theirs in zip(
                    model.encoders[m].named_buffers(), reference.encoders[m].buffers()
                ):
                    torch.testing.assert_close(
                        ours, theirs, rtol=1e-6, atol=1e-7, msg=f"{m} {name} epoch {epoch}"
                    )
        rb.on_epoch_end(epoch, {})
        if epoch == 1:  # stage 0: the learners not yet boosted never ran
            for m in mods[1:]:
                assert all(torch.equal(b, b0) for b, b0 in zip(model.encoders[m].buffers(), start[m]))
    for m in mods:
        counts = {int(b) for n, b in model.encoders[m].named_buffers() if n.endswith("num_batches_tracked")}
        assert counts == {passes[m] * len(batches)}, (m, counts)


def test_ga_target_is_the_previous_learners_second_pass():
    """From stage 1 the boosting update runs the previous learner again (the authors' `pre_model`) and
    ℓ_GA reads that pass; eval mode and the ensemble epochs make no second pass."""
    model = _model("raw")
    batch = _raw_batch()
    rb = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    rb.epoch = 2  # stage 1: video boosted, audio the previous learner
    model.train()
    calls = []
    hook = model.encoders["audio"].register_forward_hook(lambda *a: calls.append(1))
    out = rb.forward(model, batch)
    assert len(calls) == 2 and out.previous_again is not None
    _, logs = rb.loss(model, batch, out)
    want = F.mse_loss(
        torch.softmax(out.fused_parts["video"].detach(), 1), torch.softmax(out.previous_again, 1)
    )
    assert logs["loss_ga"] == pytest.approx(float(want), rel=1e-6)
    # dropout-free encoder: the second pass gives the first one's output
    torch.testing.assert_close(out.previous_again, out.fused_parts["audio"].detach())
    calls.clear()
    rb.epoch = 3  # the ensemble epoch: one pass each
    assert rb.forward(model, batch).previous_again is None and len(calls) == 1
    calls.clear()
    rb.epoch = 2
    model.eval()
    with torch.no_grad():
        assert rb.forward(model, batch).previous_again is None and len(calls) == 1
    hook.remove()


# ---- schedule and state ------------------------------------------------------------------------------
def test_schedule_defaults_two_modalities():
    rows = [reconboost_phase(e, AV, 4, 4) for e in range(20)]
    assert [r.stage for r in rows] == [e // 8 for e in range(20)]
    assert [r.modality for r in rows] == ["audio"] * 8 + ["video"] * 8 + ["audio"] * 4
    assert [r.boosting for r in rows[:8]] == [True] * 4 + [False] * 4
    assert rows[0].others == () and rows[0].previous is None and rows[0].members == ("audio",)
    assert rows[4].trainable == ("audio",)  # stage 0's ensemble: audio alone
    assert rows[8].others == ("audio",) and rows[8].previous == "audio" and rows[8].trainable == ("video",)
    assert rows[12].trainable == AV
    assert rows[16].others == ("video",) and rows[16].previous == "video"


def test_schedule_three_modalities():
    mods = ("a", "b", "c")
    got = [
        (p.modality, p.boosting, p.others, p.previous, p.members)
        for p in (reconboost_phase(e, mods, 1, 1) for e in range(8))
    ]
    assert got == [
        ("a", True, (), None, ("a",)),
        ("a", False, (), None, ("a",)),
        ("b", True, ("a",), "a", ("a", "b")),
        ("b", False, ("a",), "a", ("a", "b")),
        ("c", True, ("a", "b"), "b", mods),
        ("c", False, ("a", "b"), "b", mods),
        ("a", True, ("b", "c"), "c", mods),
        ("a", False, ("b", "c"), "c", mods),
    ]
    assert reconboost_phase(3, mods, 1, 0).modality == "a"  # no ensemble epochs: one epoch per stage


def test_on_epoch_end_counts_and_state_round_trip():
    model = _model("cached")
    rb = ReconBoost(boost_epochs=2, ensemble_epochs=1)
    seen = []
    for e in range(4):
        phase = rb.phase(model)
        seen.append((phase.stage, phase.modality, phase.boosting))
        logs = rb.on_epoch_end(e, {"acc": 0.5})
        assert logs == {"stage": float(e // 3), "boosting": float(e % 3 < 2), "stage_end": float(e % 3 == 2)}
    assert seen == [(0, "audio", True), (0, "audio", True), (0, "audio", False), (1, "video", True)]
    buffer = io.BytesIO()
    torch.save(rb.state_dict(), buffer)
    buffer.seek(0)
    resumed = ReconBoost(boost_epochs=2, ensemble_epochs=1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.epoch == rb.epoch == 4
    assert resumed.phase(model) == rb.phase(model)
    rb.on_epoch_end(4, {})
    resumed.on_epoch_end(4, {})
    assert resumed.phase(model) == rb.phase(model) == reconboost_phase(5, AV, 2, 1)
    with pytest.raises(ValueError, match="epoch"):
        resumed.load_state_dict({"stage": 1})


# ---- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["mid-mlp", "film", "gated", "tf"])
def test_refuses_other_fusions(fusion):
    model = build_model(features="cached", fusion=fusion, size="tiny", input_dims={"audio": 5, "video": 7})
    with pytest.raises(ValueError, match=f"does not support fusion='{fusion}'"):
        ReconBoost.check_model(model)


@pytest.mark.parametrize("classifier", ["cosine", "shared"])
def test_refuses_late_linear_variants_without_additive_linear_parts(classifier):
    model = build_model(
        features="cached",
        fusion="late-linear",
        size="tiny",
        input_dims={"audio": 5, "video": 7},
        classifier=classifier,
    )
    with pytest.raises(ValueError, match="plain Late-Linear"):
        ReconBoost.check_model(model)


def test_accepts_late_linear():
    ReconBoost.check_model(_model("raw"))
    ReconBoost.check_model(three_modality_model_and_batch()[0])


@pytest.mark.parametrize(
    "key, value",
    [
        ("weight1", 0),
        ("weight1", float("nan")),
        ("weight2", -1.0),
        ("alpha", float("inf")),
        ("alpha", True),
        ("boost_epochs", 0),
        ("boost_epochs", 1.5),
        ("ensemble_epochs", -1),
        ("ga_gradient", "yes"),
    ],
)
def test_bad_hyper_parameters_name_key_and_value(key, value):
    with pytest.raises(
        ValueError, match=rf"reconboost {key} .*got {value!r}".replace("(", r"\(").replace(")", r"\)")
    ):
        ReconBoost(**{key: value})


def test_defaults_are_the_authors():
    rb = ReconBoost()
    assert (rb.weight1, rb.weight2, rb.alpha, rb.boost_epochs, rb.ensemble_epochs, rb.ga_gradient) == (
        5.0,
        1.0,
        0.5,
        4,
        4,
        False,
    )
    with pytest.raises(TypeError):
        ReconBoost(5.0)  # keyword-only
