"""The baselines (OGM-GE, MSLR, AGM, PMR, MMCosine): each rule on hand-made numbers worked out by hand,
the gradient changes each makes on a tiny model, and a few-step training smoke run of every method."""

import copy
import io
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mlb.balancing import METHODS, build_balancer
from mlb.balancing.agm import (
    AGM,
    agm_coefficients,
    agm_score,
    agm_shapley,
    clip_if_fusion_grad_large_,
    running_mean,
)
from mlb.balancing.mmcosine import MMCosine, cosine_logits
from mlb.balancing.mslr import MSLR, mslr_ratio
from mlb.balancing.ogm_ge import OGM, OGMGE, modulate_gradients_, ogm_coefficients, ogm_scores
from mlb.balancing.pmr import (
    PMR,
    BalancerDivergedError,
    PMRDivergenceWarning,
    class_sums,
    pmr_ratio,
    pmr_weights,
    prototype_logits,
    update_prototypes,
)
from mlb.models import ModelOutput, build_model
from mlb.models.model import zero_modality

pytestmark = pytest.mark.unit

LN2 = math.log(2)


# ---- tiny model, batch and gradients -----------------------------------------------------------------
def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(b, 1, 32, 24, generator=g),
        "video": torch.randn(b, 3, 3, 32, 32, generator=g),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _model(fusion="late-linear", seed=0, **options):
    torch.manual_seed(seed)
    return build_model(features="raw", fusion=fusion, size="tiny", **options)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _backward(balancer, model, batch):
    """One step up to before_step: returns (out, loss, logs, grads right after backward)."""
    out = model(batch)
    loss, logs = balancer.loss(model, batch, out)
    model.zero_grad()
    loss.backward()
    return out, loss, logs, _grads(model)


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ---- OGM-GE ------------------------------------------------------------------------------------------
def test_ogm_scores_sum_the_true_class_probabilities():
    # row 0: softmax(0, ln 3) = (1/4, 3/4), true class 1 -> 0.75; row 1: (3/4, 1/4), class 1 -> 0.25
    logits = torch.tensor([[0.0, math.log(3)], [math.log(3), 0.0]])
    assert ogm_scores(logits, torch.tensor([1, 1])).item() == pytest.approx(1.0, rel=1e-6)


def test_ogm_leader_gets_one_minus_tanh_of_rho():
    # score_a 1, score_v 2: rho_v = 2 > 1, video leads: coeff_v = 1 - tanh(0.8·2) = 0.078331446, coeff_a = 1
    c = ogm_coefficients(torch.tensor(1.0), torch.tensor(2.0), alpha=0.8)
    assert (c["ratio_v"].item(), c["ratio_a"].item()) == pytest.approx((2.0, 0.5))
    assert (c["coeff_a"].item(), c["coeff_v"].item()) == pytest.approx((1.0, 0.078331446), rel=1e-6)
    # mirrored: audio leads with rho_a = 2
    c = ogm_coefficients(torch.tensor(2.0), torch.tensor(1.0), alpha=0.8)
    assert (c["coeff_a"].item(), c["coeff_v"].item()) == pytest.approx((0.078331446, 1.0), rel=1e-6)


def test_ogm_discontinuity_at_rho_one():
    # tanh of rho, not of rho - 1: the moment video leads (rho_v = 1.001) its coefficient drops from 1 to
    # 1 - tanh(0.8·1.001) = 0.335516223, and just below (rho_v = 0.999) audio gets
    # 1 - tanh(0.8/0.999) = 0.335515776 while video keeps 1.
    above = ogm_coefficients(torch.tensor(1.0), torch.tensor(1.001), alpha=0.8)
    below = ogm_coefficients(torch.tensor(1.0), torch.tensor(0.999), alpha=0.8)
    assert (above["coeff_a"].item(), above["coeff_v"].item()) == pytest.approx((1.0, 0.335516223), rel=1e-5)
    assert (below["coeff_a"].item(), below["coeff_v"].item()) == pytest.approx((0.335515776, 1.0), rel=1e-5)
    # an exact tie goes to the authors' else-branch: audio is slowed by 1 - tanh(0.8) = 0.335963230
    tie = ogm_coefficients(torch.tensor(0.5), torch.tensor(0.5), alpha=0.8)
    assert (tie["coeff_a"].item(), tie["coeff_v"].item()) == pytest.approx((0.335963230, 1.0), rel=1e-6)


