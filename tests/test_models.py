"""Models: shapes per the contract, every fusion head trains, masking ignores padded steps, sizes."""

import math

import pytest
import torch

from mlb.balancing import MLB
from mlb.models import FUSIONS, build_model, masked_mean, zero_modality
from mlb.models.encoders import ConformerEncoder, ResNetFrames

pytestmark = pytest.mark.unit

B, C = 8, 6
DIMS = {"audio": 12, "video": 20}


def raw_batch(b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(b, 1, 32, 24, generator=g),
        "video": torch.randn(b, 3, 3, 32, 32, generator=g),
        "label": torch.arange(b) % C,
    }


def cached_batch(b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths_a = torch.tensor([10, 7, 4, 10, 9, 3, 10, 6])[:b]
    lengths_v = torch.tensor([5, 5, 2, 4, 3, 5, 1, 5])[:b]
    mask_a = torch.arange(10)[None, :] < lengths_a[:, None]  # [B, 10]
    mask_v = torch.arange(5)[None, :] < lengths_v[:, None]  # [B, 5]
    return {
        "audio": torch.randn(b, 10, DIMS["audio"], generator=g),
        "audio_mask": mask_a,
        "video": torch.randn(b, 5, DIMS["video"], generator=g),
        "video_mask": mask_v,
        "label": torch.arange(b) % C,
    }


BATCHES = {"raw": raw_batch, "cached": cached_batch}


@pytest.mark.parametrize("features", ["raw", "cached"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_head_trains_and_follows_the_contract(features, fusion):
    torch.manual_seed(0)
    model = build_model(features=features, fusion=fusion, num_classes=C, size="tiny", input_dims=DIMS)
    batch = BATCHES[features]()
    out = model(batch)
    assert model.modalities == ("audio", "video")
    assert out.fused.shape == (B, C)
    assert {m: t.shape for m, t in out.unimodal.items()} == {"audio": (B, C), "video": (B, C)}
    assert {m: t.shape for m, t in out.features.items()} == {"audio": (B, 16), "video": (B, 16)}

    # a few MLB steps on one fixed batch: the (Multi-Loss) objective must fall
    balancer = MLB(alpha=0.5, beta_max=2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(batch)
        loss, _ = balancer.loss(model, batch, out)
        optimizer.zero_grad()
        loss.backward()
        logs = balancer.before_step(model, batch, out)
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(math.isfinite(v) for v in logs.values())  # no NaN k, r, s
    assert losses[-1] < losses[0] - 0.1, losses


def test_late_linear_parts_sum_to_the_fused_logits():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    out = model(raw_batch())
    assert set(out.fused_parts) == {"audio", "video"}
    torch.testing.assert_close(out.fused_parts["audio"] + out.fused_parts["video"], out.fused)
    # by hand: a·W_aᵀ + b/2 with W_a the first 16 columns
    w, bias = model.fusion.weight, model.fusion.bias
    torch.testing.assert_close(out.fused_parts["audio"], out.features["audio"] @ w[:, :16].t() + bias / 2)


def test_cosine_classifier_for_mmcosine():
    torch.manual_seed(0)
    model = build_model(
        features="raw", fusion="late-linear", size="tiny", classifier="cosine", cosine_scale=10.0
    )
    out = model(raw_batch())
    assert model.fusion.bias is None and model.shared_parameters() == []
    for logits in [*out.fused_parts.values(), *out.unimodal.values()]:
        assert logits.abs().max() <= 10.0 + 1e-4  # scale · cosine
    torch.testing.assert_close(sum(out.fused_parts.values()), out.fused)


# ---- masking -------------------------------------------------------------------------------------------
def test_masked_mean_ignores_padded_steps():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # [1, 3, 2]
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(x, mask).tolist() == [[2.0, 3.0]]
    x[0, 2] = float("1e6")
    assert masked_mean(x, mask).tolist() == [[2.0, 3.0]]


@pytest.mark.parametrize("train", [True, False])
def test_conformer_encoder_ignores_padded_values(train):
    torch.manual_seed(0)
    enc = ConformerEncoder(6, dim=8, num_layers=2, heads=2, ffn_dim=16, conv_kernel=5, dropout=0.0)
    enc.train(train)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 9, 6, generator=g)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 5, 2])[:, None]  # right-padded, [3, 9]
    first = enc(x, mask)
    noisy = x.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 6, generator=g) * 50
    second = enc(noisy, mask)
    torch.testing.assert_close(second.pooled, first.pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second.sequence[mask], first.sequence[mask], rtol=1e-5, atol=1e-6)
    if not train:  # eval (running BatchNorm stats): a padded sample equals the same sample alone
        alone = enc(x[1:2, :5], mask[1:2, :5])
        torch.testing.assert_close(first.pooled[1:2], alone.pooled, rtol=1e-5, atol=1e-6)


def test_conformer_encoder_takes_rows_all_shorter_than_the_padding():
    """A subset of a batch (G-Blending's held-out rows) can be padded beyond its longest row."""
    torch.manual_seed(0)
    enc = ConformerEncoder(6, dim=8, num_layers=1, heads=2, ffn_dim=16, conv_kernel=3, dropout=0.0).eval()
    x = torch.randn(2, 9, 6)
    mask = torch.arange(9)[None, :] < torch.tensor([5, 3])[:, None]  # [2, 9], no row uses steps 5-8
    padded, trimmed = enc(x, mask), enc(x[:, :5], mask[:, :5])
    torch.testing.assert_close(padded.pooled, trimmed.pooled)


