"""Balancing methods: MLB's coefficient rule with hand-computed numbers, exact gradient scaling by k_i,
the Multi-Loss and Joint objectives, and the registry."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import three_modality_model_and_batch

from mlb.balancing import (
    METHODS,
    MLB,
    Balancer,
    Joint,
    MultiLoss,
    build_balancer,
    mlb_coefficients,
    performance_ratios,
)
from mlb.models import ModelOutput, build_model

pytestmark = pytest.mark.unit


# ---- the coefficient rule (Eq. 5-7), expected values worked out by hand ------------------------------
def test_two_modalities_both_beta_cases():
    # s = (0.6, 0.3): r_a = 0.3/0.6 = 0.5 (leader, beta 2), r_v = 0.6/0.3 = 2 (laggard, beta_max 10)
    # k_a = 1 + (2-1)·tanh(0.5·(0.5-1)) = 1 + tanh(-0.25) = 0.755081338
    # k_v = 1 + (10-1)·tanh(0.5·(2-1)) = 1 + 9·tanh(0.5) = 5.159054415
    s = torch.tensor([0.6, 0.3])
    assert performance_ratios(s).tolist() == pytest.approx([0.5, 2.0], rel=1e-6)
    k = mlb_coefficients(s, alpha=0.5, beta_max=10.0)
    assert k.tolist() == pytest.approx([0.755081338, 5.159054415], rel=1e-6)


def test_three_modalities():
    # s = (0.2, 0.4, 0.6): r_1 = mean(0.4, 0.6)/0.2 = 2.5, r_2 = mean(0.2, 0.6)/0.4 = 1, r_3 = 0.3/0.6 = 0.5
    # alpha 1, beta_max 3: k_1 = 1 + 2·tanh(1.5) = 2.810296507; k_2 = 1 (r = 1 -> beta 2, tanh 0);
    # k_3 = 1 + tanh(-0.5) = 0.537882843
    s = torch.tensor([0.2, 0.4, 0.6])
    assert performance_ratios(s).tolist() == pytest.approx([2.5, 1.0, 0.5], rel=1e-6)
    k = mlb_coefficients(s, alpha=1.0, beta_max=3.0)
    assert k.tolist() == pytest.approx([2.810296507, 1.0, 0.537882843], rel=1e-6)


def test_score_zero_is_guarded():
    # s_a = 0 is clamped to eps = 1e-6: r_a = 0.5/1e-6 = 5e5 -> k_a = 1 + 9·tanh(huge) = 10 (= beta_max)
    # r_v = 1e-6/0.5 = 2e-6 -> k_v = 1 + tanh(0.5·(2e-6 - 1)) = 0.537883629
    k = mlb_coefficients(torch.tensor([0.0, 0.5]), alpha=0.5, beta_max=10.0, eps=1e-6)
    assert torch.isfinite(k).all()
    assert k.tolist() == pytest.approx([10.0, 0.537883629], rel=1e-6)
    # every score 0 (start of training): all equal after the clamp -> r = 1, k = 1
    assert mlb_coefficients(torch.zeros(3), alpha=5.0, beta_max=2.0).tolist() == [1.0, 1.0, 1.0]
    # a NaN score (diverged head) must not produce a NaN coefficient
    assert torch.isfinite(mlb_coefficients(torch.tensor([float("nan"), 0.5]), 0.5, 10.0)).all()


def test_extreme_alpha_and_beta_stay_finite():
    s = torch.tensor([0.6, 0.3])
    # huge alpha saturates tanh: k_a = 1 - 1 = 0, k_v = 1 + (1e6 - 1)·1 = 1e6
    k = mlb_coefficients(s, alpha=1e6, beta_max=1e6)
    assert k.tolist() == pytest.approx([0.0, 1e6], abs=1e-6, rel=1e-6)
    # tiny alpha: almost no balancing: k_v = 1 + (1e6 - 1)·tanh(1e-9) = 1.000999999
    assert mlb_coefficients(s, alpha=1e-9, beta_max=1e6).tolist() == pytest.approx(
        [1.0, 1.000999999], rel=1e-6
    )
    # beta_max = 1 only slows the leader; the laggard keeps k = 1
    assert mlb_coefficients(s, alpha=0.5, beta_max=1.0).tolist() == pytest.approx(
        [0.755081338, 1.0], rel=1e-6
    )
    # beta_max < 1 (the authors' UCF101 setting 0.5): the laggard is slowed too, k_v = 1 - 0.5·tanh(0.5)
    assert mlb_coefficients(s, alpha=0.5, beta_max=0.5).tolist() == pytest.approx(
        [0.755081338, 0.768941421], rel=1e-6
    )


def test_ratios_need_two_modalities():
    with pytest.raises(ValueError, match="M >= 2"):
        performance_ratios(torch.tensor([0.5]))


@pytest.mark.parametrize(
    "params, key",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"beta_max": -1.0}, "beta_max"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_bad_hyper_parameters_fail_early(params, key):
    with pytest.raises(ValueError, match=key):
        MLB(**params)


# ---- gradient scaling: exactly k_i on every parameter of modality i ---------------------------------
def _raw_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(b, 1, 32, 24, generator=g),
        "video": torch.randn(b, 3, 3, 32, 32, generator=g),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _hand_k(unimodal, label, alpha, beta_max):
    """Eq. 4-7 written out in plain Python, independent of mlb.balancing."""
    s = [F.softmax(lg.detach(), 1)[torch.arange(len(label)), label].mean().item() for lg in unimodal.values()]
    ks = []
    for i, s_i in enumerate(s):
        r = (sum(s) - s_i) / (len(s) - 1) / s_i
        beta = beta_max if r > 1 else 2.0
        ks.append(1 + (beta - 1) * math.tanh(alpha * (r - 1)))
    return s, ks


@pytest.mark.parametrize("ownership", ["authors", "input"])
@pytest.mark.parametrize(
    "case", ["raw-late-linear", "raw-mid-mlp", "cached-tf", "cached-gated", "three-modalities"]
)
def test_before_step_scales_each_modality_by_k(case, ownership):
    if case == "three-modalities":
        model_a, batch = three_modality_model_and_batch()
    else:
        features, fusion = case.split("-", 1)
        torch.manual_seed(0)
        model_a = build_model(
            features=features, fusion=fusion, size="tiny", input_dims={"audio": 5, "video": 7}
        )
        if features == "raw":
            batch = _raw_batch()
        else:
            g = torch.Generator().manual_seed(2)
            mask = torch.ones(6, 9, dtype=torch.bool)
            mask[0, 5:] = False
            batch = {
                "audio": torch.randn(6, 9, 5, generator=g),
                "audio_mask": mask,
                "video": torch.randn(6, 4, 7, generator=g),
                "video_mask": torch.ones(6, 4, dtype=torch.bool),
                "label": torch.randint(0, 6, (6,), generator=g),
            }
    model_b = copy.deepcopy(model_a)
    alpha, beta_max = 2.0, 4.0

    # reference: the same Multi-Loss, no balancing
    out_a = model_a(batch)
    loss_a, _ = MultiLoss().loss(model_a, batch, out_a)
    loss_a.backward()

    mlb = MLB(alpha=alpha, beta_max=beta_max, ownership=ownership)
    out_b = model_b(batch)
    loss_b, _ = mlb.loss(model_b, batch, out_b)
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-6)
    loss_b.backward()
    logs = mlb.before_step(model_b, batch, out_b)

    s, ks = _hand_k(out_a.unimodal, batch["label"], alpha, beta_max)
    assert any(abs(k - 1) > 0.05 for k in ks), "pick a batch where balancing does something"
    params_a = dict(model_a.named_parameters())
    names_b = {id(p): n for n, p in model_b.named_parameters()}
    touched = {}
    for i, m in enumerate(model_b.modalities):
        assert logs[f"s_{m}"] == pytest.approx(s[i], rel=1e-5)
        assert logs[f"k_{m}"] == pytest.approx(ks[i], rel=1e-5)
        for p, index in model_b.modality_grad_slices(m, ownership):
            name = names_b[id(p)]
            ga = params_a[name].grad if index is None else params_a[name].grad[index]
            gb = p.grad if index is None else p.grad[index]
            torch.testing.assert_close(gb, ks[i] * ga, rtol=1e-5, atol=1e-8)
            touched.setdefault(name, torch.zeros_like(p, dtype=torch.bool))
            region = touched[name] if index is None else touched[name][index]
            assert not region.any(), f"{name} is owned twice"
            region.fill_(True)
    # every parameter not (wholly) owned by a modality keeps its gradient unchanged
    for name, p in model_b.named_parameters():
        untouched = ~touched.get(name, torch.zeros_like(p, dtype=torch.bool))
        if p.grad is not None and untouched.any():
            torch.testing.assert_close(p.grad[untouched], params_a[name].grad[untouched], rtol=0, atol=0)
    # the encoders and unimodal heads are owned whole; biases of the fusion never
    for m in model_b.modalities:
        for n, _ in model_b.encoders[m].named_parameters():
            assert touched[f"encoders.{m}.{n}"].all()
    authors_owned_biases = {"fusion.gate.bias", "fusion.value.bias"} if ownership == "authors" else set()
    for name, _ in model_b.named_parameters():
        if name.startswith("fusion.") and name.endswith("bias") and name not in authors_owned_biases:
            assert name not in touched, f"{name} is a shared fusion bias under ownership={ownership!r}"


def test_late_linear_weight_split_by_columns_and_bias_shared():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    ((_, idx_a),) = [(p, i) for p, i in model.modality_grad_slices("audio") if p is model.fusion.weight]
    ((_, idx_v),) = [(p, i) for p, i in model.modality_grad_slices("video") if p is model.fusion.weight]
    assert idx_a == (slice(None), slice(0, 16)) and idx_v == (slice(None), slice(16, 32))
    assert model.shared_parameters() == [model.fusion.bias]


# ---- the objectives ---------------------------------------------------------------------------------
def _hand_output():
    # one sample, 2 classes, label 0. fused (0, 0): CE = ln 2. audio (ln 3, 0): p = 3/4, CE = ln(4/3).
    # video (0, ln 3): p = 1/4, CE = ln 4. Multi-Loss = ln 2 + ln(4/3) + ln 4 = ln(32/3) = 2.367123614.
    out = ModelOutput(
        fused=torch.tensor([[0.0, 0.0]]),
        unimodal={"audio": torch.tensor([[math.log(3), 0.0]]), "video": torch.tensor([[0.0, math.log(3)]])},
        features={},
    )
    return out, {"label": torch.tensor([0])}


def test_multi_loss_is_the_sum_of_the_cross_entropies():
    out, batch = _hand_output()
    loss, logs = MultiLoss().loss(None, batch, out)
    assert loss.item() == pytest.approx(2.367123614, rel=1e-6)
    assert logs["loss_fused"] == pytest.approx(0.693147181, rel=1e-6)
    assert logs["loss_audio"] == pytest.approx(0.287682072, rel=1e-6)
    assert logs["loss_video"] == pytest.approx(1.386294361, rel=1e-6)
    assert logs["loss"] == pytest.approx(2.367123614, rel=1e-6)
    assert all(isinstance(v, float) for v in logs.values())
    mlb_loss, _ = MLB().loss(None, batch, out)
    assert mlb_loss.item() == pytest.approx(2.367123614, rel=1e-6)


def test_joint_trains_only_the_fused_output_into_the_encoders():
    out, batch = _hand_output()
    loss, logs = Joint(probe_unimodal=False).loss(None, batch, out)
    assert loss.item() == pytest.approx(0.693147181, rel=1e-6)
    assert logs == pytest.approx({"loss": 0.693147181, "loss_fused": 0.693147181})
    # with probes: the heads learn from detached features; encoders get the fused gradient only
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    probe_model = copy.deepcopy(model)
    batch = _raw_batch()
    Joint(probe_unimodal=False).loss(model, batch, model(batch))[0].backward()
    loss, logs = Joint().loss(probe_model, batch, probe_model(batch))
    loss.backward()
    assert set(logs) == {"loss", "loss_fused", "loss_audio", "loss_video"}
    for (name, p), q in zip(model.named_parameters(), probe_model.parameters()):
        if name.startswith("unimodal_heads"):
            assert p.grad is None and q.grad is not None
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)


def test_mlb_logs_k_r_s_for_every_modality_as_floats():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    batch = _raw_batch()
    mlb = MLB()
    out = model(batch)
    mlb.loss(model, batch, out)[0].backward()
    logs = mlb.before_step(model, batch, out)
    assert set(logs) == {f"{q}_{m}" for q in "krs" for m in ("audio", "video")}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert logs["r_audio"] * logs["r_video"] == pytest.approx(1.0, rel=1e-5)  # two modalities: r_v = 1/r_a
    # before_step without MLB's own loss() (a user's loss) computes the same k, r, s from `out`
    out2 = model(batch)
    MultiLoss().loss(model, batch, out2)[0].backward()
    assert MLB().before_step(model, batch, out2) == pytest.approx(logs, rel=1e-5)
    mlb.sync_logs = False
    _, loss_logs = mlb.loss(model, batch, out2)
    assert set(loss_logs) == {"loss", "loss_fused", "loss_audio", "loss_video"}
    assert all(torch.is_tensor(v) for v in mlb.before_step(model, batch, out2).values())


# ---- the registry -----------------------------------------------------------------------------------
def test_registry_builds_methods_and_rejects_unknown_names():
    assert {"joint", "multi-loss", "mlb"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert issubclass(cls, Balancer) and cls.name == name
    b = build_balancer("mlb", alpha=5.0, beta_max=2.0)
    assert isinstance(b, MLB) and (b.alpha, b.beta_max) == (5.0, 2.0)
    assert b.state_dict() == {}
    with pytest.raises(ValueError, match="no-such-method"):
        build_balancer("no-such-method")
    with pytest.raises(ValueError, match="mlb"):
        build_balancer("mlb", gamma=1.0)


def test_check_model_refuses_unsupported_fusion():
    class LateOnly(Balancer):
        name = "late-only-test"
        supported_fusions = frozenset({"late-linear"})

    LateOnly.check_model(build_model(features="raw", fusion="late-linear", size="tiny"))
    with pytest.raises(ValueError, match="gated"):
        LateOnly.check_model(build_model(features="raw", fusion="gated", size="tiny"))


def test_methods_see_through_a_ddp_style_wrapper():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    wrapped = torch.nn.DataParallel(model)  # on CPU: a plain `.module` wrapper, like DDP
    batch = _raw_batch()
    mlb = MLB()
    out = wrapped(batch)
    mlb.loss(wrapped, batch, out)[0].backward()
    head_grad = model.unimodal_heads["audio"].weight.grad.clone()
    logs = mlb.before_step(wrapped, batch, out)
    torch.testing.assert_close(model.unimodal_heads["audio"].weight.grad, logs["k_audio"] * head_grad)
    MLB.check_model(wrapped)


def test_a_missing_or_empty_method_module_fails_loudly():
    """A misspelt entry in BASELINE_MODULES must not drop a method silently."""
    from mlb.balancing import _register_module

    with pytest.raises(ModuleNotFoundError, match="no_such_method"):
        _register_module("no_such_method")
    with pytest.raises(ImportError, match="defines no Balancer"):
        _register_module("grads")  # a helper module of the package, with no method in it
