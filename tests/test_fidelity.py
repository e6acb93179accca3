"""Fidelity: mlbpipe's balancing methods against independent re-expressions of their authors' public code.

Every reference below is written here, in the authors' style (per-sample loops, parameter-name matching,
if/else branches), and uses nothing from `mlb.balancing` except the method under test; mlbpipe supplies
only the tiny models. Sources (public repositories):
- kkontras/MLB `agents/general_agent/helpers/Bias_Infusion.py` (Bias_Infusion_MLB, _MLB_3d, _OGM, _MSLR,
  _Prototype), `models/OGM_Model.py` (ConcatClassifier_CREMAD_OGM_pre, TF_Fusion), `models/fusion_gates.py`
  (FiLM, GatedFusion): the parameter names the MLB authors' substring rule matches;
- GeWu-Lab/OGM-GE_CVPR2022 `main.py` and Lingy12/AGM_ICCV2023 `run/CREMAD_main.py` (OGM-GE, MSLR);
- fanyunfeng-bit/Modal-Imbalance-PMR `main_Prototype_grad.py` (PMR);
- GeWu-Lab/MMCosine_ICASSP23 `main_CD.py` (MMCosine, concat fusion).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.models import three_modality_model_and_batch

from mlb.balancing import MLB
from mlb.balancing.mmcosine import MMCosine
from mlb.balancing.mslr import MSLR
from mlb.balancing.ogm_ge import OGMGE
from mlb.balancing.pmr import PMR
from mlb.models import ModelOutput, build_model
from mlb.models.fusion import FUSIONS

pytestmark = pytest.mark.unit
DIMS = {"audio": 5, "video": 7}


# ---- tiny models and batches ---------------------------------------------------------------------------
def _model(features, fusion, seed=0, input_dims=DIMS, **options):
    torch.manual_seed(seed)
    return build_model(features=features, fusion=fusion, size="tiny", input_dims=input_dims, **options)


def _batch(features, b=8, seed=0, video_dim=7):
    g = torch.Generator().manual_seed(seed)
    if features == "raw":
        return {
            "audio": torch.randn(b, 1, 32, 24, generator=g),
            "video": torch.randn(b, 3, 3, 32, 32, generator=g),
            "label": torch.randint(0, 6, (b,), generator=g),
        }
    mask = torch.ones(b, 9, dtype=torch.bool)
    mask[0, 5:] = False  # one padded sequence
    return {
        "audio": torch.randn(b, 9, 5, generator=g),
        "audio_mask": mask,
        "video": torch.randn(b, 4, video_dim, generator=g),
        "video_mask": torch.ones(b, 4, dtype=torch.bool),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _make_leader(model, batch, lead, factor=3.0):
    """Sharpen `lead`'s unimodal head and label every sample with that head's argmax, so `lead` scores best."""
    head = model.unimodal_heads[lead]
    with torch.no_grad():
        head.weight.mul_(factor)
        head.bias.mul_(factor)
        batch["label"] = model(batch).unimodal[lead].argmax(1)


def _named_grads(model):
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def _assert_grads(model, expected, rtol=1e-5, what=""):
    for name, p in model.named_parameters():
        if expected[name] is None:
            assert p.grad is None, f"{name}: the reference has no gradient ({what})"
            continue
        torch.testing.assert_close(
            p.grad, expected[name], rtol=rtol, atol=1e-12, msg=lambda m, name=name: f"{name} ({what}): {m}"
        )


def _multi_loss_grads(model, out, label):
    """Paper Eq. 3 written out: CE(fused) + sum_m CE(unimodal_m); its gradient, unscaled."""
    names, params = zip(*model.named_parameters())
    total = F.cross_entropy(out.fused, label)
    for m in model.modalities:
        total = total + F.cross_entropy(out.unimodal[m], label)
    grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    return {n: (None if g is None else g.clone()) for n, g in zip(names, grads)}


# ---- MLB: the authors' parameter names and rule (kkontras/MLB) -----------------------------------------
def _authors_fusion_names(fusion, rest, grad, index):
    """One fusion-head gradient of mlbpipe as the MLB authors' modules name it: [(name, view)]."""
    head, _, tail = rest.partition(".")
    if fusion == "late-linear":  # ConcatClassifier: fc_i_lin (D -> C) per modality, only fc_0_lin has a bias
        if rest == "bias":
            return [("fc_0_lin.bias", grad)]
        width = grad.shape[1] // len(index)
        return [(f"fc_{i}_lin.weight", grad[:, i * width : (i + 1) * width]) for i in range(len(index))]
    if fusion == "mid-mlp":  # cls_type "nonlinear": fc_i_lin (D -> fc_inner), then common_fc
        if head == "inputs":
            m, _, p = tail.partition(".")
            return [(f"fc_{index[m]}_lin.{p}", grad)]
        if head == "input_bias":
            return [("fc_0_lin.bias", grad)]
        return [(f"common_fc.{tail}", grad)]  # mlp.<k>.<p> -> common_fc.<k>.<p>
    if fusion == "film":  # fusion_gates.FiLM: fc (gamma, beta from audio), fc_out
        return [({"film": "common_fc.fc", "out": "common_fc.fc_out"}[head] + f".{tail}", grad)]
    if fusion == "gated":  # fusion_gates.GatedFusion: fc_mod0_x (gate, audio), fc_mod1_y (video), fc_out
        names = {"gate": "common_fc.fc_mod0_x", "value": "common_fc.fc_mod1_y", "out": "common_fc.fc_out"}
        return [(names[head] + f".{tail}", grad)]
    if fusion == "tf":  # OGM_Model.TF_Fusion: mod_i_token, cls_token, common_net, common_fc
        if head == "modality_tokens":
            return [(f"common_fc.mod_{index[tail]}_token", grad)]
        if head == "cls":
            return [("common_fc.cls_token", grad)]
        if head == "out":
            return [(f"common_fc.common_fc.{tail}", grad)]
        return [(f"common_fc.common_net.{rest}", grad)]
    raise AssertionError(fusion)


