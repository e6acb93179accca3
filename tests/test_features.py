"""Frozen extractors (EfficientNet-B2, Wav2Vec2 layer 12), the features stage and the cached shards.

Offline only: weights are seeded random models, saved to temp files/folders and loaded back through the
same paths as real checkpoints. EfficientNet runs at 64 px to stay fast on CPU.
"""

from __future__ import annotations

import json
import re
import urllib.error

import h5py
import numpy as np
import pytest
import torch
from helpers.corpora import TINY_CLIPS, make_tiny_corpus

from pipeline.compute import extractors as ex
from pipeline.compute.extractors import (
    EffNetB2Config,
    EffNetB2Extractor,
    ExtractorConfigError,
    Wav2Vec2Config,
    Wav2Vec2Extractor,
    WeightsUnavailableError,
)
from pipeline.stages import faces as faces_stage
from pipeline.stages import features as features_stage
from pipeline.stages import shards_cached
from pipeline.store import intermediates
from pipeline.store.shards import read_shard

SMALL = 64  # EfficientNet-B2 input size in tests (native 260)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def effb2_random():
    return EffNetB2Extractor(EffNetB2Config(weights="random", image_size=SMALL, seed=3), device="cpu")


@pytest.fixture(scope="module")
def w2v2_random():
    return Wav2Vec2Extractor(Wav2Vec2Config(model="random-tiny", layer=12, seed=5), device="cpu")


def crops(n: int, size: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def waves(lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in lengths]


# --- EfficientNet-B2 ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_effb2_shapes_dtypes_and_seeded_random_init(effb2_random):
    features = effb2_random.extract(crops(3))
    assert features.shape == (3, 1408) and features.dtype == np.float32
    assert np.isfinite(features).all()
    # scale is usable in float16 (PyTorch's default init would give ~1e-13 here)
    assert 1e-2 < np.abs(features).mean() < 1e2
    assert not np.allclose(features[0], features[1])
    same = EffNetB2Extractor(EffNetB2Config(weights="random", image_size=SMALL, seed=3), device="cpu")
    np.testing.assert_array_equal(same.extract(crops(3)), features)
    other = EffNetB2Extractor(EffNetB2Config(weights="random", image_size=SMALL, seed=4), device="cpu")
    assert not np.allclose(other.extract(crops(3)), features)
    assert effb2_random.extract(crops(0)).shape == (0, 1408)
    identity = effb2_random.identity()
    assert identity["random_init"] is True and identity["weights"] == "random:seed=3"
    assert identity["input_size"] == SMALL and identity["dim"] == 1408


@pytest.mark.unit
def test_effb2_local_weights_file_loads_offline_and_matches_the_in_memory_model(tmp_path, effb2_random):
    path = tmp_path / "effb2.pth"
    torch.save(effb2_random.model.state_dict(), path)
    loaded = EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=SMALL), device="cpu")
    np.testing.assert_array_equal(loaded.extract(crops(2)), effb2_random.extract(crops(2)))
    identity = loaded.identity()
    assert identity["random_init"] is False and identity["weights"].startswith("sha256:")


@pytest.mark.unit
def test_effb2_weights_file_that_is_not_effb2_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(ExtractorConfigError, match="not an EfficientNet-B2 state_dict"):
        ex.build_effnet_b2(EffNetB2Config(weights=str(path), image_size=SMALL))


@pytest.mark.unit
def test_effb2_imagenet_offline_says_how_to_supply_weights(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError) as err:
        ex.build_effnet_b2(EffNetB2Config(weights="imagenet", image_size=SMALL))
    message = str(err.value)
    assert ex.EFFNET_B2_IMAGENET_URL in message and "effb2.weights" in message and "random" in message


@pytest.mark.unit
def test_extractor_config_errors_name_the_key(tmp_path):
    missing = EffNetB2Config(weights=str(tmp_path / "missing.onnx"))  # looked for when the extractor is built
    with pytest.raises(
        ExtractorConfigError, match=r"effb2.weights=.*missing.onnx.*no such file.*paper-inputs"
    ):
        ex.build_effnet_b2(missing)
    with pytest.raises(ExtractorConfigError, match="effb2.dtype"):
        EffNetB2Config(weights="random", dtype="float8")
    with pytest.raises(ExtractorConfigError, match="w2v2.layer"):
        Wav2Vec2Config(model="random-tiny", layer=0)
    with pytest.raises(ExtractorConfigError, match="w2v2.layer=13"):
        ex.build_wav2vec2(Wav2Vec2Config(model="random-tiny", layer=13))