def test_tf_fusion_ignores_padded_values():
    torch.manual_seed(0)
    model = build_model(features="cached", fusion="tf", size="tiny", input_dims=DIMS).eval()
    batch = cached_batch()
    noisy = dict(batch)
    for m in ("audio", "video"):
        noisy[m] = batch[m].masked_fill(~batch[f"{m}_mask"][:, :, None], 123.0)
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).fused, model(batch).fused, rtol=1e-5, atol=1e-6)


def test_frame_encoder_pools_over_frames():
    torch.manual_seed(0)
    enc = ResNetFrames((4, 4, 8, 8)).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x[:, [2, 0, 1]]).pooled, enc(x).pooled, rtol=1e-5, atol=1e-6)


# ---- ownership, helpers, builders -------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_grad_slices_cover_encoders_and_heads_and_never_a_fusion_bias(fusion):
    model = build_model(features="cached", fusion=fusion, size="tiny", input_dims=DIMS)
    names = {id(p): n for n, p in model.named_parameters()}
    owned = {m: {names[id(p)] for p, _ in model.modality_grad_slices(m)} for m in model.modalities}
    assert not owned["audio"] & owned["video"] or owned["audio"] & owned["video"] == {"fusion.weight"}
    for m in model.modalities:
        expected = {n for n in names.values() if n.startswith((f"encoders.{m}.", f"unimodal_heads.{m}."))}
        assert expected <= owned[m]
        assert not any(n.startswith("fusion.") and n.endswith("bias") for n in owned[m])
    with pytest.raises(KeyError):
        model.modality_grad_slices("text")


# The fusion-head parameters each rule gives each modality; "authors" is read off kkontras/MLB
# Bias_Infusion.py's name matching ("mod0"/"enc_0"/"fc_0_lin.weight") on their heads' parameter names:
# Gated fc_mod0_x / fc_mod1_y (weight and bias), FiLM fc / fc_out and TF mod_0_token (no match).
FUSION_OWNED = {
    ("late-linear", "authors"): ({"fusion.weight"}, {"fusion.weight"}),
    ("mid-mlp", "authors"): ({"fusion.inputs.audio.weight"}, {"fusion.inputs.video.weight"}),
    ("film", "authors"): (set(), set()),
    ("gated", "authors"): (
        {"fusion.gate.weight", "fusion.gate.bias"},
        {"fusion.value.weight", "fusion.value.bias"},
    ),
    ("tf", "authors"): (set(), set()),
    ("late-linear", "input"): ({"fusion.weight"}, {"fusion.weight"}),
    ("mid-mlp", "input"): ({"fusion.inputs.audio.weight"}, {"fusion.inputs.video.weight"}),
    ("film", "input"): ({"fusion.film.weight"}, set()),
    ("gated", "input"): ({"fusion.gate.weight"}, {"fusion.value.weight"}),
    ("tf", "input"): ({"fusion.modality_tokens.audio"}, {"fusion.modality_tokens.video"}),
}


@pytest.mark.parametrize(("fusion", "ownership"), sorted(FUSION_OWNED))
def test_fusion_ownership_rules(fusion, ownership):
    model = build_model(features="cached", fusion=fusion, size="tiny", input_dims=DIMS)
    names = {id(p): n for n, p in model.named_parameters()}
    for m, expected in zip(model.modalities, FUSION_OWNED[(fusion, ownership)]):
        owned = {names[id(p)] for p, _ in model.modality_grad_slices(m, ownership)}
        assert {n for n in owned if n.startswith("fusion.")} == expected
    with pytest.raises(ValueError, match="ownership"):
        model.modality_grad_slices("audio", "bogus")


def test_zero_modality_keeps_the_rest():
    batch = cached_batch()
    zeroed = zero_modality(batch, "audio")
    assert zeroed["audio"].abs().sum() == 0 and zeroed["video"] is batch["video"]
    assert zeroed["audio_mask"] is batch["audio_mask"] and batch["audio"].abs().sum() > 0


def test_paper_size_gives_512_features():
    torch.manual_seed(0)
    model = build_model(
        features="cached", fusion="late-linear", size="paper", input_dims={"audio": 32, "video": 1408}
    ).eval()
    assert len(model.encoders["audio"].conformer.conformer_layers) == 5
    with torch.no_grad():
        out = model(cached_batch(b=2) | {"audio": torch.randn(2, 10, 32), "video": torch.randn(2, 5, 1408)})
    assert out.features["audio"].shape == (2, 512) and out.fused.shape == (2, 6)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"features": "spectral"}, "spectral"),
        ({"features": "raw", "fusion": "concat"}, "concat"),
        ({"features": "raw", "size": "huge"}, "huge"),
        ({"features": "cached"}, "input_dims"),
        ({"features": "raw", "classifier": "arc"}, "arc"),
    ],
)
def test_bad_config_fails_early_naming_the_value(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build_model(**kwargs)


def test_bad_input_shapes_are_named():
    model = build_model(features="raw", fusion="late-linear", size="tiny")
    with pytest.raises(ValueError, match=r"\[B, 1, F, T\]"):
        model({"audio": torch.randn(2, 32, 24), "video": torch.randn(2, 3, 3, 32, 32)})