def test_ogm_zero_score_stays_finite():
    c = ogm_coefficients(torch.tensor(0.0), torch.tensor(1.0), alpha=0.8)
    assert all(torch.isfinite(v) for v in c.values())
    assert c["coeff_v"].item() == pytest.approx(0.0, abs=1e-6)  # tanh(0.8·1e12) = 1


def test_ogm_scales_only_the_leader_encoder_exactly():
    model, batch = _model(), _batch()
    ogm = OGM(alpha=0.8)  # no noise: exact
    out, _, _, before = _backward(ogm, model, batch)
    c = ogm_coefficients(
        ogm_scores(out.fused_parts["audio"], batch["label"]),
        ogm_scores(out.fused_parts["video"], batch["label"]),
        alpha=0.8,
    )
    logs = ogm.before_step(model, batch, out)
    after = _grads(model)
    k = {"audio": c["coeff_a"].item(), "video": c["coeff_v"].item()}
    assert (logs["k_audio"], logs["k_video"]) == pytest.approx((k["audio"], k["video"]), rel=1e-6)
    assert min(k.values()) < 1.0 and max(k.values()) == 1.0  # one leader slowed, the other untouched
    for name, g in before.items():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        expected = g * k[m] if m else g  # fusion weight, bias and unimodal heads unchanged
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=0)


def test_ogm_ge_noise_has_the_std_of_the_original_gradient():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(20000))
    p.grad = 3.0 * torch.randn(20000)
    original = p.grad.clone()
    modulate_gradients_([p], 0.5, noise=True)
    noise = p.grad - 0.5 * original
    assert noise.std().item() == pytest.approx(original.std().item(), rel=0.03)
    assert abs(noise.mean().item()) < 0.1


def test_ogm_window_and_state():
    model, batch = _model(), _batch()
    ogm = OGMGE(end_epoch=0)
    ogm.on_epoch_end(0, {})  # now in epoch 1 > end_epoch: no modulation, no noise
    out, _, _, before = _backward(ogm, model, batch)
    logs = ogm.before_step(model, batch, out)
    assert logs["ogm_active"] == 0.0 and logs["k_audio"] == logs["k_video"] == 1.0
    for name, g in before.items():
        torch.testing.assert_close(_grads(model)[name], g, rtol=0, atol=0)
    restored = OGMGE()
    restored.load_state_dict(ogm.state_dict())
    assert restored.epoch == 1


def test_ogm_refuses_other_fusion_heads():
    for fusion in ("mid-mlp", "film", "gated", "tf"):
        with pytest.raises(ValueError, match="late-linear"):
            OGMGE.check_model(_model(fusion))
    OGMGE.check_model(_model("late-linear"))
    assert METHODS["ogm-ge"] is OGMGE and METHODS["ogm"] is OGM and OGM().ge is False and OGMGE().ge is True


# ---- MSLR --------------------------------------------------------------------------------------------
def test_mslr_ratio_memory():
    # 1 until K = 3 earlier epochs exist; then now / mean of the last 3 (older ones forgotten)
    assert mslr_ratio([], 0.5, window=3) == 1.0
    assert mslr_ratio([0.4, 0.5], 0.9, window=3) == 1.0
    assert mslr_ratio([0.4, 0.5, 0.6], 0.75, window=3) == pytest.approx(1.5)  # 0.75 / 0.5
    assert mslr_ratio([0.1, 0.4, 0.5, 0.6], 0.75, window=3) == pytest.approx(1.5)
    assert mslr_ratio([0.0, 0.0], 0.3, window=2) == 1.0  # mean 0: no information


def test_mslr_coefficients_over_epochs():
    mslr = MSLR(window=2)  # init audio 0.7, video 1.3
    mslr.modalities = ("audio", "video")
    seq = [(0.4, 0.2), (0.6, 0.3), (0.5, 0.6), (0.9, 0.3)]
    ks = []
    for epoch, (acc_a, acc_v) in enumerate(seq):
        mslr.on_epoch_end(epoch, {"acc": 0.0, "acc_audio": acc_a, "acc_video": acc_v})
        ks.append((mslr.coefficient("audio"), mslr.coefficient("video")))
    # epochs 0, 1: fewer than K = 2 earlier epochs -> init values
    # epoch 2: audio 0.5 / mean(0.4, 0.6) = 1 -> 0.7; video 0.6 / mean(0.2, 0.3) = 2.4 -> 1.3·2.4 = 3.12
    # epoch 3: audio 0.9 / mean(0.6, 0.5) = 1.636364 -> 1.145455; video 0.3 / mean(0.3, 0.6) -> 0.866667
    expected = [(0.7, 1.3), (0.7, 1.3), (0.7, 3.12), (1.1454545, 0.8666667)]
    for got, want in zip(ks, expected):
        assert got == pytest.approx(want, rel=1e-6)
    restored = MSLR(window=2)
    restored.load_state_dict(mslr.state_dict())
    assert restored.history == mslr.history and restored.ratio == mslr.ratio


