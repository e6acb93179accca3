"""MCR held against an independent re-expression of the authors' code, and its parts on their own.

The reference (`AuthorsMCR`) is kkontras/MCR's training step written out by hand on the same tiny mlbpipe
model: `MCR_Model.forward` (the training pass; `shuffle_data`: a second pass of the encoders in eval mode,
with gradients, `shuffle_ids` with `shuffle_type="rand"`; `_forward_main` with `detach_a` / `detach_v` on the
permuted and repeated features), `Bias_Infusion_MCR.get_perturbed_gradients` (`js_divergence`) and
`before_backward` (greedy / ind / colab, `nt_xent_loss` through pytorch-metric-learning's NTXentLoss), the
model's `CMI_yz_Loss`, and `Trainer.train_one_step`'s CE(combined) + multil · (CE(c) + CE(g)), with the
regulariser and the contrastive term added to the total (as the authors' kkontras/SynIB copy does; their MCR
release drops them, see mlb/balancing/mcr.py). Their Late-Linear / Mid-MLP detach after the per-modality
projection, FiLM / Gated / TF detach the features: the reference does both, per head.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers.models import DIMS, random_inputs, three_modality_model_and_batch

from mlb.balancing import METHODS, build_balancer
from mlb.balancing.mcr import MCR, game_scales, global_rows, js_divergence, nt_xent
from mlb.models import EncoderOutput, build_model
from mlb.train import train_step
from mlb.train.step import StepContext
from mlb.world import World

# relative L2 gap per tensor over two Adam steps, in float64: greedy gradients are differences of nearly equal
# terms (a player's +J and -J passes), so float32 summation-order noise alone reaches 1e-2 on small ones
GAP = 1e-7


# ---- batches -----------------------------------------------------------------------------------------
def _batch(features: str, seed: int, b: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = random_inputs(features, g, b, short_audio={0: 6, 3: 4})
    batch["label"] = torch.randint(0, 3, (b,), generator=g)  # few classes: positive and negative pairs
    return batch


def _model(features: str, fusion: str, ceb: bool = False):
    torch.manual_seed(0)
    return build_model(
        features=features, fusion=fusion, size="tiny", input_dims=DIMS, num_classes=6, prediction_decoder=ceb
    )


def _double(batch: dict) -> dict:
    return {k: v.double() if torch.is_floating_point(v) else v for k, v in batch.items()}


# ---- the authors' step, re-expressed -----------------------------------------------------------------
def _authors_jsd(p_logits, q_logits):
    """`js_divergence`: softmax of the clamped logits, the mixture's log, both KLs with F.kl_div batchmean."""
    p = F.softmax(torch.clamp(p_logits, -1e7, 1e7), dim=1)
    q = F.softmax(torch.clamp(q_logits, -1e7, 1e7), dim=1)
    mix = torch.clamp(0.5 * (p + q), 1e-20, 1).log()
    p, q = torch.clamp(p, 1e-20, 1), torch.clamp(q, 1e-20, 1)
    return 0.5 * (F.kl_div(mix, p, reduction="batchmean") + F.kl_div(mix, q, reduction="batchmean"))


def _ntxent_by_pairs(z_a, z_v, label, temperature):
    """pytorch-metric-learning's NTXentLoss on cat(z_a, z_v) with labels cat(y, y), pair by pair: for every
    ordered same-label pair (a, p), a != p: -log(e^{s_ap/t} / (e^{s_ap/t} + sum over differently labelled n
    of e^{s_an/t}) + 1e-20); the mean over those pairs."""
    z = F.normalize(torch.cat([z_a, z_v]), dim=1)
    y = torch.cat([label, label]).tolist()
    sim = z @ z.t()
    losses = []
    for a in range(len(y)):
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        for p in range(len(y)):
            if p == a or y[p] != y[a]:
                continue
            pos = torch.exp(sim[a, p] / temperature)
            neg = sum((torch.exp(sim[a, n] / temperature) for n in negatives), torch.zeros(()))
            losses.append(-torch.log(pos / (pos + neg) + 1e-20))
    return torch.stack(losses).mean()


