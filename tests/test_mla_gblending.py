"""MLA and G-Blending: each rule on hand-made numbers and on a tiny model, held to the paper's formulas."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from mlb.balancing import build_balancer
from mlb.balancing.gblending import GBlending, batch_rows, gblend_weights, holdout_mask
from mlb.balancing.mla import MLA, owm_update
from mlb.models import build_model
from mlb.models.fusion import entropy_weights
from mlb.train.config import TrainConfigError, check_method_params
from pipeline.cli.training import parse_method_params

pytestmark = pytest.mark.unit

DIMS = {"audio": 5, "video": 7}


def _cached_batch(b=8, seed=0, modalities=("audio", "video")):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for m in modalities:
        d = {"audio": 5, "video": 7, "text": 3}[m]
        batch[m] = torch.randn(b, 6, d, generator=g)
        batch[f"{m}_mask"] = torch.ones(b, 6, dtype=torch.bool)
    batch["label"] = torch.randint(0, 6, (b,), generator=g)
    batch["id"] = [f"c{seed}_{i}" for i in range(b)]
    return batch


# ---- MLA ---------------------------------------------------------------------------------------------
def test_owm_update_is_the_recursive_projector():
    p = torch.eye(3)
    r = torch.tensor([1.0, 2.0, 0.0])
    new = owm_update(p, r, alpha=0.5)
    # k = r; P - r rᵀ / (0.5 + 5)
    torch.testing.assert_close(new, torch.eye(3) - torch.outer(r, r) / 5.5)
    # the updated projector nearly removes r: P r = α r / (α + |r|²)
    torch.testing.assert_close(new @ r, 0.5 * r / 5.5)


def test_entropy_weights_by_hand():
    logits = {"audio": torch.tensor([[2.0, 0.0, 0.0]]), "video": torch.tensor([[0.0, 0.0, 0.0]])}
    e = {}
    for m, x in logits.items():  # per-clip entropy over classes
        p = [math.exp(v) / sum(math.exp(u) for u in x[0].tolist()) for v in x[0].tolist()]
        e[m] = -sum(q * math.log(q) for q in p)
    top = max(e.values())
    raw = {m: math.exp(top - v) for m, v in e.items()}
    w = entropy_weights(logits)
    for m in logits:
        assert w[m].item() == pytest.approx(raw[m] / sum(raw.values()), rel=1e-6)
    assert w["audio"].item() > w["video"].item()  # the confident modality weighs more


def test_mla_model_fuses_the_shared_head_by_uncertainty():
    torch.manual_seed(0)
    model = build_model(
        features="cached", fusion="late-linear", size="tiny", input_dims=DIMS, **MLA().model_options()
    )
    MLA.check_model(model)
    model.eval()
    batch = _cached_batch()
    out = model(batch)
    parts = {m: model.fusion.linear(out.features[m]) for m in model.modalities}  # the one shared layer
    w = entropy_weights(parts)
    torch.testing.assert_close(out.fused, w["audio"] * parts["audio"] + w["video"] * parts["video"])


def test_mla_alternates_one_encoder_per_update_and_projects_the_head_gradient():
    torch.manual_seed(0)
    model = build_model(
        features="cached", fusion="late-linear", size="tiny", input_dims=DIMS, **MLA().model_options()
    )
    mla = MLA(owm_alpha=0.1)
    assert mla.updates_per_batch(model) == 2
    batch = _cached_batch()
    for substep, m in enumerate(model.modalities):
        mla.substep = substep
        other = next(x for x in model.modalities if x != m)
        calls = []
        hook = model.encoders[other].register_forward_hook(lambda *a, calls=calls: calls.append(1))
        out = mla.forward(model, batch)
        hook.remove()
        assert not calls, f"update for {m} ran the {other} encoder"
        loss, _ = mla.loss(model, batch, out)
        model.zero_grad()
        loss.backward()
        # the shared head's CE on m alone, plus m's probe
        expected = F.cross_entropy(model.fusion.linear(out.features[m]), batch["label"])
        assert F.cross_entropy(out.fused, batch["label"]).item() == pytest.approx(expected.item(), rel=1e-6)
        before = model.fusion.linear.weight.grad.clone()
        p_old = torch.eye(before.shape[1]) if mla.projector is None else mla.projector.clone()
        mla.before_step(model, batch, out)
        torch.testing.assert_close(model.fusion.linear.weight.grad, before @ p_old)
        r = out.features[m].detach().mean(0)
        torch.testing.assert_close(mla.projector, owm_update(p_old, r, 0.1))


def _gs_reference(inputs, grads, alpha, form):
    """The shared head's gradient modification written out on lists, one update at a time: "paper" (OWM)
    g' = g·P, then k = P r, P_ij −= k_i k_j / (α + Σ_l r_l k_l); "authors" (the GS plugins) leaves the run's
    first update alone, then g' = g·Pᵀ and P_ij −= k_i k_j / (α + k_i r_j). Returns (final P, the g's)."""
    d = len(inputs[0])
    P = [[float(i == j) for j in range(d)] for i in range(d)]
    out = []
    for t, (r, g) in enumerate(zip(inputs, grads)):
        if form == "authors" and t == 0:  # exp_count == 0
            out.append(g)
            continue
        if form == "paper":
            out.append([[sum(row[l] * P[l][j] for l in range(d)) for j in range(d)] for row in g])
        else:
            out.append([[sum(row[l] * P[j][l] for l in range(d)) for j in range(d)] for row in g])
        k = [sum(P[i][l] * r[l] for l in range(d)) for i in range(d)]
        if form == "paper":
            den = alpha + sum(r[l] * k[l] for l in range(d))
            P = [[P[i][j] - k[i] * k[j] / den for j in range(d)] for i in range(d)]
        else:
            P = [[P[i][j] - k[i] * k[j] / (alpha + k[i] * r[j]) for j in range(d)] for i in range(d)]
    return P, out


def _mla_model():
    torch.manual_seed(0)
    return build_model(
        features="cached", fusion="late-linear", size="tiny", input_dims=DIMS, **MLA().model_options()
    )


@pytest.mark.parametrize("form", ["paper", "authors"])
def test_mla_owm_forms_match_a_hand_written_restatement(form):
    """Four updates (2 batches x 2 modalities, Adam steps between): each modified head gradient and the
    final projector against `_gs_reference` on the same inputs and raw gradients."""
    model = _mla_model()
    mla = MLA(owm_alpha=0.1, owm_form=form)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    weight = model.fusion.linear.weight  # [C, D]
    inputs, raw, modified = [], [], []
    for seed in range(2):
        batch = _cached_batch(seed=seed)
        for substep in range(mla.updates_per_batch(model)):
            mla.substep = substep
            out = mla.forward(model, batch)
            loss, _ = mla.loss(model, batch, out)
            opt.zero_grad()
            loss.backward()
            inputs.append(out.features[mla.modality(model)].detach().double().mean(0).tolist())  # [D]
            raw.append(weight.grad.double().tolist())  # [C, D]
            mla.before_step(model, batch, out)
            modified.append(weight.grad.detach().clone())
            opt.step()
    P, want = _gs_reference(inputs, raw, 0.1, form)
    f64 = torch.float64
    for t, (got, ref) in enumerate(zip(modified, want)):
        torch.testing.assert_close(
            got.double(),
            torch.tensor(ref, dtype=f64),
            rtol=1e-4,
            atol=1e-6,
            msg=lambda m, t=t: f"update {t}: {m}",
        )
    torch.testing.assert_close(mla.projector.double(), torch.tensor(P, dtype=f64), rtol=1e-4, atol=1e-6)
    first_two_unchanged = [torch.equal(modified[t].double(), torch.tensor(raw[t], dtype=f64)) for t in (0, 1)]
    assert first_two_unchanged == ([True, False] if form == "paper" else [True, True])  # skipped or not
    symmetric = torch.allclose(mla.projector, mla.projector.t())
    assert symmetric == (form == "paper")


def test_mla_owm_update_forms_by_hand():
    p = torch.eye(2)
    r = torch.tensor([1.0, -2.0])  # k = r
    torch.testing.assert_close(owm_update(p, r, 0.5, "paper"), torch.eye(2) - torch.outer(r, r) / 5.5)
    # element-wise: entry (i, j) over 0.5 + k_i r_j = [[1.5, -1.5], [-1.5, 4.5]]
    want = torch.eye(2) - torch.tensor([[1.0, -2.0], [-2.0, 4.0]]) / torch.tensor([[1.5, -1.5], [-1.5, 4.5]])
    torch.testing.assert_close(owm_update(p, r, 0.5, "authors"), want)


@pytest.mark.parametrize("value", ["both", "Paper", 1, None])
def test_mla_owm_form_refuses_other_values_naming_key_and_value(value):
    with pytest.raises(ValueError, match=rf"mla owm_form must be one of paper, authors, got {value!r}"):
        MLA(owm_form=value)


def test_mla_owm_form_passes_through_the_command_line_param():
    tree = parse_method_params(["mla.owm_form=authors", "mla.owm_alpha=0.2"])
    check_method_params(tree, "--param")
    mla = build_balancer("mla", **tree["mla"])
    assert (mla.owm_form, mla.owm_alpha) == ("authors", 0.2)
    assert build_balancer("mla").owm_form == "paper"
    with pytest.raises(TrainConfigError, match=r"--param mla: mla owm_form .*got 'author'"):
        check_method_params(parse_method_params(["mla.owm_form=author"]), "--param")


@pytest.mark.parametrize("form", ["paper", "authors"])
def test_mla_projector_resumes_after_the_skipped_first_update(form):
    """The state after the first update (skipped by "authors") resumes into a fresh balancer that does not
    skip again: the next update gives the uninterrupted run's gradient and projector."""
    model = _mla_model()
    batch = _cached_batch()

    def update(mla, substep):
        mla.substep = substep
        out = mla.forward(model, batch)
        loss, _ = mla.loss(model, batch, out)
        model.zero_grad()
        loss.backward()
        mla.before_step(model, batch, out)
        return model.fusion.linear.weight.grad.clone()

    straight = MLA(owm_form=form)
    update(straight, 0)
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)
    buffer.seek(0)
    resumed = MLA(owm_form=form)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    g_straight, g_resumed = update(straight, 1), update(resumed, 1)
    torch.testing.assert_close(g_resumed, g_straight, rtol=0, atol=0)
    torch.testing.assert_close(resumed.projector, straight.projector, rtol=0, atol=0)
    assert not torch.equal(straight.projector, torch.eye(straight.projector.shape[0]))