def _authors_named_parameters(model, grads):
    """mlbpipe's gradients (views into `grads`) under the MLB authors' parameter names."""
    index = {m: i for i, m in enumerate(model.modalities)}
    renamed = []
    for name, g in grads.items():
        if g is None:
            continue
        top, _, rest = name.partition(".")
        if top in ("encoders", "unimodal_heads"):
            m, _, sub = rest.partition(".")
            # the unimodal classifier lives inside the authors' encoder module enc_i
            renamed.append((f"enc_{index[m]}." + ("" if top == "encoders" else "cls.") + sub, g))
        else:
            renamed += _authors_fusion_names(model.fusion_name, rest, g, index)
    return renamed


def _authors_equalize(model, grads, coeffs):
    """Bias_Infusion_MLB(_3d)._equalize_gradients: substring match on each name, one `if` per modality."""
    out = {n: (None if g is None else g.clone()) for n, g in grads.items()}
    for name, g in _authors_named_parameters(model, out):
        for i, coeff in enumerate(coeffs):
            if f"mod{i}" in name or f"enc_{i}" in name or f"fc_{i}_lin.weight" in name:
                g.mul_(coeff)  # in place: a view scales the mlbpipe tensor behind it
    return out


def _authors_scores(logits, label):
    """score_i = torch.mean of softmax(out_i)[j][label[j]] over the samples j, one sample at a time."""
    scores = []
    for out in logits:
        probs = torch.softmax(out.detach(), dim=1)
        scores.append(torch.stack([probs[j][label[j]] for j in range(out.size(0))]).mean())
    return scores


def _authors_mlb_coefficients(scores, alpha, beta):
    """Bias_Infusion_MLB.on_backward_end (M = 2) / Bias_Infusion_MLB_3d (M = 3), tanh_mode 2,
    tanh_mode_beta = beta: ratio_i = mean of the others' scores / own score."""
    if len(scores) == 2:
        ratio_0 = scores[1] / scores[0]
        ratios = [ratio_0, 1 / ratio_0]
    else:
        ratios = []
        for i, s_i in enumerate(scores):
            others = [s for j, s in enumerate(scores) if j != i]
            ratios.append((sum(others) / len(others)) / s_i)
    coeffs = []
    for r in ratios:
        if r > 1:
            coeffs.append(1 + (beta - 1) * torch.tanh(alpha * (r - 1)))
        else:
            coeffs.append(1 + torch.tanh(alpha * (r - 1)))
    return ratios, coeffs


def _check_mlb_logs(logs, modalities, scores, ratios, coeffs, rel=1e-5):
    for i, m in enumerate(modalities):
        assert logs[f"s_{m}"] == pytest.approx(float(scores[i]), rel=rel)
        assert logs[f"r_{m}"] == pytest.approx(float(ratios[i]), rel=rel)
        assert logs[f"k_{m}"] == pytest.approx(float(coeffs[i]), rel=rel)