class AuthorsMCR:
    """kkontras/MCR's MCR training step on a two-modality mlbpipe model."""

    def __init__(self, model, *, l, multil, contr, lib, samples, regby, training_mode=False):
        self.model, self.l, self.multil, self.contr, self.lib = model, l, multil, contr, lib
        self.samples, self.regby, self.training_mode = samples, regby, training_mode

    def _forward_main(self, fa, fv, detach_a=False, detach_v=False):
        """`_forward_main`: Late-Linear / Mid-MLP detach the per-modality projection, the others the
        features."""
        model = self.model
        fusion, name = model.fusion, model.fusion_name
        a, v = model.modalities
        if name in ("late-linear", "mid-mlp"):
            if name == "late-linear":
                w, bias = fusion.weight, fusion.bias
                pred_a, pred_v = (
                    fa.pooled @ w[:, fusion.columns[a]].t(),
                    fv.pooled @ w[:, fusion.columns[v]].t(),
                )
            else:
                bias = fusion.input_bias
                pred_a, pred_v = fusion.inputs[a](fa.pooled), fusion.inputs[v](fv.pooled)
            pred_a = pred_a.detach() if detach_a else pred_a
            pred_v = pred_v.detach() if detach_v else pred_v
            pred = (pred_a + bias / 2) + (pred_v + bias / 2)
            return pred if name == "late-linear" else fusion.mlp(pred)
        if detach_a:
            fa = EncoderOutput(fa.pooled.detach(), fa.sequence.detach(), fa.mask)
        if detach_v:
            fv = EncoderOutput(fv.pooled.detach(), fv.sequence.detach(), fv.mask)
        return fusion({a: fa, v: fv})[0]

    def loss(self, batch):
        model, label = self.model, batch["label"]
        a, v = model.modalities
        out = model(batch)  # the training pass
        total = F.cross_entropy(out.fused, label)
        total = total + self.multil * F.cross_entropy(out.unimodal[a], label)
        total = total + self.multil * F.cross_entropy(out.unimodal[v], label)
        if self.lib:  # CMI_yz_Loss
            combined = torch.cat([out.features[a], out.features[v]], dim=1)
            total = (
                total + torch.nn.MSELoss()(combined, model.prediction_decoder(out.fused.detach())) * self.lib
            )
        # shuffle_data: the encoders again (eval mode unless training_mode), then shuffle_ids("rand")
        if not self.training_mode:
            model.eval()
        enc = model.encode(batch)
        if not self.training_mode:
            model.train()
        b = label.shape[0]
        shuffles = [torch.randperm(b) for _ in range(self.samples)]
        data = torch.ones(b, dtype=torch.bool)

        def gather(e, shuffled):
            rows = [s if shuffled else data for s in shuffles]
            mask = None if e.mask is None else torch.cat([e.mask[r] for r in rows])
            return EncoderOutput(
                torch.cat([e.pooled[r] for r in rows]), torch.cat([e.sequence[r] for r in rows]), mask
            )

        sa, na, sv, nv = (
            gather(enc[a], True),
            gather(enc[a], False),
            gather(enc[v], True),
            gather(enc[v], False),
        )
        n_pred = torch.cat([out.fused[data] for _ in shuffles])
        jsd = {
            "enc0_p0": _authors_jsd(self._forward_main(sa, nv, detach_v=True), n_pred),
            "enc1_p0": _authors_jsd(self._forward_main(sa, nv, detach_a=True), n_pred),
            "all_p0": _authors_jsd(self._forward_main(sa, nv), n_pred),
            "enc1_p1": _authors_jsd(self._forward_main(na, sv, detach_a=True), n_pred),
            "enc0_p1": _authors_jsd(self._forward_main(na, sv, detach_v=True), n_pred),
            "all_p1": _authors_jsd(self._forward_main(na, sv), n_pred),
        }
        if self.regby == "greedy":
            reg = self.l * (-jsd["enc0_p0"] + jsd["enc1_p0"] - jsd["enc1_p1"] + jsd["enc0_p1"])
        elif self.regby == "ind":
            reg = self.l * (-jsd["enc0_p0"] - jsd["enc1_p1"])
        else:
            reg = self.l * (-jsd["all_p0"] - jsd["all_p1"])
        total = total + reg
        if self.contr:
            total = total + self.contr * _ntxent_by_pairs(out.features[a], out.features[v], label, 0.5)
        return total