def test_mla_refuses_other_heads_with_a_message():
    model = build_model(features="cached", fusion="late-linear", size="tiny", input_dims=DIMS)
    with pytest.raises(ValueError, match="shared head"):
        MLA.check_model(model)
    with pytest.raises(ValueError, match="late-linear only"):
        build_model(features="cached", fusion="mid-mlp", size="tiny", input_dims=DIMS, classifier="shared")
    with pytest.raises(ValueError, match="owm_alpha"):
        MLA(owm_alpha=0)


# ---- G-Blending ------------------------------------------------------------------------------------------
def test_gblend_weights_by_hand():
    # head: (train loss, held-out loss) at N and at N + n
    before = {"fused": (1.0, 1.2), "audio": (1.5, 1.6), "video": (1.7, 1.75)}
    after = {"fused": (0.5, 1.0), "audio": (1.2, 1.4), "video": (1.6, 1.7)}
    raw = {}
    for h in before:
        g = before[h][1] - after[h][1]
        o = (after[h][1] - after[h][0]) - (before[h][1] - before[h][0])
        raw[h] = abs(g / o**2)
    w = gblend_weights(before, after)
    assert sum(w.values()) == pytest.approx(1.0)
    for h, value in raw.items():
        assert w[h] == pytest.approx(value / sum(raw.values()))
    assert (
        gblend_weights({"fused": (1.0, 1.0)}, {"fused": (1.0, 1.0)}) is None
    )  # no signal: keep the old ones


