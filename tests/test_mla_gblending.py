"""MLA and G-Blending: each rule on hand-made numbers and on a tiny model, held to the paper's formulas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mlb.balancing.gblending import GBlending, batch_rows, gblend_weights, holdout_mask
from mlb.balancing.mla import MLA, owm_update
from mlb.models import build_model
from mlb.models.fusion import entropy_weights

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


def test_gblending_updates_the_weights_at_each_super_epoch_end():
    gb = GBlending(super_epoch=2)
    curves = [  # per epoch: head -> (train, held-out)
        {"fused": (1.0, 1.2), "audio": (1.5, 1.6), "video": (1.7, 1.75)},
        {"fused": (0.8, 1.1), "audio": (1.3, 1.5), "video": (1.65, 1.72)},
        {"fused": (0.5, 1.0), "audio": (1.2, 1.4), "video": (1.6, 1.7)},
        {"fused": (0.4, 0.95), "audio": (1.1, 1.35), "video": (1.55, 1.68)},
    ]
    weights = []  # after each epoch
    for epoch, point in enumerate(curves):
        gb.sums = {h: [t, 1.0, v, 1.0] for h, (t, v) in point.items()}
        gb.on_epoch_end(epoch, {})
        weights.append(dict(gb.weights))
        if epoch == 0:
            assert gb.weights == {}  # equal weights until a super-epoch has passed
    # after epoch 1 (2 epochs done): from epoch 0's point (start) to epoch 1's
    assert set(gb.weights) == {"fused", "audio", "video"}
    assert weights[1] == pytest.approx(gblend_weights(curves[0], curves[1]))
    assert weights[2] == weights[1]  # mid super-epoch: unchanged
    assert weights[3] == pytest.approx(gblend_weights(curves[1], curves[3]))  # the super-epoch of epochs 2, 3
    gb2 = GBlending(super_epoch=2)
    for epoch, point in enumerate(curves[:2]):
        gb2.sums = {h: [t, 1.0, v, 1.0] for h, (t, v) in point.items()}
        gb2.on_epoch_end(epoch, {})
    assert gb2.weights == pytest.approx(gblend_weights(curves[0], curves[1]))


def test_gblending_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="holdout"):
        GBlending(holdout=1.5)
    with pytest.raises(ValueError, match="super_epoch"):
        GBlending(super_epoch=0)