# ---- running both ------------------------------------------------------------------------------------
def _gap(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _compare_two_steps(features, fusion, *, game="greedy", regby="greedy", ceb=0.0, feature_pass="eval"):
    model = _model(features, fusion, ceb=ceb > 0).double()
    ref_model = copy.deepcopy(model)
    mcr = MCR(game=game, ceb_weight=ceb, samples=3, feature_pass=feature_pass)
    ref = AuthorsMCR(
        ref_model, l=0.1, multil=0.01, contr=1.0, lib=ceb, samples=3, regby=regby,
        training_mode=feature_pass == "shared",
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3)
    model.train()
    ref_model.train()
    for step in range(2):
        batch = _double(_batch(features, step))
        torch.manual_seed(100 + step)
        loss, logs = mcr.loss(model, batch, model(batch))
        torch.manual_seed(100 + step)
        ref_loss = ref.loss(batch)
        assert abs(loss.item() - ref_loss.item()) <= 1e-12 * max(1.0, abs(ref_loss.item())), (loss, ref_loss)
        scale = max(1.0, abs(ref_loss.item()))
        assert abs(logs["loss"] - ref_loss.item()) <= 1e-6 * scale  # the logs are float32
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_loss.backward()
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
            if q.grad is None:
                assert p.grad is None or not p.grad.any(), (
                    f"step {step}: {name} has a gradient the authors' lacks"
                )
                continue
            assert p.grad is not None, f"step {step}: {name} has no gradient"
            assert _gap(p.grad, q.grad) < GAP, f"step {step}: {name} gradient gap {_gap(p.grad, q.grad):.2e}"
        opt.step()
        ref_opt.step()
    return model, ref_model


@pytest.mark.unit
@pytest.mark.parametrize(
    "features, fusion",
    [("raw", "late-linear"), ("cached", "late-linear"), ("cached", "mid-mlp"), ("raw", "film"),
     ("cached", "gated"), ("cached", "tf")],
)  # fmt: skip
def test_mcr_matches_the_authors_step_greedy(features, fusion):
    """Loss value and every gradient over two Adam steps, for each way the authors detach a player."""
    _compare_two_steps(features, fusion)


@pytest.mark.unit
@pytest.mark.parametrize("game, regby", [("independent", "ind"), ("collaborative", "colab")])
@pytest.mark.parametrize("fusion", ["late-linear", "gated"])
def test_mcr_matches_the_authors_other_games(game, regby, fusion):
    _compare_two_steps("raw", fusion, game=game, regby=regby)


@pytest.mark.unit
def test_mcr_matches_the_authors_ceb_term():
    """λ_CEB > 0 (their Conformer runs' --lib 1): the decoder on the detached fused logits."""
    model, _ = _compare_two_steps("cached", "late-linear", ceb=1.0)
    assert model.prediction_decoder is not None


@pytest.mark.unit
def test_shared_feature_pass_is_the_authors_training_mode():
    """`feature_pass="shared"` permutes the training pass's outputs: the authors' `training_mode: true`
    (a second training-mode pass of the same values) gives the same loss and gradients."""
    _compare_two_steps("raw", "late-linear", feature_pass="shared")


# ---- the parts ---------------------------------------------------------------------------------------
@pytest.mark.unit
def test_js_divergence_formula():
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    p, q = p_logits.softmax(1), q_logits.softmax(1)
    mix = (p + q) / 2
    expected = 0.5 * ((p * (p / mix).log()).sum(1) + (q * (q / mix).log()).sum(1)).mean()
    assert torch.allclose(js_divergence(p_logits, q_logits), expected, atol=1e-7)
    assert torch.allclose(js_divergence(p_logits, q_logits), js_divergence(q_logits, p_logits))
    assert js_divergence(p_logits, p_logits).abs() < 1e-7
    assert js_divergence(torch.tensor([[1e9, 0.0]]), torch.tensor([[0.0, 1e9]])) <= torch.log(
        torch.tensor(2.0)
    )


@pytest.mark.unit
def test_nt_xent_is_the_pairwise_definition():
    g = torch.Generator().manual_seed(1)
    z_a, z_v = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    label = torch.tensor([0, 1, 1, 2, 0, 2])
    got = nt_xent(torch.cat([z_a, z_v]), torch.cat([label, label]), 0.5)
    assert torch.allclose(got, _ntxent_by_pairs(z_a, z_v, label, 0.5), rtol=1e-5)
    # one label: no negative pair, nothing to contrast; an anchor whose class fills the batch costs 0
    assert nt_xent(torch.cat([z_a, z_v]), torch.zeros(12, dtype=torch.long), 0.5) == 0
    one_neg = torch.tensor([0, 0, 0, 0, 0, 1])
    assert torch.allclose(
        nt_xent(torch.cat([z_a, z_v]), torch.cat([one_neg, one_neg]), 0.5),
        _ntxent_by_pairs(z_a, z_v, one_neg, 0.5),
        rtol=1e-5,
    )


@pytest.mark.unit
def test_game_scales_follow_k():
    mods = ("a", "b", "c")
    assert game_scales("greedy", "a", mods[:2]) == ({"a": -1.0, "b": 1.0}, 0.0)
    assert game_scales("greedy", "b", mods) == ({"a": 1.0, "b": -1.0, "c": 1.0}, 1.0)
    assert game_scales("independent", "a", mods[:2]) == ({"a": -1.0, "b": 0.0}, -1.0)
    assert game_scales("collaborative", "a", mods[:2]) == ({"a": -1.0, "b": -1.0}, -1.0)


@pytest.mark.unit
def test_greedy_two_players_leave_the_shared_parts_alone():
    """Greedy with two modalities: L_MIPD's gradient reaches each player's encoder and Late-Linear columns,
    never the shared bias nor the training pass's fused output; its value is 0 (the authors' reg_term)."""
    model = _model("raw", "late-linear")
    batch = _batch("raw", 0)
    out = model(batch)
    fused_grad = []
    out.fused.register_hook(fused_grad.append)
    term, divergences = MCR(samples=4).mipd(model, batch, out)
    term.backward()
    assert term.item() == 0.0 and all(j > 0 for j in divergences.values())
    assert model.fusion.bias.grad is None or not model.fusion.bias.grad.any()
    assert not fused_grad or not fused_grad[0].any()
    assert model.fusion.weight.grad.abs().sum() > 0
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders.parameters() if p.dim() > 1
    )