def test_holdout_is_a_fixed_fraction_of_clip_ids():
    ids = [f"clip{i}" for i in range(4000)]
    mask = holdout_mask(ids, 0.1)
    assert 0.08 < mask.float().mean().item() < 0.12
    assert torch.equal(mask, holdout_mask(list(reversed(ids)), 0.1).flip(0))  # by id, not by position


def test_gblending_trains_on_the_clips_not_held_out_with_the_weights():
    torch.manual_seed(0)
    model = build_model(features="cached", fusion="late-linear", size="tiny", input_dims=DIMS)
    plain = copy.deepcopy(model)
    gb = GBlending(holdout=0.3)
    gb.weights = {"fused": 0.5, "audio": 0.3, "video": 0.2}
    batch = _cached_batch(b=12, seed=4)
    held = holdout_mask(batch["id"], 0.3)
    assert held.any() and (~held).any()
    out = gb.forward(model, batch)
    loss, _ = gb.loss(model, batch, out)
    loss.backward()
    fit = batch_rows(batch, ~held)
    o = plain(fit)
    y = fit["label"]
    expected = 0.5 * F.cross_entropy(o.fused, y) + 0.3 * F.cross_entropy(o.unimodal["audio"], y)
    expected = expected + 0.2 * F.cross_entropy(o.unimodal["video"], y)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert (p.grad is None) == (q.grad is None), n  # a missing gradient is a difference too
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=n)
    # the held-out clips were measured (eval mode, no gradient), the fitted ones too
    assert gb.sums["fused"][3] == held.sum().item() and gb.sums["fused"][1] == (~held).sum().item()


def _epoch_end(gb, epoch, point):
    """Epoch `epoch` ends with `point` ({head: (train loss, held-out loss)}) as its running means."""
    gb.sums = {h: [t, 1.0, v, 1.0] for h, (t, v) in point.items()}
    gb.on_epoch_end(epoch, {})
    return dict(gb.weights)