@pytest.mark.parametrize("lead", ["audio", "video"])
@pytest.mark.parametrize("features", ["raw", "cached"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_mlb_matches_authors_equalize_gradients(fusion, features, lead):
    """kkontras/MLB Bias_Infusion.py Bias_Infusion_MLB.on_backward_end + _equalize_gradients (tanh_mode 2)."""
    model, batch = _model(features, fusion), _batch(features)
    _make_leader(model, batch, lead)
    alpha, beta_max = 1.5, 4.0  # beta_max != 2: the two branches give different k
    label = batch["label"]
    out = model(batch)
    if fusion == "late-linear":  # the column layout the fc_i_lin mapping assumes: [f_audio, f_video]
        cat = torch.cat([out.features[m] for m in model.modalities], 1)
        torch.testing.assert_close(out.fused, cat @ model.fusion.weight.t() + model.fusion.bias)
    unscaled = _multi_loss_grads(model, out, label)

    mlb = MLB(alpha=alpha, beta_max=beta_max)  # ownership="authors" is the default
    loss, _ = mlb.loss(model, batch, out)
    loss.backward()
    _assert_grads(model, unscaled, what="MLB's loss is the Multi-Loss")
    logs = mlb.before_step(model, batch, out)

    scores = _authors_scores([out.unimodal[m] for m in model.modalities], label)
    ratios, coeffs = _authors_mlb_coefficients(scores, alpha, beta_max)
    lead_i = model.modalities.index(lead)
    assert ratios[lead_i] < 0.95 and ratios[1 - lead_i] > 1.05  # both branches are exercised
    _check_mlb_logs(logs, model.modalities, scores, ratios, coeffs)
    _assert_grads(model, _authors_equalize(model, unscaled, coeffs), what="authors' equalize_gradients")


def test_mlb_three_modalities_match_authors_mlb_3d():
    """kkontras/MLB Bias_Infusion.py Bias_Infusion_MLB_3d.on_backward_end + _equalize_gradients (tanh_mode 2)."""
    model, batch = three_modality_model_and_batch(6)
    _make_leader(model, batch, "a", factor=4.0)
    alpha, beta_max = 2.0, 3.0
    out = model(batch)
    cat = torch.cat([out.features[m] for m in model.modalities], 1)
    torch.testing.assert_close(out.fused, cat @ model.fusion.weight.t() + model.fusion.bias)
    unscaled = _multi_loss_grads(model, out, batch["label"])
    mlb = MLB(alpha=alpha, beta_max=beta_max)
    mlb.loss(model, batch, out)[0].backward()
    logs = mlb.before_step(model, batch, out)

    scores = _authors_scores([out.unimodal[m] for m in model.modalities], batch["label"])
    ratios, coeffs = _authors_mlb_coefficients(scores, alpha, beta_max)
    assert min(ratios) < 0.95 and max(ratios) > 1.05  # both branches
    _check_mlb_logs(logs, model.modalities, scores, ratios, coeffs)
    _assert_grads(model, _authors_equalize(model, unscaled, coeffs), what="authors' MLB_3d")


@pytest.mark.parametrize("modalities", [2, 3])
def test_mlb_exact_tie_is_the_authors_else_branch_with_k_one(modalities):
    """Bias_Infusion_MLB(_3d).on_backward_end at ratio == 1: the else-branch, 1 + tanh(0) = 1."""
    if modalities == 2:
        model, batch = _model("cached", "late-linear"), _batch("cached")
    else:
        model, batch = three_modality_model_and_batch(6)
    with torch.no_grad():  # identical heads that ignore their input: equal scores, bit for bit
        for head in model.unimodal_heads.values():
            head.weight.zero_()
            head.bias.copy_(torch.linspace(-1.0, 1.0, head.bias.numel()))
    out = model(batch)
    unscaled = _multi_loss_grads(model, out, batch["label"])
    mlb = MLB(alpha=2.0, beta_max=4.0)
    mlb.loss(model, batch, out)[0].backward()
    logs = mlb.before_step(model, batch, out)
    scores = _authors_scores([out.unimodal[m] for m in model.modalities], batch["label"])
    ratios, coeffs = _authors_mlb_coefficients(scores, 2.0, 4.0)
    assert all(float(r) == 1.0 for r in ratios) and all(float(c) == 1.0 for c in coeffs)
    for m in model.modalities:
        assert logs[f"r_{m}"] == 1.0 and logs[f"k_{m}"] == 1.0
    _assert_grads(model, unscaled, rtol=0, what="k = 1 at a tie")


@pytest.mark.parametrize("true_logit", [-200.0, -50.0])  # softmax underflows to exactly 0 / gives ~2e-22
def test_mlb_score_near_zero_keeps_k_finite_at_the_documented_clamp(true_logit):
    """Bias_Infusion_MLB.on_backward_end with a head that gives the true class ~0 probability.

    Authors: ratio_0 = s_1 / s_0 = inf (or ~1e21), so coeff_0 = 1 + (beta - 1) tanh(inf) = beta and
    ratio_1 = 0, coeff_1 = 1 - tanh(alpha): finite. mlbpipe clamps s at eps = 1e-6: r_a = s_v / 1e-6, the
    same k_a = beta_max and k_v within ~1e-5 of the authors'."""
    alpha, beta_max = 1.5, 4.0
    model, batch = _model("cached", "late-linear"), _batch("cached")
    batch["label"] = torch.zeros_like(batch["label"])
    with torch.no_grad():
        head = model.unimodal_heads["audio"]
        head.weight.zero_()
        head.bias.zero_()
        head.bias[0] = true_logit
    out = model(batch)
    unscaled = _multi_loss_grads(model, out, batch["label"])
    mlb = MLB(alpha=alpha, beta_max=beta_max)
    mlb.loss(model, batch, out)[0].backward()
    logs = mlb.before_step(model, batch, out)

    scores = _authors_scores([out.unimodal[m] for m in model.modalities], batch["label"])
    ratios, coeffs = _authors_mlb_coefficients(scores, alpha, beta_max)
    assert float(scores[0]) < 1e-20 and (float(scores[0]) == 0.0) == (true_logit == -200.0)
    assert float(ratios[0]) > 1e20 and float(ratios[1]) < 1e-20  # the authors' ratios: inf (or ~1e21) and ~0
    assert float(coeffs[0]) == beta_max and float(coeffs[1]) == pytest.approx(1 - math.tanh(alpha), rel=1e-6)
    assert all(math.isfinite(v) for v in logs.values())
    assert logs["s_audio"] == pytest.approx(float(scores[0]), abs=1e-30)
    assert logs["r_audio"] == pytest.approx(logs["s_video"] / 1e-6, rel=1e-5)  # the documented clamp
    assert logs["r_video"] == pytest.approx(1e-6 / logs["s_video"], rel=1e-5)
    assert logs["k_audio"] == beta_max
    assert logs["k_video"] == pytest.approx(float(coeffs[1]), rel=1e-4)
    _assert_grads(model, _authors_equalize(model, unscaled, coeffs), rtol=1e-4, what="near-zero score")
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mlb_all_scores_zero_gives_k_one_where_the_authors_give_nan():
    """Bias_Infusion_MLB.on_backward_end with both scores 0: the authors' 0/0 = nan gives coeff nan (it
    would poison every gradient); mlbpipe clamps both s at eps, so r = 1 and k = 1."""
    model, batch = _model("cached", "late-linear"), _batch("cached")
    batch["label"] = torch.zeros_like(batch["label"])
    with torch.no_grad():
        for head in model.unimodal_heads.values():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[0] = -200.0
    out = model(batch)
    unscaled = _multi_loss_grads(model, out, batch["label"])
    mlb = MLB(alpha=1.5, beta_max=4.0)
    mlb.loss(model, batch, out)[0].backward()
    logs = mlb.before_step(model, batch, out)
    scores = _authors_scores([out.unimodal[m] for m in model.modalities], batch["label"])
    _, coeffs = _authors_mlb_coefficients(scores, 1.5, 4.0)
    assert all(float(s) == 0.0 for s in scores) and all(math.isnan(float(c)) for c in coeffs)
    assert logs["r_audio"] == logs["r_video"] == 1.0 and logs["k_audio"] == logs["k_video"] == 1.0
    _assert_grads(model, unscaled, rtol=0, what="k = 1 when every score is 0")


# documented departures of ownership="input" from the authors' rule (mlb/models/fusion.py OWNERSHIP)
_INPUT_ONLY = {"film": {"fusion.film.weight": "audio"}, "tf": {"fusion.modality_tokens.audio": "audio"}}
_INPUT_ONLY["tf"]["fusion.modality_tokens.video"] = "video"
_AUTHORS_ONLY = {"gated": {"fusion.gate.bias": "audio", "fusion.value.bias": "video"}}


@pytest.mark.parametrize("features", ["raw", "cached"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_mlb_input_ownership_departs_from_the_authors_only_where_documented(fusion, features):
    """kkontras/MLB Bias_Infusion.py Bias_Infusion_MLB._equalize_gradients vs mlbpipe's ownership="input":
    they differ exactly on FiLM's film.weight, the Gated biases and the TF modality tokens."""
    model, batch = _model(features, fusion, seed=1), _batch(features, seed=1)
    _make_leader(model, batch, "video")
    out = model(batch)
    unscaled = _multi_loss_grads(model, out, batch["label"])
    authors = MLB(alpha=1.5, beta_max=4.0)
    authors.loss(model, batch, out)[0].backward()
    logs = authors.before_step(model, batch, out)
    by_authors = _named_grads(model)
    for name, p in model.named_parameters():  # back to the unscaled gradients
        p.grad.copy_(unscaled[name])
    MLB(alpha=1.5, beta_max=4.0, ownership="input").before_step(model, batch, out)
    by_input = _named_grads(model)

    differ = {n for n in by_input if not torch.equal(by_input[n], by_authors[n])}
    input_only, authors_only = _INPUT_ONLY.get(fusion, {}), _AUTHORS_ONLY.get(fusion, {})
    assert differ == set(input_only) | set(authors_only)
    for name, m in input_only.items():  # "input" scales these by k_m, the authors leave them
        torch.testing.assert_close(by_input[name], logs[f"k_{m}"] * unscaled[name], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(by_authors[name], unscaled[name], rtol=0, atol=0)
    for name, m in authors_only.items():  # the authors scale these ("mod0"/"mod1" in the name), "input" not
        torch.testing.assert_close(by_authors[name], logs[f"k_{m}"] * unscaled[name], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(by_input[name], unscaled[name], rtol=0, atol=0)


# ---- OGM-GE (GeWu-Lab/OGM-GE_CVPR2022 main.py; Lingy12/AGM_ICCV2023 run/CREMAD_main.py) -----------------
def _authors_ogm_coefficients(model, out, label, alpha):
    """main.py's OGM rule, halves of the concat classifier fc_out rebuilt from the weight and bias."""
    weight, bias = model.fusion.weight, model.fusion.bias
    half = weight.size(1) // 2
    a, v = out.features["audio"].detach(), out.features["video"].detach()
    out_a = torch.mm(a, weight[:, :half].detach().t()) + bias.detach() / 2
    out_v = torch.mm(v, weight[:, half:].detach().t()) + bias.detach() / 2
    score_v = sum([torch.softmax(out_v, 1)[i][label[i]] for i in range(out_v.size(0))])
    score_a = sum([torch.softmax(out_a, 1)[i][label[i]] for i in range(out_a.size(0))])
    ratio_v = score_v / score_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        coeff_v, coeff_a = 1 - torch.tanh(alpha * F.relu(ratio_v)), 1.0
    else:  # ties included: audio is slowed
        coeff_a, coeff_v = 1 - torch.tanh(alpha * F.relu(ratio_a)), 1.0
    return {"s_audio": score_a, "s_video": score_v, "r_audio": ratio_a, "r_video": ratio_v}, (
        coeff_a,
        coeff_v,
    )


def _ogm_expected(grads, coeffs):
    """The parameter set of mlbpipe's reading (ogm_ge.py docstring), which is the MLB authors'
    Bias_Infusion_OGM._equalize_gradients ("enc_0"/"enc_1" in the name: the whole encoder): every
    encoder parameter times its coefficient; the Late-Linear layer and the probe heads untouched."""
    coeff = {"audio": coeffs[0], "video": coeffs[1]}
    expected = {}
    for name, g in grads.items():
        parts = name.split(".")
        expected[name] = g * coeff[parts[1]] if parts[0] == "encoders" and g is not None else g
    return expected


def _fused_ce_backward(balancer, model, batch):
    out = model(batch)
    loss, _ = balancer.loss(model, batch, out)
    loss.backward()
    return out, _named_grads(model)


@pytest.mark.parametrize("lead", ["audio", "video"])
def test_ogm_coefficients_and_scaled_encoders_match_the_authors(lead):
    """OGM-GE_CVPR2022 main.py train_epoch (OGM branch; = AGM_ICCV2023 CREMAD_main.py's OGM-GE branch)."""
    alpha = 0.8
    model, batch = _model("raw", "late-linear"), _batch("raw")
    with torch.no_grad():  # sharpen the leader's half of the classifier, label by its argmax
        cols = slice(0, 16) if lead == "audio" else slice(16, 32)
        model.fusion.weight[:, cols] *= 3.0
        batch["label"] = model(batch).fused_parts[lead].argmax(1)
    ogm = OGMGE(alpha=alpha, ge=False)
    out, unscaled = _fused_ce_backward(ogm, model, batch)
    logs = ogm.before_step(model, batch, out)
    values, coeffs = _authors_ogm_coefficients(model, out, batch["label"], alpha)
    assert (float(values["r_video"]) > 1) == (lead == "video")
    leader, other = (0, 1) if lead == "audio" else (1, 0)
    assert float(coeffs[leader]) < 1 and float(coeffs[other]) == 1.0
    for key, value in values.items():
        assert logs[key] == pytest.approx(float(value), rel=1e-5)
    assert logs["k_audio"] == pytest.approx(float(coeffs[0]), rel=1e-5)
    assert logs["k_video"] == pytest.approx(float(coeffs[1]), rel=1e-5)
    _assert_grads(model, _ogm_expected(unscaled, coeffs), what="OGM")


def test_ogm_exact_tie_slows_audio_like_the_ogm_ge_authors():
    """OGM-GE_CVPR2022 main.py: `if ratio_v > 1 ... else` slows audio at ratio_v == 1 (kkontras/MLB's
    Bias_Infusion_OGM tests ratio_0 = score_0 / score_1 > 1 instead and slows modality 1, video)."""
    alpha = 0.8
    model = _model("cached", "late-linear", input_dims={"audio": 5, "video": 5})
    batch = _batch("cached", video_dim=5)
    with torch.no_grad():  # twin branches: same encoder weights, same input, same half of the classifier
        model.encoders["video"].load_state_dict(model.encoders["audio"].state_dict())
        batch["video"], batch["video_mask"] = batch["audio"].clone(), batch["audio_mask"].clone()
        model.fusion.weight[:, 16:] = model.fusion.weight[:, :16]
    ogm = OGMGE(alpha=alpha, ge=False)
    out, unscaled = _fused_ce_backward(ogm, model, batch)
    assert torch.equal(out.fused_parts["audio"], out.fused_parts["video"])
    logs = ogm.before_step(model, batch, out)
    values, coeffs = _authors_ogm_coefficients(model, out, batch["label"], alpha)
    assert float(values["r_video"]) == 1.0
    assert float(coeffs[0]) == pytest.approx(1 - math.tanh(alpha), rel=1e-6) and coeffs[1] == 1.0
    assert logs["k_audio"] == pytest.approx(1 - math.tanh(alpha), rel=1e-6) and logs["k_video"] == 1.0
    _assert_grads(model, _ogm_expected(unscaled, coeffs), what="OGM tie")


def test_ogm_ge_noise_has_the_std_of_the_original_gradient():
    """OGM-GE_CVPR2022 main.py: grad * coeff + N(0, grad.std() + 1e-8), on both encoders, every step."""
    model, batch = _model("raw", "late-linear"), _batch("raw", b=12)
    ogm = OGMGE(alpha=0.8)  # ge=True
    out, unscaled = _fused_ce_backward(ogm, model, batch)
    torch.manual_seed(123)
    logs = ogm.before_step(model, batch, out)
    coeff = {"audio": logs["k_audio"], "video": logs["k_video"]}
    standardised = {"audio": [], "video": []}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[0] != "encoders":  # the Late-Linear layer and the probe heads: no noise, no scaling
            torch.testing.assert_close(p.grad, unscaled[name], rtol=0, atol=0)
            continue
        g0 = unscaled[name]
        if g0.numel() < 2 or g0.std() == 0:
            continue
        noise = p.grad - coeff[parts[1]] * g0
        standardised[parts[1]].append((noise / g0.std()).flatten())
    for m, chunks in standardised.items():
        z = torch.cat(chunks).double()
        assert z.numel() > 5000
        assert z.std().item() == pytest.approx(1.0, abs=0.05), m  # N(0, std of the original gradient)
        assert abs(z.mean().item()) < 0.05, m


@pytest.mark.parametrize("end_epoch, active", [(0, False), (1, True)])
def test_ogm_window_is_inclusive_like_modulation_starts_ends(end_epoch, active):
    """OGM-GE_CVPR2022 main.py: modulation only when modulation_starts <= epoch <= modulation_ends."""
    model, batch = _model("raw", "late-linear"), _batch("raw")
    ogm = OGMGE(alpha=0.8, ge=True, start_epoch=0, end_epoch=end_epoch)
    ogm.on_epoch_end(0, {})  # now in epoch 1
    out, unscaled = _fused_ce_backward(ogm, model, batch)
    logs = ogm.before_step(model, batch, out)
    assert logs["ogm_active"] == float(active)
    changed = any(not torch.equal(p.grad, unscaled[n]) for n, p in model.named_parameters())
    assert changed == active


# ---- MSLR (kkontras/MLB Bias_Infusion_MSLR; Lingy12/AGM_ICCV2023 run/CREMAD_main.py) ------------------
class _AuthorsMSLR:
    """Bias_Infusion_MSLR: on_epoch_begin keeps the validation accuracies in coeff_memory; from
    current_epoch > keep_memory_epoch on, ratio = acc / mean(last keep_memory_epoch); on_backward_end
    uses coeff = ratio * init_learning_rate."""

    def __init__(self, init, keep_memory_epoch):
        self.init, self.keep = init, keep_memory_epoch
        self.memory = {0: [], 1: []}
        self.ratio = {0: 1, 1: 1}

    def on_epoch_begin(self, current_epoch, last_val_acc):
        if current_epoch < 1:
            return
        acc_0, acc_1 = last_val_acc
        if current_epoch > self.keep:
            self.ratio[0] = acc_0 / np.array(self.memory[0][-self.keep :]).mean()
            self.ratio[1] = acc_1 / np.array(self.memory[1][-self.keep :]).mean()
        else:
            self.ratio[0], self.ratio[1] = 1, 1
        self.memory[0].append(acc_0)
        self.memory[1].append(acc_1)

    def coefficients(self):
        return self.ratio[0] * self.init["c"], self.ratio[1] * self.init["g"]


class _AGMRepoMSLR:
    """CREMAD_main.py main(): a memory of the last K validation accuracies, filled first, then
    ratio = acc / mean(memory) and the memory slides by one."""

    def __init__(self, init, k):
        self.init, self.k = init, k
        self.memory = ([], [])
        self.ratio = [1.0, 1.0]

    def after_validation(self, acc):
        for i in (0, 1):
            if len(self.memory[i]) < self.k:
                self.memory[i].append(acc[i])
            else:
                self.ratio[i] = acc[i] / np.mean(self.memory[i])
                self.memory[i].pop(0)
                self.memory[i].append(acc[i])

    def coefficients(self):
        return self.init[0] * self.ratio[0], self.init[1] * self.ratio[1]


@pytest.mark.parametrize("window", [3, 20])
def test_mslr_coefficients_follow_the_authors_memory(window):
    """kkontras/MLB Bias_Infusion.py Bias_Infusion_MSLR.on_epoch_begin / on_backward_end, and
    AGM_ICCV2023 CREMAD_main.py's MSLR memory: the same coefficient every epoch."""
    init = {"audio": 0.7, "video": 1.3}  # the MLB authors' runs
    epochs = 2 * window + 6
    rng = np.random.default_rng(window)
    acc = rng.uniform(0.2, 0.9, size=(epochs, 2))  # validation accuracy per epoch (audio, video)
    model, batch = _model("cached", "late-linear"), _batch("cached")
    out = model(batch)
    mslr = MSLR(init=init, window=window)
    mslr.loss(model, batch, out)  # no backward: before_step only reports its coefficients here
    authors = _AuthorsMSLR({"c": 0.7, "g": 1.3}, window)
    agm_repo = _AGMRepoMSLR((0.7, 1.3), window)
    for epoch in range(epochs):
        authors.on_epoch_begin(epoch, tuple(acc[epoch - 1]) if epoch else None)
        logs = mslr.before_step(model, batch, out)
        expected = authors.coefficients()
        assert agm_repo.coefficients() == pytest.approx(expected, rel=1e-12)
        assert (logs["k_audio"], logs["k_video"]) == pytest.approx(expected, rel=1e-9), epoch
        if epoch <= window:  # fewer than K earlier validations: the initial coefficients
            assert expected == pytest.approx((0.7, 1.3), rel=1e-12)
        mslr.on_epoch_end(epoch, {"acc": 0.5, "acc_audio": acc[epoch, 0], "acc_video": acc[epoch, 1]})
        agm_repo.after_validation(acc[epoch])
    assert authors.coefficients() != pytest.approx((0.7, 1.3))  # the ratio part was exercised


# ---- PMR (fanyunfeng-bit/Modal-Imbalance-PMR main_Prototype_grad.py; kkontras/MLB Bias_Infusion_Prototype)
def _eu_dist(x1, x2):
    """main_Prototype_grad.py EU_dist: a pairwise loop of sqrt(dot(x1_i - x2_j, x1_i - x2_j))."""
    rows = []
    for i in range(x1.shape[0]):
        rows.append(
            torch.stack([torch.sqrt(torch.dot(x1[i] - x2[j], x1[i] - x2[j])) for j in range(x2.shape[0])])
        )
    return torch.stack(rows)


def _authors_prototypes(batches, num_classes, previous, momentum):
    """calculate_prototype: per-sample sums by class, divided by the class counts, EMA after the first."""
    dim = batches[0][0].shape[1]
    audio, visual = torch.zeros(num_classes, dim), torch.zeros(num_classes, dim)
    count = [0] * num_classes
    for fa, fv, label in batches:
        for c, lab in enumerate(label):
            count[lab] += 1
            audio[lab, :] += fa[c, :].detach()
            visual[lab, :] += fv[c, :].detach()
    for c in range(num_classes):
        audio[c, :] /= count[c]
        visual[c, :] /= count[c]
    if previous is None:
        return audio, visual
    return (1 - momentum) * audio + momentum * previous[0], (1 - momentum) * visual + momentum * previous[1]


def _authors_pmr_loss(fused, fa, fv, label, protos, alpha):
    """train_epoch's Proto branch: ratio of summed prototype softmax scores, the weaker modality's CE."""
    audio_sim, visual_sim = -_eu_dist(fa, protos[0]), -_eu_dist(fv, protos[1])
    score_a_p = sum([torch.softmax(audio_sim, 1)[i][label[i]] for i in range(audio_sim.size(0))])
    score_v_p = sum([torch.softmax(visual_sim, 1)[i][label[i]] for i in range(visual_sim.size(0))])
    ratio_a_p = score_a_p / score_v_p
    if ratio_a_p > 1:
        beta, lam = 0, alpha
    elif ratio_a_p < 1:
        beta, lam = alpha, 0
    else:
        beta, lam = 0, 0
    loss = (
        F.cross_entropy(fused, label)
        + beta * F.cross_entropy(audio_sim, label)
        + lam * F.cross_entropy(visual_sim, label)
    )
    return loss, ratio_a_p, beta, lam


@pytest.mark.parametrize("weaker", ["audio", "video", "tie"])
def test_pmr_prototypes_ratio_and_loss_match_the_authors(weaker):
    """Modal-Imbalance-PMR main_Prototype_grad.py (EU_dist, calculate_prototype, train_epoch's Proto branch)."""
    alpha, momentum, c, d = 1.0, 0.2, 6, 16
    model = _model("cached", "late-linear")  # only its probe heads (dim 16) are used
    g = torch.Generator().manual_seed({"audio": 0, "video": 1, "tie": 2}[weaker])
    centres = {m: 2.0 * torch.randn(c, d, generator=g) for m in ("audio", "video")}
    noise = {"audio": 0.3, "video": 0.3}
    if weaker != "tie":
        noise[weaker] = 2.5

    def make_batch():
        label = torch.arange(c).repeat(2)
        fa = centres["audio"][label] + noise["audio"] * torch.randn(len(label), d, generator=g)
        fv = centres["video"][label] + noise["video"] * torch.randn(len(label), d, generator=g)
        if weaker == "tie":  # the two modalities see identical features: identical prototypes and scores
            fv = fa.clone()
        fused = torch.randn(len(label), c, generator=g)
        return fused.requires_grad_(), fa.requires_grad_(), fv.requires_grad_(), label

    pmr = PMR(alpha=alpha, momentum=momentum)
    protos = None
    for epoch in range(3):
        seen = []
        for _ in range(3):
            fused, fa, fv, label = make_batch()
            out = ModelOutput(fused=fused, unimodal={}, features={"audio": fa, "video": fv})
            total, logs = pmr.loss(model, {"label": label}, out)
            seen.append((fa, fv, label))
            if protos is None:  # epoch 0: no prototypes yet, fused CE only
                assert logs["pmr_active"] == 0.0
                assert logs["loss"] == pytest.approx(F.cross_entropy(fused, label).item(), rel=1e-6)
                continue
            ref, ratio, beta, lam = _authors_pmr_loss(fused, fa, fv, label, protos, alpha)
            assert logs["pmr_active"] == 1.0
            assert logs["pmr_ratio"] == pytest.approx(ratio.item(), rel=1e-5)
            assert (logs["pmr_weight_audio"], logs["pmr_weight_video"]) == (beta, lam)
            assert (beta, lam) == {"audio": (alpha, 0), "video": (0, alpha), "tie": (0, 0)}[weaker]
            assert logs["loss"] == pytest.approx(ref.item(), rel=1e-5)
            got = torch.autograd.grad(total, (fused, fa, fv))
            want = torch.autograd.grad(ref, (fused, fa, fv))
            for x, y in zip(got, want):
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
        pmr.on_epoch_end(epoch, {})
        protos = _authors_prototypes(seen, c, protos, momentum)
        torch.testing.assert_close(pmr.prototypes["audio"], protos[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pmr.prototypes["video"], protos[1], rtol=1e-5, atol=1e-6)


# ---- MMCosine (GeWu-Lab/MMCosine_ICASSP23 main_CD.py, fusion_method concat) ---------------------------
@pytest.mark.parametrize("features", ["raw", "cached"])
def test_mmcosine_late_linear_is_main_cd_modality_wise_cosine(features):
    """main_CD.py train_epoch with args.mmcosine: out_m = s * cos(f_m, column block m of fc_out's rows)."""
    scale = 10.0
    mmcos = MMCosine(scale=scale)
    model, batch = _model(features, "late-linear", **mmcos.model_options()), _batch(features)
    MMCosine.check_model(model)
    assert all(
        "bias" not in name for name, _ in model.fusion.named_parameters()
    )  # no bias on the cosine path
    out = model(batch)
    weight = model.fusion.weight  # [C, 2D], the concat classifier's fc_out.weight
    half = weight.size(1) // 2
    blocks = {"audio": weight[:, :half], "video": weight[:, half:]}
    parts = {}
    for m, w in blocks.items():
        f = out.features[m]
        rows = []
        for i in range(f.size(0)):  # feature i normalised, class row c of modality m's block normalised
            rows.append(
                torch.stack(
                    [scale * torch.dot(f[i], w[c]) / (f[i].norm() * w[c].norm()) for c in range(w.size(0))]
                )
            )
        parts[m] = torch.stack(rows)
    fused = parts["audio"] + parts["video"]
    torch.testing.assert_close(out.fused, fused, rtol=1e-5, atol=1e-5)
    for m in blocks:
        torch.testing.assert_close(out.fused_parts[m], parts[m], rtol=1e-5, atol=1e-5)
    # the loss: criterion(out, label) (args.lam = 0: no NCE term); the probes train the heads only
    loss, logs = mmcos.loss(model, batch, out)
    ref = F.cross_entropy(fused, batch["label"])
    assert logs["loss"] == pytest.approx(ref.item(), rel=1e-5)
    got = torch.autograd.grad(loss, weight, retain_graph=True)[0]
    torch.testing.assert_close(got, torch.autograd.grad(ref, weight)[0], rtol=1e-4, atol=1e-7)