@pytest.mark.unit
def test_three_modalities_play_the_greedy_game():
    """M = 3: every encoder learns from L_MIPD; the value is Σ σ_i J_i with σ = M - 2 = 1."""
    model, batch = three_modality_model_and_batch()
    out = model(batch)
    term, divergences = MCR(samples=2).mipd(model, batch, out)
    assert torch.allclose(term, sum(divergences.values()))
    term.backward()
    for m in model.modalities:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[m].parameters()), m
    MCR().check_model(model)  # M = 3 is served


class _TwoRanks(World):
    """Rank `rank` of two processes whose other rank holds `other`: `sum` adds what that rank would send."""

    def __init__(self, rank: int, other: torch.Tensor):
        object.__setattr__(self, "other", other)
        super().__init__(rank=rank, size=2)

    def sum(self, tensor):
        n_other = self.other.shape[0]
        if tensor.dim() == 1:  # the row counts
            theirs = torch.zeros_like(tensor)
            theirs[1 - self.rank] = n_other
        else:  # the rows, each rank's in its place
            theirs = torch.zeros_like(tensor)
            start = 0 if self.rank == 1 else tensor.shape[0] - n_other
            theirs[start : start + n_other] = self.other
        return tensor.detach() + theirs


@pytest.mark.unit
def test_contrastive_term_is_the_global_batch_loss_under_two_ranks():
    """Each rank's term, weighted n_r / N as the trainer weighs it, sums to the one-process loss on the whole
    batch, in value and in gradient (the other rank's rows enter detached)."""
    g = torch.Generator().manual_seed(2)
    feats = {m: torch.randn(7, 4, generator=g, requires_grad=True) for m in ("audio", "video")}
    label = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    whole = nt_xent(torch.cat([feats["audio"], feats["video"]]), torch.cat([label, label]), 0.5)
    expected = torch.autograd.grad(whole, list(feats.values()))

    class Out:
        def __init__(self, rows):
            self.features = {m: f[rows] for m, f in feats.items()}

    class Model:
        modalities = ("audio", "video")

    shares = [slice(0, 3), slice(3, 7)]
    rows = [
        torch.cat([feats["audio"][s], feats["video"][s], label[s, None].float()], 1).detach() for s in shares
    ]
    summed = 0.0
    for rank, share in enumerate(shares):
        mcr = MCR()
        mcr.world = _TwoRanks(rank, rows[1 - rank])
        term, value = mcr.contrastive(Model(), Out(share), label[share])
        assert torch.allclose(value, whole) and torch.allclose(term, whole)
        summed = summed + term * (label[share].numel() / len(label))  # the trainer's n_r / N
    assert torch.allclose(summed, whole)
    got = torch.autograd.grad(summed, list(feats.values()))
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.unit
def test_global_rows_is_the_identity_on_one_process():
    rows = torch.randn(3, 2, requires_grad=True)
    assert global_rows(World(), rows) == (rows, 3, 3)