# --- Wav2Vec2 -----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_w2v2_shapes_and_padding_free_batching(w2v2_random):
    batch = waves([16000, 7000, 12345])
    outputs = w2v2_random.extract(batch)
    for wave, out in zip(batch, outputs):
        assert out.dtype == np.float32 and out.shape == (w2v2_random.output_length(len(wave)), 32)
    assert outputs[0].shape[0] == 49  # 50 frames/s: 1 s → 49 frames (25 ms window, 20 ms hop)
    # batched (padded + attention mask) equals one clip at a time
    for wave, out in zip(batch, outputs):
        np.testing.assert_allclose(w2v2_random.extract([wave])[0], out, atol=1e-4)


@pytest.mark.unit
def test_w2v2_local_folder_loads_offline_and_matches_the_in_memory_model(tmp_path, w2v2_random):
    folder = ex.write_tiny_wav2vec2(tmp_path / "w2v2", seed=5)
    assert (folder / "config.json").is_file()
    loaded = Wav2Vec2Extractor(Wav2Vec2Config(model=str(folder), layer=12), device="cpu")
    batch = waves([8000, 6000])
    for a, b in zip(loaded.extract(batch), w2v2_random.extract(batch)):
        np.testing.assert_array_equal(a, b)
    identity = loaded.identity()
    assert identity["random_init"] is True  # the folder remembers it holds random weights
    assert identity["layer"] == 12 and identity["weights"].startswith("sha256:") and identity["dim"] == 32


@pytest.mark.unit
def test_w2v2_layer_12_is_hidden_states_12_of_the_full_model(tmp_path):
    """With 14 blocks, layer 12 is neither the last block nor layer-normed: it must equal
    hidden_states[12] of the full model, and differ from what a truncated model's last_hidden_state gives."""
    from transformers import Wav2Vec2Model

    folder = ex.write_tiny_wav2vec2(tmp_path / "w2v2_14", seed=1, num_hidden_layers=14)
    extractor = Wav2Vec2Extractor(Wav2Vec2Config(model=str(folder), layer=12), device="cpu")
    assert len(extractor.model.encoder.layers) == 12  # blocks 13-14 dropped
    wave = waves([9000])[0]
    ours = extractor.extract([wave])[0]  # [T, 32]
    full = Wav2Vec2Model.from_pretrained(folder).eval()
    normalised = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    with torch.inference_mode():
        out = full(torch.from_numpy(normalised)[None], output_hidden_states=True)
    assert len(out.hidden_states) == 15
    np.testing.assert_allclose(ours, out.hidden_states[12][0].numpy(), atol=1e-5)
    with torch.inference_mode():
        truncated_last = extractor.model(torch.from_numpy(normalised)[None]).last_hidden_state[0].numpy()
    assert not np.allclose(ours, truncated_last, atol=1e-2)  # the final LayerNorm is not applied


@pytest.mark.unit
def test_w2v2_unknown_hub_id_offline_says_how_to_supply_it():
    with pytest.raises(WeightsUnavailableError) as err:
        ex.build_wav2vec2(Wav2Vec2Config(model="mlbpipe-tests/no-such-model"))
    assert "w2v2.model" in str(err.value) and "random-tiny" in str(err.value)


# --- the stages end to end: faces → features → shards ---------------------------------------------------


