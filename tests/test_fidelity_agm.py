"""AGM held against an independent re-expression of its two public versions, step by step.

- Lingy12/AGM_ICCV2023 `model/CREMAD_net.py` (`GradMod`) and `run/CREMAD_main.py` (`train`): the
  masked passes re-run the whole network in eval mode, identity modules with backward hooks scale the
  gradient through each Shapley output, scores are per-sample loops with a 1e-8 clamp, running means
  over all iterations, and `clip_grad_norm_(model.parameters(), 1)` when `fc_out.weight.grad` leaves
  [-1, 1].
- kkontras/MLB `models/OGM_Model.py` (`_get_preds_padded`, `forward`) and `Bias_Infusion.py`
  (`Bias_Infusion_AGM.before_backward`): the masked passes re-run only the zeroed encoder.

The references below run the same tiny mlbpipe model (its encoders and fusion head stand for the
authors' `audio_net`, `visual_net` and `fusion_module`) and compare every gradient mlbpipe's AGM leaves
for the optimiser, over several steps with warm BatchNorm statistics.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlb.balancing.agm import AGM
from mlb.models import build_model

pytestmark = pytest.mark.unit

GAP = 1e-3  # relative L2 gap per parameter; float noise grows to ~2e-4 over three steps


class _Identity(nn.Module):
    """The authors' `Modality_out`: an identity whose backward hook scales the gradient."""

    def forward(self, x):
        return x


class AuthorsAGM:
    """The authors' AGM training step on a mlbpipe model (which has extra probe heads: ignored)."""

    def __init__(self, model, alpha, variant):
        self.model, self.alpha, self.variant = model, alpha, variant
        self.scale = {"a": 1.0, "v": 1.0}
        self.hooked = {"a": _Identity(), "v": _Identity()}
        for key, module in self.hooked.items():
            module.register_full_backward_hook(
                lambda m, gin, gout, key=key: (gin[0].clone() * self.scale[key],)
            )
        self.train_score_a = self.train_score_v = 0.0
        self.iteration = 0

    def _zero(self, batch, m):
        return {**batch, m: torch.zeros_like(batch[m])}

    def forward(self, batch):
        model = self.model
        model.train()
        if self.variant == "agm":
            total = model(batch).fused
            model.eval()
            pad_visual = model(self._zero(batch, "video")).fused
            pad_audio = model(self._zero(batch, "audio")).fused
        else:
            encoded = model.encode(batch)
            total, _ = model.fusion(encoded)
            model.eval()
            za = model.encoders["audio"](torch.zeros_like(batch["audio"]), batch.get("audio_mask"))
            pad_audio, _ = model.fusion({"audio": za, "video": encoded["video"]})
            zv = model.encoders["video"](torch.zeros_like(batch["video"]), batch.get("video_mask"))
            pad_visual, _ = model.fusion({"audio": encoded["audio"], "video": zv})
        model.train()
        m_a = self.hooked["a"](0.5 * (total - pad_audio + pad_visual))
        m_v = self.hooked["v"](0.5 * (total - pad_visual + pad_audio))
        return m_a, m_v

    @staticmethod
    def _score(out, label):
        probs = torch.softmax(out, dim=1)
        total = 0.0
        for k in range(out.size(0)):
            p = probs[k][label[k]]
            total += -math.log(1e-8) if p < 1e-8 else -math.log(p.item())
        return total / out.size(0)

    def step(self, batch):
        """Forward, coefficients, backward, clip: the gradients the authors' optimiser would step on."""
        label = batch["label"]
        m_a, m_v = self.forward(batch)
        loss = F.cross_entropy(m_a + m_v, label)
        score_a, score_v = self._score(m_a.detach(), label), self._score(m_v.detach(), label)
        ratio_a, ratio_v = math.exp(score_v - score_a), math.exp(score_a - score_v)
        optimal_a = math.exp(self.train_score_v - self.train_score_a)
        optimal_v = math.exp(self.train_score_a - self.train_score_v)
        coeff_a = math.exp(self.alpha * min(optimal_a - ratio_a, 10))
        coeff_v = math.exp(self.alpha * min(optimal_v - ratio_v, 10))
        it = self.iteration
        self.train_score_a = self.train_score_a * it / (it + 1) + score_a / (it + 1)
        self.train_score_v = self.train_score_v * it / (it + 1) + score_v / (it + 1)
        self.iteration += 1
        self.scale = {"a": coeff_a, "v": coeff_v}
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        weight = self.model.fusion.weight if hasattr(self.model.fusion, "weight") else None
        checked = [weight] if weight is not None else list(self.model.fusion.parameters())
        grads = torch.cat([p.grad.flatten() for p in checked if p.grad is not None])
        authors_params = [p for n, p in self.model.named_parameters() if not n.startswith("unimodal_heads.")]
        if grads.max() > 1 or grads.min() < -1:
            nn.utils.clip_grad_norm_(authors_params, max_norm=1.0)
        return (coeff_a, coeff_v)