# ---- settings, model, state --------------------------------------------------------------------------
@pytest.mark.unit
def test_mcr_defaults_are_the_authors_cremad_resnet_settings():
    mcr = METHODS["mcr"]()
    assert (mcr.mipd_weight, mcr.unimodal_weight, mcr.contrastive_weight, mcr.ceb_weight) == (
        0.1,
        0.01,
        1.0,
        0.0,
    )
    assert (mcr.samples, mcr.game, mcr.temperature, mcr.feature_pass) == (32, "greedy", 0.5, "eval")
    assert mcr.model_options() == {} and MCR(ceb_weight=1).model_options() == {"prediction_decoder": True}
    assert set(MCR.search_space) <= set(MCR.__init__.__kwdefaults__)
    assert mcr.uses_unimodal_heads and mcr.supported_fusions is None and mcr.state_dict() == {}


@pytest.mark.unit
@pytest.mark.parametrize(
    "params",
    [{"mipd_weight": -1}, {"contrastive_weight": float("nan")}, {"samples": 0}, {"samples": 2.5},
     {"game": "greed"}, {"temperature": 0}, {"feature_pass": "train"}, {"ceb_weight": float("inf")}],
)  # fmt: skip
def test_mcr_rejects_bad_settings(params):
    with pytest.raises(ValueError, match="mcr"):
        build_balancer("mcr", **params)


@pytest.mark.unit
def test_ceb_needs_the_decoder():
    with pytest.raises(ValueError, match="prediction_decoder"):
        MCR(ceb_weight=1.0).check_model(_model("raw", "late-linear"))
    model = _model("raw", "late-linear", ceb=True)
    MCR(ceb_weight=1.0).check_model(model)
    plain = _model("raw", "late-linear")
    assert {k for k in model.state_dict() if k not in plain.state_dict()} == {
        "prediction_decoder.0.weight",
        "prediction_decoder.2.weight",
    }
    assert all(
        torch.equal(plain.state_dict()[k], v)
        for k, v in model.state_dict().items()
        if k in plain.state_dict()
    )


@pytest.mark.unit
def test_mcr_steps_through_the_trainer_step_with_every_term():
    model = _model("cached", "tf", ceb=True)
    mcr = MCR(ceb_weight=1.0, samples=4)
    mcr.check_model(model)
    mcr.sync_logs = False
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    ctx = StepContext(
        model, mcr, optimizer, torch.amp.GradScaler("cpu", enabled=False), parameters, torch.device("cpu")
    )
    before = copy.deepcopy(model.prediction_decoder.state_dict())
    logs = train_step(ctx, _batch("cached", 5))
    assert {
        "loss",
        "loss_fused",
        "loss_audio",
        "mipd",
        "jsd_audio",
        "jsd_video",
        "contrastive",
        "ceb",
    } <= set(logs)
    assert not torch.equal(before["0.weight"], model.prediction_decoder.state_dict()["0.weight"])
    buffer = io.BytesIO()
    torch.save(mcr.state_dict(), buffer)
    buffer.seek(0)
    MCR().load_state_dict(torch.load(buffer, weights_only=True))  # no state: an empty dict round-trips
