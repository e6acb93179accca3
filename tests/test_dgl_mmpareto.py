"""DGL and MMPareto: exact gradients against references computed on a deepcopy of the model.

DGL: encoders get α · ∇Σ CE(unimodal) only, the fusion head ∇CE(fused) only, for every fusion head.
MMPareto: the module's gradients against a re-expression of the authors' `train_epoch` loop
(GeWu-Lab/MMPareto_ICML2024 `code/MMPareto.py`: one `backward(retain_graph=True)` per loss, flattened
gradients, the MGDA two-task closed form in plain Python, per-tensor rescaling from `p.grad`), plus the
pure-math rule on hand-made gradients (conflict, no conflict, the tie cos = 0, the rescaling).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.models import three_modality_model_and_batch

from mlb.balancing.base import Balancer
from mlb.balancing.dgl import DGL
from mlb.balancing.mmpareto import MMPareto, mmpareto_gradients, pareto_weights
from mlb.models import build_model
from mlb.models.fusion import FUSIONS

pytestmark = pytest.mark.unit
CASES = [f"{features}-{fusion}" for features in ("cached", "raw") for fusion in FUSIONS] + [
    "three-modalities"
]


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
    mask[0, 5:] = False  # one padded clip: the masks must travel with the detached features
    return {
        "audio": torch.randn(b, 9, 5, generator=g),
        "audio_mask": mask,
        "video": torch.randn(b, 4, 7, generator=g),
        "video_mask": torch.ones(b, 4, dtype=torch.bool),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _model_and_batch(case):
    if case == "three-modalities":
        return three_modality_model_and_batch()
    features, fusion = case.split("-", 1)
    torch.manual_seed(0)
    model = build_model(features=features, fusion=fusion, size="tiny", input_dims={"audio": 5, "video": 7})
    return model, (_raw_batch() if features == "raw" else _cached_batch())


def _grad(p):
    return torch.zeros_like(p) if p.grad is None else p.grad


def _hook_step(balancer, model, batch):
    """What `mlb.train.step.train_step` does with the hooks (no optimiser step)."""
    out = model(batch)
    loss, logs = balancer.loss(model, batch, out)
    model.zero_grad(set_to_none=True)
    loss.backward()
    logs |= balancer.before_step(model, batch, out)
    return loss, logs


# ---- DGL ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_dgl_encoders_learn_from_unimodal_losses_fusion_from_fused(case):
    model, batch = _model_and_batch(case)
    ref = copy.deepcopy(model)
    dgl = DGL()  # alpha 4, the authors' default
    _, logs = _hook_step(dgl, model, batch)

    # reference on the copy: encoders + unimodal heads from α · Σ CE(unimodal) alone; the fusion head
    # from CE(fused) alone (its parameter gradient does not depend on whether its inputs are detached)
    label = batch["label"]
    out = ref(batch)
    uni = {m: F.cross_entropy(lg, label) for m, lg in out.unimodal.items()}
    fused = F.cross_entropy(out.fused, label)
    enc_heads = list(ref.encoders.parameters()) + list(ref.unimodal_heads.parameters())
    g_uni = torch.autograd.grad(
        dgl.alpha * sum(uni.values()), enc_heads, retain_graph=True, allow_unused=True
    )
    g_fus = torch.autograd.grad(fused, list(ref.fusion.parameters()), allow_unused=True)
    expected = {id(p): g for p, g in zip(enc_heads, g_uni)} | {
        id(p): g for p, g in zip(ref.fusion.parameters(), g_fus)
    }
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        want = expected[id(ref_params[name])]
        want = torch.zeros_like(p) if want is None else want
        torch.testing.assert_close(_grad(p), want, rtol=1e-5, atol=1e-7, msg=f"{case}: {name}")

    # the encoders got no fused gradient: an encoder's gradient differs from the Multi-Loss one
    assert set(logs) == {"loss", "loss_fused"} | {f"loss_{m}" for m in model.modalities}
    assert logs["loss_fused"] == pytest.approx(fused.item(), rel=1e-5)
    for m in model.modalities:
        assert logs[f"loss_{m}"] == pytest.approx(uni[m].item(), rel=1e-5)
    assert logs["loss"] == pytest.approx(fused.item() + 4.0 * sum(v.item() for v in uni.values()), rel=1e-5)


def test_dgl_alpha_weights_only_the_unimodal_terms():
    model, batch = _model_and_batch("cached-mid-mlp")
    model_1, model_2 = model, copy.deepcopy(model)
    _hook_step(DGL(alpha=1.0), model_1, batch)
    _hook_step(DGL(alpha=2.5), model_2, batch)
    for (name, p1), p2 in zip(model_1.named_parameters(), model_2.parameters()):
        scale = 1.0 if name.startswith("fusion.") else 2.5
        torch.testing.assert_close(_grad(p2), scale * _grad(p1), rtol=1e-5, atol=1e-6, msg=name)


def test_dgl_validates_and_has_no_state():
    for bad in (0, -1.0, float("nan"), float("inf"), "4"):
        with pytest.raises(ValueError, match="dgl alpha"):
            DGL(alpha=bad)
    dgl = DGL(alpha=5)
    assert (dgl.name, dgl.uses_unimodal_heads, dgl.supported_fusions) == ("dgl", True, None)
    assert issubclass(DGL, Balancer) and dgl.state_dict() == {}
    DGL().load_state_dict(dgl.state_dict())
    with pytest.raises(ValueError):
        DGL().load_state_dict({"alpha": 5})


# ---- MMPareto: the pure rule on hand-made gradients ------------------------------------------------
def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_pareto_conflict_uses_min_norm_weights_and_rescales_per_tensor():
    # g_f = (2, 0), g_u = (-1, 1): cos = -2 / (2·√2) < 0. a·a = 4, a·b = -2, b·b = 2:
    # w_f = (2 + 2) / (4 + 2 + 4) = 0.4, w_u = 0.6; h = 2·(0.4·g_f + 0.6·g_u) = (0.4, 1.2)
    cos, w_f, w_u = pareto_weights(_t(2, 0), _t(-1, 1))
    assert cos.item() == pytest.approx(-(2**-0.5), rel=1e-6)
    assert (w_f.item(), w_u.item()) == pytest.approx((0.4, 0.6), rel=1e-6)
    # one tensor: ‖g_f + g_u‖ = ‖(1, 1)‖ = √2 > ‖h‖ = √1.6 -> h·√(2/1.6)·1.5 = (0.670820, 2.012461)
    (g,), _, _ = mmpareto_gradients([_t(2, 0)], [_t(-1, 1)], gamma=1.5)
    torch.testing.assert_close(g, _t(0.670820393, 2.012461180))
    # the same numbers as two tensors: same weights, rescaled separately.
    # first: |1| / |0.4| = 2.5 > 1 -> 1.5·2.5·0.4 = 1.5; second: |1| / |1.2| < 1 -> 1.5·1.2 = 1.8
    grads, cos2, w_u2 = mmpareto_gradients([_t(2), _t(0)], [_t(-1), _t(1)], gamma=1.5)
    assert (cos2.item(), w_u2.item()) == pytest.approx((cos.item(), 0.6), rel=1e-6)
    torch.testing.assert_close(grads, [_t(1.5), _t(1.8)])


def test_pareto_no_conflict_is_the_sum_times_gamma():
    # g_f = (1, 1), g_u = (1, 0): cos > 0 -> weights 1/2, h = g_f + g_u = (2, 1), ratio 1 -> 1.5·h
    cos, w_f, w_u = pareto_weights(_t(1, 1), _t(1, 0))
    assert cos.item() > 0 and (w_f.item(), w_u.item()) == (0.5, 0.5)
    grads, _, _ = mmpareto_gradients([_t(1), _t(1)], [_t(1), _t(0)], gamma=1.5)
    torch.testing.assert_close(grads, [_t(3.0), _t(1.5)])
    grads, _, _ = mmpareto_gradients([_t(1, 1)], [_t(1, 0)], gamma=2.0)
    torch.testing.assert_close(grads, [_t(4.0, 2.0)])


def test_pareto_tie_goes_to_the_min_norm_branch():
    # the authors' `if cos > 0: equal else: MGDA`: cos = 0 exactly takes MGDA.
    # g_f = (1, 0), g_u = (0, 2): a·a = 1, a·b = 0, b·b = 4 -> w_f = 4 / 5 = 0.8, w_u = 0.2
    cos, w_f, w_u = pareto_weights(_t(1, 0), _t(0, 2))
    assert cos.item() == 0.0
    assert (w_f.item(), w_u.item()) == pytest.approx((0.8, 0.2), rel=1e-6)
    # per tensor: h = (1.6, 0.8); sums (1, 2): 1 / 1.6 < 1 -> 2.4; 2 / 0.8 = 2.5 -> 1.5·2.5·0.8 = 3
    # (equal weights would have given (1.5, 3.0))
    grads, _, _ = mmpareto_gradients([_t(1), _t(0)], [_t(0), _t(2)], gamma=1.5)
    torch.testing.assert_close(grads, [_t(2.4), _t(3.0)])


def test_pareto_zero_gradients():
    # no multimodal gradient: cos = 0, a·b = 0 >= a·a = 0 -> w_f = 0.999; h = 0.002·g_u is scaled back
    # up to ‖g_u‖: the result is 1.5·g_u
    _, w_f, w_u = pareto_weights(_t(0, 0), _t(3, 4))
    assert (w_f.item(), w_u.item()) == pytest.approx((0.999, 0.001), abs=1e-6)
    (g,), _, _ = mmpareto_gradients([_t(0, 0)], [_t(3, 4)], gamma=1.5)
    torch.testing.assert_close(g, _t(4.5, 6.0))
    # no unimodal gradient: a·b = 0 >= b·b = 0 -> w_f = 0.001; again 1.5·g_f
    _, w_f, _ = pareto_weights(_t(3, 4), _t(0, 0))
    assert w_f.item() == pytest.approx(0.001, abs=1e-6)
    (g,), _, _ = mmpareto_gradients([_t(3, 4)], [_t(0, 0)], gamma=1.5)
    torch.testing.assert_close(g, _t(4.5, 6.0))
    # both zero: zero, not NaN (the authors' 0/0)
    grads, _, _ = mmpareto_gradients([_t(0, 0), _t(1)], [_t(0, 0), _t(-1)], gamma=1.5)
    assert torch.isfinite(torch.cat(grads)).all()
    torch.testing.assert_close(grads[0], _t(0, 0))


# ---- MMPareto: the authors' loop, re-expressed, on a copy of the model ------------------------------
def _authors_min_norm_from2(v1v1, v1v2, v2v2):
    """`MinNormSolver._min_norm_element_from2`: weight of the first vector (plain floats)."""
    if v1v2 >= v1v1:
        return 0.999
    if v1v2 >= v2v2:
        return 0.001
    return -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))


def _authors_mmpareto_step(model, batch, gamma=1.5):
    """`train_epoch` of the authors' MMPareto.py for one batch, generalised from (audio, visual) to every
    modality of `model`; returns {m: (cos, weight of the unimodal loss)}. Gradients are left in p.grad."""
    label = batch["label"]
    out = model(batch)
    losses = {"both": F.cross_entropy(out.fused, label)}
    losses |= {m: F.cross_entropy(out.unimodal[m], label) for m in model.modalities}
    record = {
        m: [(n, p) for n, p in model.named_parameters() if n.startswith(f"encoders.{m}.")]
        for m in model.modalities
    }
    grads = {m: {} for m in model.modalities}  # grads[m][task] = {name: gradient}
    for task, loss in losses.items():
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for m in model.modalities if task == "both" else [task]:
            grads[m][task] = {n: _grad(p).clone() for n, p in record[m]}
            grads[m][task]["concat"] = torch.cat([grads[m][task][n].flatten() for n, _ in record[m]])
    model.zero_grad(set_to_none=True)
    info, k = {}, {}
    for m in model.modalities:
        both, uni = grads[m]["both"]["concat"], grads[m][m]["concat"]
        cos = F.cosine_similarity(both, uni, dim=0)
        if cos > 0:
            k[m] = [0.5, 0.5]
        else:
            dps = [float((both * both).sum()), float((both * uni).sum()), float((uni * uni).sum())]
            c = _authors_min_norm_from2(*dps)
            k[m] = [c, 1 - c]
        info[m] = (cos.item(), k[m][1])
    sum(losses.values()).backward()  # the plain Multi-Loss; heads and fusion keep it
    for m in model.modalities:
        for n, p in record[m]:
            if p.grad is None:
                continue
            three_norm = torch.norm(p.grad.clone())
            new_grad = 2 * k[m][0] * grads[m]["both"][n] + 2 * k[m][1] * grads[m][m][n]
            diff = three_norm / torch.norm(new_grad)
            p.grad = diff * new_grad * gamma if diff > 1 else new_grad * gamma
    return info


def _force_conflict(model, conflict="audio", agree="video"):
    """Late-Linear: unimodal head = minus (conflict) / plus (agree) that modality's fusion columns, no
    biases, so at these small logits the two gradients on the encoder are nearly opposite / aligned."""
    fusion = model.fusion
    with torch.no_grad():
        fusion.bias.zero_()
        for m, sign in ((conflict, -1.0), (agree, 1.0)):
            model.unimodal_heads[m].weight.copy_(sign * fusion.weight[:, fusion.columns[m]])
            model.unimodal_heads[m].bias.zero_()


def _assert_matches_authors(model, batch, gamma=1.5):
    ref = copy.deepcopy(model)
    bal = MMPareto(gamma=gamma)
    loss, logs = _hook_step(bal, model, batch)
    info = _authors_mmpareto_step(ref, batch, gamma)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        # float32 weights here, the authors' Python floats there: agreement to ~1e-6 of O(1) gradients
        torch.testing.assert_close(_grad(p), _grad(ref_params[name]), rtol=1e-4, atol=1e-5, msg=name)
    for m, (cos, w_u) in info.items():
        assert logs[f"cos_{m}"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
        assert logs[f"w_{m}"] == pytest.approx(w_u, rel=1e-4, abs=1e-6)
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert {"loss_fused"} | {f"loss_{m}" for m in model.modalities} <= set(logs)
    return info


def test_mmpareto_matches_the_authors_loop_in_both_branches():
    model, batch = _model_and_batch("cached-late-linear")
    _force_conflict(model, conflict="audio", agree="video")
    info = _assert_matches_authors(model, batch)
    assert info["audio"][0] < 0 < info["video"][0], info  # one conflicting, one non-conflicting encoder
    assert info["audio"][1] not in (0.5, 0.999, 0.001) and info["video"][1] == 0.5
    # the other way round on the raw path
    model, batch = _model_and_batch("raw-late-linear")
    _force_conflict(model, conflict="video", agree="audio")
    info = _assert_matches_authors(model, batch, gamma=2.0)
    assert info["video"][0] < 0 < info["audio"][0], info


@pytest.mark.parametrize("case", CASES)
def test_mmpareto_matches_the_authors_loop_on_every_fusion(case):
    model, batch = _model_and_batch(case)
    _assert_matches_authors(model, batch)


def test_mmpareto_non_encoder_gradients_are_the_plain_sum():
    model, batch = _model_and_batch("cached-gated")
    ref = copy.deepcopy(model)
    _hook_step(MMPareto(), model, batch)
    out = ref(batch)
    label = batch["label"]
    total = F.cross_entropy(out.fused, label) + sum(
        F.cross_entropy(lg, label) for lg in out.unimodal.values()
    )
    total.backward()
    ref_params = dict(ref.named_parameters())
    changed = 0
    for name, p in model.named_parameters():
        if name.startswith("encoders."):
            changed += not torch.allclose(_grad(p), _grad(ref_params[name]))
        else:
            torch.testing.assert_close(_grad(p), _grad(ref_params[name]), rtol=1e-5, atol=1e-7, msg=name)
    assert changed, "the encoders' gradients should have been replaced"


def test_mmpareto_unused_parameter_counts_as_zero():
    # a parameter of the audio encoder that no loss reaches keeps no gradient; the others are combined
    model, batch = _model_and_batch("cached-late-linear")
    model.encoders["audio"].register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
    _assert_matches_authors(model, batch)
    assert model.encoders["audio"].unused.grad is None


def test_mmpareto_hooks_and_state():
    for bad in (0, -1.0, float("nan"), "1.5"):
        with pytest.raises(ValueError, match="mmpareto gamma"):
            MMPareto(gamma=bad)
    bal = MMPareto()
    assert (bal.name, bal.uses_unimodal_heads, bal.gamma) == ("mmpareto", True, 1.5)
    model, batch = _model_and_batch("cached-late-linear")
    out = model(batch)
    with pytest.raises(RuntimeError, match="loss"):
        bal.before_step(model, batch, out)  # no loss() for this output
    # no graph (evaluation): the loss is returned, nothing is pending
    with torch.no_grad():
        loss, logs = bal.loss(model, batch, model(batch))
    assert torch.isfinite(loss) and "loss" in logs
    # detached-tensor logs for a trainer that does not sync inside the step
    bal.sync_logs = False
    out = model(batch)
    loss, logs = bal.loss(model, batch, out)
    loss.backward()
    logs |= bal.before_step(model, batch, out)
    assert all(torch.is_tensor(v) and not v.requires_grad for v in logs.values())
    assert {"cos_audio", "cos_video", "w_audio", "w_video"} <= set(logs)
    # no state to save
    assert bal.state_dict() == {}
    MMPareto().load_state_dict(bal.state_dict())
    with pytest.raises(ValueError):
        MMPareto().load_state_dict({"gamma": 2.0})