@pytest.mark.parametrize("fusion_slices", [False, True])
def test_mslr_scales_each_branch_but_not_the_probe_heads(fusion_slices):
    """fusion_slices=False: encoders only (kkontras/MLB Bias_Infusion_MSLR, names enc_0 / enc_1);
    True: also the Late-Linear halves (Lingy12/AGM_ICCV2023 CREMAD_main.py: audio_net + audio_cls)."""
    model, batch = _model(), _batch()
    mslr = MSLR(init={"audio": 0.5, "video": 2.0}, fusion_slices=fusion_slices)
    out, _, _, before = _backward(mslr, model, batch)
    logs = mslr.before_step(model, batch, out)
    assert (logs["k_audio"], logs["k_video"]) == (0.5, 2.0)
    after = _grads(model)
    for name, g in before.items():
        if name.startswith("encoders."):
            k = {"audio": 0.5, "video": 2.0}[name.split(".")[1]]
            torch.testing.assert_close(after[name], g * k, rtol=1e-6, atol=0)
        elif name == "fusion.weight" and fusion_slices:  # Late-Linear columns: audio first, video second
            d = g.shape[1] // 2
            torch.testing.assert_close(after[name][:, :d], g[:, :d] * 0.5, rtol=1e-6, atol=0)
            torch.testing.assert_close(after[name][:, d:], g[:, d:] * 2.0, rtol=1e-6, atol=0)
        else:  # the fusion layer (unless fusion_slices), its bias and the probe heads: untouched
            torch.testing.assert_close(after[name], g, rtol=0, atol=0)


# ---- AGM ---------------------------------------------------------------------------------------------
def test_agm_shapley_outputs():
    # out_a = ½(pred − pred_za + pred_zv) = ½(2 − 0.5 + 1, 0 − 0 + 1) = (1.25, 0.5)
    # out_v = ½(pred − pred_zv + pred_za) = ½(2 − 1 + 0.5, 0 − 1 + 0) = (0.75, −0.5)
    pred, pred_za, pred_zv = (
        torch.tensor([[2.0, 0.0]]),
        torch.tensor([[0.5, 0.0]]),
        torch.tensor([[1.0, 1.0]]),
    )
    out_a, out_v = agm_shapley(pred, pred_za, pred_zv)
    assert out_a.tolist() == [[1.25, 0.5]] and out_v.tolist() == [[0.75, -0.5]]
    torch.testing.assert_close(out_a + out_v, pred)