def test_gblending_windows_are_n_epochs_the_first_from_the_untrained_model():
    """super_epoch n = 2. The first recomputation (after epoch 1) reads the untrained model's point and
    epoch 1's; the second (after epoch 3) epochs 1 and 3. Weights by hand, w ∝ |ΔG / ΔO²|:
    first:  fused ΔG = 2 − 1.5 = 0.5, ΔO = 0.5 − 0 = 0.5 → 2; audio 0.25, 0.25 → 4; video 0.1, 0.1 → 10;
            sum 16 → 1/8, 1/4, 5/8.
    second: fused ΔG = 1.5 − 1.25, ΔO = 0.75 − 0.5 → 4; audio 1.75 − 1.5, 0.5 − 0.25 → 4;
            video 1.9 − 1.8, 0.2 − 0.1 → 10; sum 18 → 2/9, 2/9, 5/9.
    (Windows of n − 1 epochs, epochs 0 → 1 and 2 → 3, would give other weights.)"""
    gb = GBlending(super_epoch=2)
    gb.start_sums = {h: [2.0, 1.0, 2.0, 1.0] for h in ("fused", "audio", "video")}  # as the first update
    curves = [  # per epoch: head -> (train, held-out)
        {"fused": (1.5, 1.8), "audio": (1.8, 1.9), "video": (1.9, 1.95)},
        {"fused": (1.0, 1.5), "audio": (1.5, 1.75), "video": (1.8, 1.9)},
        {"fused": (0.8, 1.4), "audio": (1.3, 1.6), "video": (1.7, 1.85)},
        {"fused": (0.5, 1.25), "audio": (1.0, 1.5), "video": (1.6, 1.8)},
    ]
    weights = [_epoch_end(gb, epoch, point) for epoch, point in enumerate(curves)]
    assert weights[0] == {}  # equal weights until the first super-epoch has passed
    assert gb.start == {h: [2.0, 2.0] for h in ("fused", "audio", "video")}
    assert weights[1] == pytest.approx({"fused": 1 / 8, "audio": 1 / 4, "video": 5 / 8})
    assert weights[2] == weights[1]  # mid super-epoch: unchanged
    assert weights[3] == pytest.approx({"fused": 2 / 9, "audio": 2 / 9, "video": 5 / 9})
    # n = 1: every epoch, the first from the untrained model to epoch 0
    gb1 = GBlending(super_epoch=1)
    gb1.start_sums = {h: [2.0, 1.0, 2.0, 1.0] for h in ("fused", "audio", "video")}
    assert _epoch_end(gb1, 0, curves[1]) == pytest.approx({"fused": 1 / 8, "audio": 1 / 4, "video": 5 / 8})
    # no start point kept (a state saved before there was one): the first window changes nothing
    gb2 = GBlending(super_epoch=2)
    assert [_epoch_end(gb2, e, c) for e, c in enumerate(curves[:2])] == [{}, {}]


def test_gblending_measures_the_untrained_model_on_the_first_batch():
    """The run's first update measures the start point: L* over every clip of the batch (eval mode), L over
    its fitted clips (train mode); later updates add nothing to it; the state round trip keeps it."""
    torch.manual_seed(0)
    model = build_model(features="cached", fusion="late-linear", size="tiny", input_dims=DIMS)
    plain = copy.deepcopy(model)
    gb = GBlending(holdout=0.3)
    batch = _cached_batch(b=12, seed=4)
    held = holdout_mask(batch["id"], 0.3)
    model.train()
    out = gb.forward(model, batch)
    gb.loss(model, batch, out)
    plain.eval()
    with torch.no_grad():
        every = plain(batch)
    plain.train()
    fit = batch_rows(batch, ~held)
    with torch.no_grad():
        fitted = plain(fit)
    for head, logits_all, logits_fit in [
        ("fused", every.fused, fitted.fused),
        *((m, every.unimodal[m], fitted.unimodal[m]) for m in ("audio", "video")),
    ]:
        ce_all = F.cross_entropy(logits_all, batch["label"], reduction="sum").item()
        ce_fit = F.cross_entropy(logits_fit, fit["label"], reduction="sum").item()
        train_sum, train_n, held_sum, held_n = gb.start_sums[head]
        assert (train_n, held_n) == ((~held).sum().item(), 12)
        assert held_sum == pytest.approx(ce_all, rel=1e-5) and train_sum == pytest.approx(ce_fit, rel=1e-5)
    before = copy.deepcopy(gb.start_sums)
    out = gb.forward(model, _cached_batch(b=12, seed=5))  # the second update: not the start any more
    gb.loss(model, _cached_batch(b=12, seed=5), out)
    assert gb.start_sums == before
    gb.on_epoch_end(0, {})
    assert gb.start == {h: [s[0] / s[1], s[2] / s[3]] for h, s in before.items()} and gb.start_sums == {}
    restored = GBlending(holdout=0.3)
    buffer = io.BytesIO()
    torch.save(gb.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.start == gb.start and restored.points == gb.points


def test_gblending_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="holdout"):
        GBlending(holdout=1.5)
    with pytest.raises(ValueError, match="super_epoch"):
        GBlending(super_epoch=0)