def _gap(a, b):
    """Relative L2 gap ||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _batches(features, n, b=8):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        if features == "raw":
            batch = {
                "audio": torch.randn(b, 1, 32, 24, generator=g),
                "video": torch.randn(b, 3, 3, 32, 32, generator=g),
            }
        else:
            mask = torch.ones(b, 9, dtype=torch.bool)
            mask[0, 6:] = False
            batch = {
                "audio": torch.randn(b, 9, 5, generator=g),
                "audio_mask": mask,
                "video": torch.randn(b, 4, 7, generator=g),
                "video_mask": torch.ones(b, 4, dtype=torch.bool),
            }
        batch["label"] = torch.randint(0, 6, (b,), generator=g)
        out.append(batch)
    return out


def _warm(model, batches):
    """Warm BatchNorm statistics, where the zero-input term of the fusion weights grows large."""
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)


@pytest.mark.parametrize("variant", ["agm", "mlb"])
@pytest.mark.parametrize(
    ("features", "fusion"),
    [("raw", "late-linear"), ("raw", "mid-mlp"), ("cached", "late-linear"), ("cached", "tf")],
)
def test_agm_gradients_equal_the_authors_hooks(variant, features, fusion):
    torch.manual_seed(0)
    ours = build_model(features=features, fusion=fusion, size="tiny", input_dims={"audio": 5, "video": 7})
    batches = _batches(features, 6)
    _warm(ours, batches[:3])
    theirs = copy.deepcopy(ours)
    agm = AGM(alpha=3.0, variant=variant)
    reference = AuthorsAGM(theirs, alpha=3.0, variant=variant)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05)
    names = [n for n, _ in ours.named_parameters() if not n.startswith("unimodal_heads.")]
    moved, worst = False, 0.0
    for batch in batches[3:]:
        torch.manual_seed(1)  # the same dropout masks in both full passes
        out = ours(batch)
        loss, logs = agm.loss(ours, batch, out)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        logs |= agm.before_step(ours, batch, out)
        torch.manual_seed(1)
        coeff_a, coeff_v = reference.step(batch)
        assert logs["k_audio"] == pytest.approx(coeff_a, rel=1e-4)
        assert logs["k_video"] == pytest.approx(coeff_v, rel=1e-4)
        moved |= abs(coeff_a - 1) > 0.05
        g_ours, g_theirs = dict(ours.named_parameters()), dict(theirs.named_parameters())
        for name in names:
            a, b = g_ours[name].grad, g_theirs[name].grad
            if b is None:
                assert a is None or not a.any(), name
                continue
            gap = _gap(a, b)
            assert gap < GAP, f"{name}: relative L2 gap {gap:.2e}"
            worst = max(worst, gap)
        opt_ours.step()
        opt_theirs.step()
    assert moved, "pick batches where the coefficients do something"
    assert agm.mean_score == pytest.approx([reference.train_score_a, reference.train_score_v], rel=1e-6)


def test_agm_scales_the_shared_fusion_bias_by_the_mean_coefficient():
    """Both authors' versions: the bias's gradient is ½(c_a + c_v) times the plain fused-CE gradient."""
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    (batch,) = _batches("raw", 1)
    plain = copy.deepcopy(model)
    agm = AGM(alpha=3.0, variant="agm")
    agm.mean_score, agm.iterations = [0.2, 1.5], 10  # audio far ahead of video: coefficients far from 1
    torch.manual_seed(1)
    out = model(batch)
    loss, logs = agm.loss(model, batch, out)
    loss.backward()
    torch.manual_seed(1)
    F.cross_entropy(plain(batch).fused, batch["label"]).backward()
    mean_coeff = 0.5 * (logs["k_audio"] + logs["k_video"])
    assert abs(mean_coeff - 1) > 0.1
    assert _gap(model.fusion.bias.grad, mean_coeff * plain.fusion.bias.grad) < 1e-5


def test_agm_outside_its_window_is_joint_training():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    (batch,) = _batches("raw", 1)
    plain = copy.deepcopy(model)
    agm = AGM(start_epoch=1)  # epoch 0 is outside
    torch.manual_seed(1)
    out = model(batch)
    loss, logs = agm.loss(model, batch, out)
    loss.backward()
    torch.manual_seed(1)
    out_p = plain(batch)
    F.cross_entropy(out_p.fused, batch["label"]).backward()
    assert (logs["k_audio"], logs["k_video"]) == (1.0, 1.0) and agm.iterations == 1  # scores still tracked
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        if not n.startswith("unimodal_heads."):
            assert _gap(p.grad, q.grad) < 1e-5, n


def test_agm_clip_norm_leaves_out_the_probe_heads():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    model.fusion.weight.grad[0, 0] = -3.0
    from mlb.balancing.agm import clip_if_fusion_grad_large_

    assert clip_if_fusion_grad_large_(model)
    trained = [p for n, p in model.named_parameters() if not n.startswith("unimodal_heads.")]
    assert torch.sqrt(sum((p.grad**2).sum() for p in trained)).item() == pytest.approx(1.0, rel=1e-4)
    assert all((p.grad == 0.5).all() for p in model.unimodal_heads.parameters())
    # the Late-Linear bias is not looked at (the authors check fc_out.weight only)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    model.fusion.bias.grad[0] = 5.0
    assert not clip_if_fusion_grad_large_(model)