def test_agm_score_is_clamped_cross_entropy():
    assert agm_score(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(LN2, rel=1e-6)
    # p(true) = e^-100 / (1 + e^-100) < 1e-8 -> clamped: −log 1e-8 = 18.420680744
    assert agm_score(torch.tensor([[0.0, -100.0]]), torch.tensor([1])).item() == pytest.approx(18.420680744)


def test_agm_coefficients_and_cap():
    # score_a 1.0, score_v 0.5, running means equal (targets 1): r_a = e^-0.5 = 0.606530660,
    # r_v = e^0.5 = 1.648721271; coeff_a = exp(1.5·(1 − 0.606530660)) = 1.804356485,
    # coeff_v = exp(1.5·(1 − 1.648721271)) = 0.377916538
    c = agm_coefficients(1.0, 0.5, 0.8, 0.8, alpha=1.5)
    assert (c["target_a"], c["target_v"]) == (1.0, 1.0)
    assert (c["r_a"], c["r_v"]) == pytest.approx((0.606530660, 1.648721271))
    assert (c["coeff_a"], c["coeff_v"]) == pytest.approx((1.804356485, 0.377916538))
    # means 0 and 5: target_a = e^5, target_a − r_a = 147.4 is capped at 10 -> exp(15) = 3269017.37;
    # coeff_v = exp(1.5·(e^-5 − 1)) = 0.225396754
    c = agm_coefficients(1.0, 1.0, 0.0, 5.0, alpha=1.5)
    assert (c["coeff_a"], c["coeff_v"]) == pytest.approx((3269017.37, 0.225396754))


def test_agm_running_mean_over_all_iterations():
    m = running_mean(0.0, 0, 3.0)  # first value: the mean is the value
    assert m == 3.0
    m = running_mean(m, 1, 1.0)  # (3 + 1) / 2
    assert m == 2.0
    assert running_mean(m, 2, 5.0) == pytest.approx(3.0)  # (3 + 1 + 5) / 3


def test_agm_masked_passes_run_in_eval_mode_and_restore_train_mode():
    """The step-by-step gradients are held against the authors' code in tests/test_fidelity_agm.py."""
    model, batch = _model(), _batch()
    for variant in ("agm", "mlb"):
        agm = AGM(alpha=1.5, variant=variant)
        model.train()
        out = model(batch)
        pred_za, pred_zv = agm.masked_predictions(model, batch, out)
        assert model.training and pred_za.requires_grad
        if variant == "agm":
            model.eval()
            with torch.no_grad():
                torch.testing.assert_close(pred_za, model(zero_modality(batch, "audio")).fused)
                torch.testing.assert_close(pred_zv, model(zero_modality(batch, "video")).fused)
            model.train()


def test_agm_clips_the_global_norm_when_a_fusion_gradient_leaves_the_unit_box():
    model = _model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    assert not clip_if_fusion_grad_large_(model)  # every fusion gradient in [−1, 1]: untouched
    assert all((p.grad == 0.5).all() for p in model.parameters())
    model.fusion.weight.grad[0, 0] = -3.0
    assert clip_if_fusion_grad_large_(model)
    trained = [p for n, p in model.named_parameters() if not n.startswith("unimodal_heads.")]
    total = torch.sqrt(sum((p.grad**2).sum() for p in trained))
    assert total.item() == pytest.approx(1.0, rel=1e-4)


def test_agm_non_finite_output_keeps_the_running_means_clean():
    agm = AGM()
    agm.mean_score, agm.iterations = [1.0, 2.0], 5
    model = SimpleNamespace(modalities=("audio", "video"), unimodal_heads={})
    agm.masked_predictions = lambda model, batch, out: (torch.zeros(1, 2), torch.zeros(1, 2))  # no real model
    out = ModelOutput(fused=torch.full((1, 2), float("nan")), unimodal={}, features={})  # a NaN output
    _, logs = agm.loss(model, {"label": torch.tensor([0])}, out)
    assert (logs["k_audio"], logs["k_video"]) == (1.0, 1.0)
    assert agm.mean_score == [1.0, 2.0] and agm.iterations == 5


def test_agm_refuses_three_modalities():
    with pytest.raises(ValueError, match="2 modalities"):
        AGM.check_model(SimpleNamespace(modalities=("a", "b", "c"), fusion_name="late-linear"))


# ---- PMR ---------------------------------------------------------------------------------------------
def test_prototype_logits_are_negative_euclidean_distances():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    prototypes = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert prototype_logits(features, prototypes).tolist() == [[-0.0, -3.0, -4.0], [-5.0, -4.0, -3.0]]
    # distance 0 gives a finite (zero) gradient, not the NaN of sqrt'(0)
    f = torch.zeros(1, 2, requires_grad=True)
    prototype_logits(f, prototypes).sum().backward()
    assert torch.isfinite(f.grad).all()


def test_prototypes_are_class_means_with_ema():
    sums, counts = class_sums(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([0, 0, 2]), 3)
    assert sums.tolist() == [[4.0, 6.0], [0.0, 0.0], [5.0, 6.0]] and counts.tolist() == [2.0, 0.0, 1.0]
    # a non-finite row is left out of both the sum and the count
    nan_row = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [5.0, 6.0]])
    sums_nan, counts_nan = class_sums(nan_row, torch.tensor([0, 0, 2]), 3)
    assert sums_nan.tolist() == [[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]] and counts_nan.tolist() == [
        1.0,
        0.0,
        1.0,
    ]
    first = update_prototypes(sums, counts, None, momentum=0.2)
    assert first.tolist() == [[2.0, 3.0], [0.0, 0.0], [5.0, 6.0]]
    # EMA: 0.8·mean + 0.2·previous; class 1 (unseen) keeps its previous prototype
    previous = torch.tensor([[0.0, 0.0], [7.0, 7.0], [1.0, 2.0]])
    ema = update_prototypes(sums, counts, previous, momentum=0.2)
    torch.testing.assert_close(ema, torch.tensor([[1.6, 2.4], [7.0, 7.0], [4.2, 5.2]]))


