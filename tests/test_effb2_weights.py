"""EfficientNet-B2 weights from an ONNX export (HSEmotion's enet_b2_8_best.onnx is one) or a state_dict file,
through the extractor's one loading path. Offline: the B2s are seeded, exported here with torch.onnx, as
HSEmotion exported theirs (a fixed 260 px input, BatchNorm folded or not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.effb2 import export_onnx, pytorch_style_padding, seeded_b2

from pipeline.compute.effb2_weights import EffB2WeightsError, load_state_dict_file
from pipeline.compute.extractors import EffNetB2Config, EffNetB2Extractor, ExtractorConfigError

pytestmark = pytest.mark.unit

SMALL = 64  # extraction size in tests; the export is at HSEmotion's 260, whose TF padding differs from 64's
EXPORT = 260
SEED = 7


def crops(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, SMALL, SMALL, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The features of the seeded B2 itself (in PyTorch, no file), at the extraction size."""
    extractor = EffNetB2Extractor(
        EffNetB2Config(weights="random", image_size=SMALL), "cpu", seeded_b2(SEED, SMALL)
    )
    return extractor.extract(crops(3))


def assert_same_features(features: np.ndarray, reference: np.ndarray) -> None:
    # A folded BatchNorm changes float32 rounding only: ~1e-6 of the features' scale.
    scale = float(np.abs(reference).max())
    assert scale > 0 and np.isfinite(features).all()
    np.testing.assert_allclose(features, reference, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("fold", [True, False], ids=["batchnorm-folded", "batchnorm-kept"])
def test_onnx_export_loads_to_the_pytorch_models_features(tmp_path, reference, fold):
    path = export_onnx(seeded_b2(SEED, EXPORT), tmp_path / "enet_b2_8_best.onnx", EXPORT, fold=fold)
    extractor = EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=SMALL), device="cpu")
    assert_same_features(extractor.extract(crops(3)), reference)
    identity = extractor.identity()
    assert identity["weights_file"] == "enet_b2_8_best.onnx" and identity["weights_format"] == "onnx"
    assert identity["weights"].startswith("sha256:") and identity["random_init"] is False
    assert identity["input_size"] == SMALL and identity["dim"] == 1408


def test_safetensors_and_torch_state_dict_files_load_the_same(tmp_path, reference):
    from safetensors.torch import save_file

    state = seeded_b2(SEED, SMALL).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "b2.safetensors")
    torch.save(state, tmp_path / "b2.pth")
    for name in ("b2.safetensors", "b2.pth"):
        extractor = EffNetB2Extractor(EffNetB2Config(weights=str(tmp_path / name), image_size=SMALL), "cpu")
        np.testing.assert_array_equal(extractor.extract(crops(3)), reference)
    assert extractor.identity()["weights_format"] == "torch-state-dict"


def test_a_pickled_whole_model_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "enet_b2_8_best.pt"
    torch.save(seeded_b2(SEED, SMALL), path)  # a whole module, as HSEmotion publishes its .pt files
    with pytest.raises(EffB2WeightsError, match="never unpickled") as caught:
        EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=SMALL), device="cpu")
    assert str(path) in str(caught.value) and "enet_b2_8_best.onnx" in str(caught.value)


def test_a_corrupt_onnx_file_is_refused_naming_it_and_the_fix(tmp_path):
    path = export_onnx(seeded_b2(SEED, 96), tmp_path / "cut.onnx", 96)
    path.write_bytes(path.read_bytes()[:5000])  # a truncated download
    with pytest.raises(EffB2WeightsError, match="not a readable ONNX file") as caught:
        EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=SMALL), device="cpu")
    assert str(path) in str(caught.value) and "enet_b2_8_best.onnx" in str(caught.value)


def test_an_onnx_export_of_another_network_is_refused(tmp_path):
    path = export_onnx(seeded_b2(SEED, 96, name="efficientnet-b0"), tmp_path / "b0.onnx", 96)
    with pytest.raises(EffB2WeightsError, match=r"81 Conv nodes, EfficientNet-B2 has 115") as caught:
        EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=SMALL), device="cpu")
    assert str(path) in str(caught.value)


def test_an_export_that_pads_like_pytorch_is_refused(tmp_path):
    # timm's efficientnet_b2 (not tf_): same weights and shapes, other padding, so other features.
    path = export_onnx(pytorch_style_padding(seeded_b2(SEED, 96)), tmp_path / "pt_padding.onnx", 96)
    with pytest.raises(EffB2WeightsError, match="pads like PyTorch") as caught:
        load_state_dict_file(path, seeded_b2(SEED, SMALL))
    assert "Conv node 0" in str(caught.value)


def test_a_state_dict_of_another_network_is_refused(tmp_path):
    path = tmp_path / "b0.safetensors"
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in seeded_b2(SEED, SMALL, "efficientnet-b0").state_dict().items()}, path
    )
    with pytest.raises(ExtractorConfigError, match="not an EfficientNet-B2 state_dict"):
        EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=SMALL), device="cpu")