@pytest.mark.integration
def test_faces_features_shards_round_trip(tmp_path, effb2_random, w2v2_random, monkeypatch):
    from mlb.data import ShardMetaError, check_meta, open_shard_folder

    root, out = make_tiny_corpus(tmp_path)
    manifest, faces_path, features_path = (
        out / "manifest.jsonl",
        out / "work" / "faces.h5",
        out / "work" / "features.h5",
    )
    faces_stage.run_faces(
        manifest, root, faces_path, faces_stage.FacesConfig(crop_size=SMALL, device="cpu"), progress=False
    )
    config = features_stage.FeaturesConfig(
        effb2=effb2_random.config,
        w2v2=w2v2_random.config,
        audio_batch_size=2,
        frame_batch_size=4,
        device="cpu",
    )
    summary = features_stage.run_features(manifest, root, faces_path, features_path, config, progress=False)
    assert summary["clips"] == 3 and list(summary["errors"]) == [TINY_CLIPS[3][0]]  # no face: not computed
    assert summary["errors"][TINY_CLIPS[3][0]].startswith("no-face: ")
    assert summary["extractors"]["audio"] == w2v2_random.identity()

    def must_not_run(jobs, cfg):
        raise AssertionError("finished clips were recomputed")

    monkeypatch.setattr(features_stage, "compute_features", must_not_run)
    features_stage.run_features(manifest, root, faces_path, features_path, config, progress=False)
    monkeypatch.undo()

    folder = out / "shards" / "cached"
    sizes, skipped = shards_cached.run_shards_cached(manifest, features_path, folder, progress=False)
    assert sizes == {"test-000000.tar": 1, "train-000000.tar": 2}
    assert list(skipped) == [TINY_CLIPS[3][0]] and skipped[TINY_CLIPS[3][0]].startswith("no-face: ")
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "sizes.json",
        "stats.json",
        "test-000000.tar",
        "train-000000.tar",
    ]
    assert json.loads((folder / "sizes.json").read_text()) == sizes

    samples = dict(read_shard(folder / "train-000000.tar") + read_shard(folder / "test-000000.tar"))
    assert sorted(samples) == sorted(clip_id for clip_id, _, has_face in TINY_CLIPS if has_face)
    for clip_id, sample in samples.items():
        assert sorted(sample) == ["effb2.npy", "json", "w2v2.npy"]
        assert sample["effb2.npy"].dtype == np.float16 and sample["effb2.npy"].shape[1] == 1408
        assert sample["w2v2.npy"].dtype == np.float16 and sample["w2v2.npy"].shape[1] == 32
        assert (
            sample["json"]["frames_with_face"]
            == sample["effb2.npy"].shape[0]
            == sample["json"]["frames_total"]
        )
        assert sample["w2v2.npy"].shape[0] == w2v2_random.output_length(6400)  # 0.4 s at 16 kHz
        assert sample["json"]["id"] == clip_id and sample["json"]["label_name"] == clip_id.split("_")[2]
        assert sample["json"]["group"] == clip_id[:4] and sample["json"]["corpus"] == "cremad"
    # the shards hold what the in-memory extractors give (float16-rounded)
    first = TINY_CLIPS[0][0]
    with h5py.File(faces_path, "r") as h5:
        expected = effb2_random.extract(intermediates.read_clip_faces(h5, first))
    np.testing.assert_allclose(samples[first]["effb2.npy"].astype(np.float32), expected, rtol=2e-3, atol=1e-3)
    wave = features_stage.load_wave_16k(root / "AudioWAV" / f"{first}.wav")
    np.testing.assert_allclose(
        samples[first]["w2v2.npy"].astype(np.float32), w2v2_random.extract([wave])[0], rtol=2e-3, atol=2e-3
    )

    # stats: per dimension over every time step of the train clips only
    stats = json.loads((folder / "stats.json").read_text())
    train = [s for s in samples.values() if s["json"]["split"] == "train"]
    for name in ("w2v2", "effb2"):
        rows = np.concatenate([s[f"{name}.npy"].astype(np.float64) for s in train])
        np.testing.assert_allclose(stats[name]["mean"], rows.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(stats[name]["std"], rows.std(axis=0), atol=1e-6)

    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["corpus"], meta["num_classes"], meta["label_names"][0], meta["config"]["protocol"]) == (
        "cremad", 6, "ANG", "vavl-1"
    )  # fmt: skip
    assert meta["method_defaults"]["mlb"]["cached"]["*"] == {"alpha": 5.0, "beta_max": 2.0}
    assert meta["input_path"] == "cached" and meta["fields"]["w2v2.npy"] == {
        "dtype": "float16",
        "shape": ["T_a", 32],
    }
    assert meta["extractors"]["audio"]["layer"] == 12 and meta["extractors"]["audio"]["random_init"] is True
    assert (
        meta["extractors"]["video"]["input_size"] == SMALL
        and meta["extractors"]["video"]["dtype"] == "float16"
    )
    assert str(tmp_path) not in (folder / "meta.json").read_text()  # no machine paths: same bytes anywhere

    # the trainer side reads the folder and refuses features of another kind
    open_shard_folder(
        folder, expected_meta={"extractors": {"audio": {"layer": 12}, "video": {"input_size": SMALL}}}
    )
    with pytest.raises(ShardMetaError, match="extractors.video.input_size"):
        check_meta(meta, {"extractors": {"video": {"input_size": 260}}})

    # deterministic: the same features give byte-identical shards
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    shards_cached.run_shards_cached(manifest, features_path, folder, progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.integration
def test_prepare_cremad_runs_the_cached_stages_and_says_how_to_get_missing_weights(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, out = make_tiny_corpus(tmp_path)
    runner = CliRunner()
    args = [
        "prepare",
        "cremad",
        "--root",
        str(root),
        "--out",
        str(out),
        "--stages",
        "faces,features,shards_cached",
        "--device",
        "cpu",
        "--quiet",
    ]

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    offline = runner.invoke(app, [*args, "--w2v2-model", "random-tiny"])
    assert offline.exit_code == 2 and "effb2.weights" in offline.output and "random" in offline.output
    assert not (out / "work" / "faces.h5").exists()  # it failed before the (slow) faces stage

    result = runner.invoke(app, [*args, "--effb2-weights", "random", "--w2v2-model", "random-tiny"])
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output and "train 2, validation 0, test 1" in result.output
    meta = json.loads((out / "shards" / "cached" / "meta.json").read_text())
    assert meta["extractors"]["video"]["random_init"] and meta["extractors"]["video"]["input_size"] == 260


# --- what a user without the weights is told ---------------------------------------------------------------

SET_KEY = re.compile(r"--set ([\w.]+)=")
DEMO_VALUES = {"features.effb2.weights": "random", "features.w2v2.model": "random-tiny"}


def _accepted_by_set(keys: set[str]) -> None:
    """Each key, given to `--set KEY=VALUE` as the command line does, sets that setting of the run."""
    from pipeline.cli.common import parse_key_values
    from pipeline.corpora import get_corpus
    from pipeline.prepare import prepare_config

    items = [f"{key}={DEMO_VALUES[key]}" for key in sorted(keys)]
    config = prepare_config(get_corpus("cremad"), {}, parse_key_values(items, "--set"))
    for key in keys:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert value == DEMO_VALUES[key], key


@pytest.mark.unit
def test_the_weights_fixes_name_keys_that_set_takes_and_commands_that_exist():
    import shutil
    import sys
    from pathlib import Path

    effb2, w2v2 = ex.effb2_weights_fix(), ex.w2v2_weights_fix("facebook/wav2vec2-large-robust")
    assert set(SET_KEY.findall(effb2)) == {"features.effb2.weights"}
    assert set(SET_KEY.findall(w2v2)) == {"features.w2v2.model"}
    _accepted_by_set({*SET_KEY.findall(effb2), *SET_KEY.findall(w2v2)})
    assert ex.EFFNET_B2_IMAGENET_URL in effb2 and "weights_path" not in effb2
    # the command the message names is the one the pinned huggingface_hub installs
    command = re.search(r"`(\w+) download facebook/wav2vec2-large-robust --local-dir DIR`", w2v2)[1]
    assert command == "hf" and shutil.which(command, path=str(Path(sys.executable).parent))


@pytest.mark.integration
def test_both_missing_weights_are_named_at_once_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    root, out = make_tiny_corpus(tmp_path)
    result = CliRunner().invoke(
        app, ["prepare", "cremad", "--root", str(root), "--out", str(out), "--stages",
              "faces,features,shards_cached", "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "both extractors lack their weights" in said and "huggingface-cli" not in said
    assert "1. effb2.weights='imagenet'" in said and "2. w2v2.model='facebook/wav2vec2-large-robust'" in said
    assert not (out / "work" / "faces.h5").exists()  # before the (slow) faces stage
    keys = set(SET_KEY.findall(said))  # the fixes and the demo's way out, each with its key
    assert keys == {"features.effb2.weights", "features.w2v2.model"}
    _accepted_by_set(keys)


@pytest.mark.integration
def test_doctor_says_how_to_get_each_missing_weight(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights in this cache
    result = CliRunner().invoke(app, ["doctor", "--wav2vec2", "mlbpipe-tests/no-such-model"])
    said = " ".join(result.output.split())
    assert "weights_path" not in said and "huggingface-cli" not in said
    assert "hf download mlbpipe-tests/no-such-model --local-dir DIR" in said
    keys = set(SET_KEY.findall(said))
    assert keys == {"features.effb2.weights", "features.w2v2.model"}
    _accepted_by_set(keys)


@pytest.mark.unit
def test_on_a_cpu_the_local_engine_lends_its_workers_to_the_models():
    """On a CPU the extractors run in the pool's one-thread workers (as fast as `workers` processes), with a
    GPU in this process (a GPU belongs to one process); closing the lent pool leaves the engine's open."""
    from pipeline.engine.executors import InProcess, LocalExecutor

    with LocalExecutor(2) as engine:
        models = engine.for_models("cpu")
        assert not isinstance(models, InProcess) and models.workers == 2
        models.close()
        assert sorted(engine.map_unordered(abs, [-1, -2])) == [(0, 1), (1, 2)]  # still open
        assert isinstance(engine.for_models("cuda:0"), InProcess)
    assert isinstance(LocalExecutor(1).for_models("cpu"), InProcess)


def _datasets(path) -> dict[str, bytes]:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                found.update({name: obj[()].tobytes()}) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return found


@pytest.mark.integration
def test_the_features_are_the_same_bytes_from_one_process_or_a_pool(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from pipeline.cli import app

    root, indexed = make_tiny_corpus(tmp_path)
    arrays = []
    for workers in (1, 2):
        out = shutil.copytree(indexed, tmp_path / f"out{workers}")
        result = CliRunner().invoke(app, [
            "prepare", "cremad", "--root", str(root), "--out", str(out), "--stages", "faces,features",
            "--device", "cpu", "--quiet", "--workers", str(workers), "--effb2-weights", "random",
            "--w2v2-model", "random-tiny", "--crop-size", str(SMALL),
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        arrays.append(_datasets(out / "work" / "features.h5"))
    assert arrays[0] == arrays[1] and any(name.startswith("effb2/") for name in arrays[0])