def test_pmr_ratio_and_weaker_modality():
    # softmax(ln 3, 0)[0] = 0.75, softmax(0, 0)[0] = 0.5 -> rho = 1.5: audio leads, video gets alpha
    rho = pmr_ratio(torch.tensor([[math.log(3), 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    assert rho.item() == pytest.approx(1.5, rel=1e-6)
    assert pmr_weights(1.5, alpha=2.0) == (0.0, 2.0)
    assert pmr_weights(0.5, alpha=2.0) == (2.0, 0.0)
    assert pmr_weights(1.0, alpha=2.0) == (0.0, 0.0)


def _stub_model():
    """Just what PMR's loss reads: modalities and 2-d unimodal probe heads."""
    heads = {m: torch.nn.Linear(2, 2) for m in ("audio", "video")}
    return SimpleNamespace(modalities=("audio", "video"), unimodal_heads=heads)


def test_pmr_loss_adds_the_weaker_modality_prototype_ce():
    # fused (0, 0), y = 0: CE = ln 2. audio feature (0, 0), prototypes (0, 0), (3, 0): logits (0, −3),
    # p = 0.952574127; video feature (3, 4), prototypes (0, 0), (3, 4): logits (−5, 0), p = 0.006692851.
    # rho = 142.3 > 1: video is weaker: loss = ln 2 + 1.0·(−ln 0.006692851) = 0.693147 + 5.006715 = 5.699863
    pmr = PMR(alpha=1.0)
    pmr.prototypes = {
        "audio": torch.tensor([[0.0, 0.0], [3.0, 0.0]]),
        "video": torch.tensor([[0.0, 0.0], [3.0, 4.0]]),
    }
    out = ModelOutput(
        fused=torch.zeros(1, 2),
        unimodal={},
        features={"audio": torch.tensor([[0.0, 0.0]]), "video": torch.tensor([[3.0, 4.0]])},
    )
    _, logs = pmr.loss(_stub_model(), {"label": torch.tensor([0])}, out)
    assert logs["pmr_active"] == 1.0 and logs["pmr_ratio"] == pytest.approx(142.327110, rel=1e-5)
    assert (logs["pmr_weight_audio"], logs["pmr_weight_video"]) == (0.0, 1.0)
    assert logs["loss_proto_video"] == pytest.approx(5.006715348, rel=1e-6)
    assert logs["loss"] == pytest.approx(5.699862529, rel=1e-6)


def test_pmr_first_epoch_has_no_prototypes_then_uses_the_epoch_means():
    pmr = PMR(momentum=0.0)
    model = _stub_model()
    out = ModelOutput(
        fused=torch.zeros(2, 2),
        unimodal={},
        features={
            "audio": torch.tensor([[1.0, 1.0], [3.0, 3.0]]),
            "video": torch.tensor([[2.0, 0.0], [0.0, 2.0]]),
        },
    )
    _, logs = pmr.loss(model, {"label": torch.tensor([0, 0])}, out)
    assert logs["pmr_active"] == 0.0 and logs["loss"] == pytest.approx(LN2)
    pmr.on_epoch_end(0, {})
    torch.testing.assert_close(pmr.prototypes["audio"], torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    torch.testing.assert_close(pmr.prototypes["video"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert pmr.active
    buffer = io.BytesIO()
    torch.save(pmr.state_dict(), buffer)
    buffer.seek(0)
    restored = PMR()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.prototypes["audio"], pmr.prototypes["audio"])


def _diverging_epoch(pmr):
    out = ModelOutput(
        fused=torch.zeros(1, 2),
        unimodal={},
        features={"audio": torch.tensor([[1e6, 0.0]]), "video": torch.tensor([[1.0, 0.0]])},
    )
    pmr.loss(_stub_model(), {"label": torch.tensor([1])}, out)
    return pmr.on_epoch_end(0, {})


def test_pmr_divergence_is_reported_not_crashing():
    pmr = PMR(max_prototype_norm=1e4)
    with pytest.warns(PMRDivergenceWarning, match="exploding"):
        logs = _diverging_epoch(pmr)
    assert logs["pmr_diverged"] == 1.0 and pmr.diverged and not pmr.active
    out = ModelOutput(
        fused=torch.zeros(1, 2),
        unimodal={},
        features={"audio": torch.zeros(1, 2), "video": torch.zeros(1, 2)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        _, logs = pmr.loss(_stub_model(), {"label": torch.tensor([0])}, out)
    assert logs["pmr_diverged"] == 1.0 and logs["loss"] == pytest.approx(LN2)  # fused CE only
    with pytest.raises(BalancerDivergedError, match="exploding"):
        _diverging_epoch(PMR(on_divergence="raise"))
    # a non-finite prototype loss during a step is caught too
    pmr = PMR()
    pmr.prototypes = {"audio": torch.zeros(2, 2), "video": torch.zeros(2, 2)}
    bad = ModelOutput(
        fused=torch.zeros(1, 2),
        unimodal={},
        features={"audio": torch.tensor([[float("nan"), 0.0]]), "video": torch.zeros(1, 2)},
    )
    with pytest.warns(PMRDivergenceWarning, match="non-finite"):
        _, logs = pmr.loss(_stub_model(), {"label": torch.tensor([0])}, bad)
    assert logs["pmr_diverged"] == 1.0 and logs["pmr_active"] == 0.0


# ---- MMCosine ----------------------------------------------------------------------------------------
def test_cosine_logits_scaling():
    # feature (3, 4) has cosines (0.6, 0.8, −0.6) with (1, 0), (0, 2), (−1, 0); times s = 10
    features, weight = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    torch.testing.assert_close(cosine_logits(features, weight, 10.0), torch.tensor([[6.0, 8.0, -6.0]]))
    torch.testing.assert_close(
        cosine_logits(5 * features, 7 * weight, 50.0), torch.tensor([[30.0, 40.0, -30.0]])
    )


def test_mmcosine_model_is_the_sum_of_per_modality_cosine_logits():
    mm = MMCosine(scale=10.0)
    assert mm.model_options() == {"classifier": "cosine", "cosine_scale": 10.0, "cosine_head": "per-modality"}
    model, batch = _model(**mm.model_options()), _batch()
    MMCosine.check_model(model)
    out = model(batch)
    w, d = model.fusion.weight, out.features["audio"].shape[1]
    expected = cosine_logits(out.features["audio"], w[:, :d], 10.0) + cosine_logits(
        out.features["video"], w[:, d:], 10.0
    )
    torch.testing.assert_close(out.fused, expected)
    assert out.fused.abs().max() <= 20.0 + 1e-5  # |out_m| ≤ s each
    _, logs = mm.loss(model, batch, out)
    assert logs["loss"] == pytest.approx(F.cross_entropy(expected, batch["label"]).item(), rel=1e-6)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_mmcosine_film_and_gated_are_the_authors_symmetric_heads(fusion):
    """GeWu-Lab/MMCosine_ICASSP23 models/fusion_modules.py (FiLM, GatedFusion) and main_CD.py: each
    modality modulates the other, then s·cos of each half with its own half of fc_out, summed."""
    mm = MMCosine(scale=50.0)
    model, batch = _model(fusion=fusion, **mm.model_options()), _batch()
    MMCosine.check_model(model)
    out = model(batch)
    x, y, head = out.features["audio"], out.features["video"], model.fusion
    d = x.shape[1]
    if fusion == "film":
        gamma_x, beta_x = torch.split(head.film["audio"](x), d, 1)
        gamma_y, beta_y = torch.split(head.film["video"](y), d, 1)
        x_new, y_new = gamma_y * x + beta_y, gamma_x * y + beta_x
    else:
        out_x, out_y = head.project["audio"](x), head.project["video"](y)
        y_new, x_new = torch.mul(torch.sigmoid(out_x), out_y), torch.mul(torch.sigmoid(out_y), out_x)
    fc_out = torch.cat([head.out["audio"], head.out["video"]], dim=1)  # [C, 2D], the authors' fc_out.weight
    out_a = torch.mm(F.normalize(x_new, dim=1), F.normalize(fc_out[:, :d].t(), dim=0)) * 50.0
    out_v = torch.mm(F.normalize(y_new, dim=1), F.normalize(fc_out[:, d:].t(), dim=0)) * 50.0
    torch.testing.assert_close(out.fused, out_a + out_v)
    torch.testing.assert_close(out.fused_parts["audio"], out_a)
    # head="fused": the paper's one-directional head with one cosine output layer
    fused = _model(fusion=fusion, **MMCosine(scale=50.0, head="fused").model_options())
    assert type(fused.fusion).__name__ == {"film": "FiLM", "gated": "Gated"}[fusion]
    MMCosine(scale=50.0, head="fused").check_scale(fused)


def test_mmcosine_refuses_a_linear_or_mismatched_head():
    with pytest.raises(ValueError, match="cosine"):
        MMCosine.check_model(_model())
    model = _model(classifier="cosine", cosine_scale=50.0)
    with pytest.raises(ValueError, match="scale=10"):
        MMCosine(scale=10.0).loss(model, _batch(), model(_batch()))
    MMCosine.check_model(_model("film", classifier="cosine", cosine_scale=50.0))


# ---- every method: defaults, bad settings, and a few training steps ----------------------------------
@pytest.mark.parametrize(
    "name, params, key",
    [
        ("ogm-ge", {"alpha": 0.0}, "alpha"),
        ("agm", {"alpha": float("nan")}, "alpha"),
        ("ogm", {"end_epoch": -1}, "end_epoch"),
        ("mslr", {"window": 0}, "window"),
        ("mslr", {"init": {"audio": -1.0}}, "init"),
        ("agm", {"alpha": -1.0}, "alpha"),
        ("pmr", {"momentum": 1.0}, "momentum"),
        ("pmr", {"on_divergence": "ignore"}, "on_divergence"),
        ("mmcosine", {"scale": 0.0}, "scale"),
    ],
)
def test_bad_settings_fail_early_naming_the_key(name, params, key):
    with pytest.raises(ValueError, match=key):
        build_balancer(name, **params)


def test_authors_defaults():
    assert (OGMGE().alpha, OGMGE().start_epoch, OGMGE().end_epoch) == (0.8, 0, 50)
    assert (MSLR().init, MSLR().window) == ({"audio": 0.7, "video": 1.3}, 20)
    assert AGM().alpha == 1.5 and (PMR().alpha, PMR().momentum, PMR().end_epoch) == (1.0, 0.2, 100)
    assert MMCosine().scale == 10.0


@pytest.mark.parametrize(
    "name, fusion",
    [
        ("ogm-ge", "late-linear"),
        ("ogm", "late-linear"),
        ("mslr", "late-linear"),
        ("mslr", "gated"),
        ("agm", "late-linear"),
        ("agm", "mid-mlp"),
        ("pmr", "late-linear"),
        ("pmr", "film"),
        ("mmcosine", "late-linear"),
        ("mmcosine", "mid-mlp"),
    ],
)
def test_smoke_training_steps(name, fusion):
    """2 epochs x 2 steps on a tiny model and random data: finite losses, parameters move, logs are
    floats, per-epoch hooks run, and the state survives torch.save / weights_only load."""
    balancer = build_balancer(name)
    model = _model(fusion, **balancer.model_options())
    balancer.check_model(model)
    start = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(2):
        for step in range(2):
            batch = _batch(b=6, seed=10 * epoch + step)
            out = model(batch)
            loss, logs = balancer.loss(model, batch, out)
            optimizer.zero_grad()
            loss.backward()
            logs |= balancer.before_step(model, batch, out)
            optimizer.step()
            assert math.isfinite(loss.item()) and all(isinstance(v, float) for v in logs.values())
            assert all(math.isfinite(v) for v in logs.values()), logs
        balancer.on_epoch_end(epoch, {"acc": 0.3, "acc_audio": 0.2 + 0.1 * epoch, "acc_video": 0.25})
    if name == "pmr":  # prototypes from epoch 0 are used in epoch 1
        assert logs["pmr_active"] == 1.0 and "pmr_ratio" in logs
    if name in ("ogm-ge", "ogm", "mslr", "agm"):
        assert {"k_audio", "k_video"} <= set(logs)
    moved = [
        n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.equal(p, start[n])
    ]
    assert any(n.startswith("encoders.audio") for n in moved) and any(
        n.startswith("encoders.video") for n in moved
    )
    # the state survives a checkpoint (torch.save, a weights_only load into a fresh balancer) unchanged
    from helpers.balancer_state import assert_state_round_trip

    assert_state_round_trip(name, balancer)
