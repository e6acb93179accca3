"""The synthetic cached-feature corpus (`pipeline.synth_features`, `mlbpipe synth features`): the shard contract
the trainer's loader checks, variable lengths, byte-identical reruns, config errors, the swappable strong
modality (no training: nearest class means on pooled features) and the command. Tiny counts, a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mlb.data import SPLITS, ShardLoader, check_split, open_shard_folder
from pipeline.cli import app
from pipeline.store.shards import read_shard
from pipeline.synth_features import CORPUS, FeatureSynthConfig, synthesize_features

TINY = {"train": 40, "validation": 12, "test": 20, "maxcount": 16, "progress": False}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_features")
    synthesize_features(out, FeatureSynthConfig(**TINY))
    return out / "shards" / "cached"


@pytest.mark.unit
def test_folder_passes_the_loader_contract(tiny_folder):
    folder = open_shard_folder(tiny_folder, {"input_path": "cached"})
    for split in SPLITS:
        check_split(folder, split)
    assert {split: folder.num_samples(split) for split in SPLITS} == {
        "train": 40,
        "validation": 12,
        "test": 20,
    }
    assert len(folder.shards("train")) == 3  # maxcount 16: 16 + 16 + 8
    meta = folder.meta
    assert meta["corpus"] == CORPUS and meta["num_classes"] == 6 and len(meta["label_names"]) == 6
    assert meta["fields"] == {
        "w2v2.npy": {"dtype": "float16", "shape": ["T_a", 16]},
        "effb2.npy": {"dtype": "float16", "shape": ["T_v", 16]},
    }
    for identity in meta["extractors"].values():  # nobody may take these for real features
        assert identity["synthetic"] is True and identity["random_init"] is True
    assert meta["method_defaults"] == {} and meta["config"]["synth_features"]["seed"] == 0

    loader = ShardLoader(folder, "train", 8, shuffle=True, seed=0, rank=0, world_size=1)
    batches = list(loader.iterate(0))
    assert len(batches) == loader.num_batches(0) == 5
    batch = batches[0]
    assert batch["audio"].shape[0] == 8 and batch["audio"].shape[2] == 16  # [B, T_a, D_a]
    assert batch["video"].shape[2] == 16 and batch["label"].shape == (8,)  # [B, T_v, D_v], [B]
    labels = np.concatenate([b["label"].numpy() for b in batches])  # [N]
    assert np.bincount(labels, minlength=6).tolist() == [7, 7, 7, 7, 6, 6]  # balanced as 40 allows

    stats = json.loads((tiny_folder / "stats.json").read_text())
    steps = sum(
        len(s[1]["w2v2.npy"]) for name in folder.shards("train") for s in read_shard(tiny_folder / name)
    )
    assert stats["w2v2"]["count"] == steps and len(stats["effb2"]["mean"]) == 16  # train split only


@pytest.mark.unit
def test_sequence_lengths_vary_within_their_ranges(tiny_folder):
    config = FeatureSynthConfig(**TINY)
    samples = [s for name in sorted(tiny_folder.glob("*.tar")) for s in read_shard(name)]
    for field, (low, high) in (("w2v2.npy", config.lengths("audio")), ("effb2.npy", config.lengths("video"))):
        lengths = {fields[field].shape[0] for _, fields in samples}
        assert len(lengths) > 3 and low <= min(lengths) and max(lengths) <= high
    batch = next(ShardLoader(open_shard_folder(tiny_folder), "test", 20, shuffle=False).iterate(0))
    assert not batch["audio_mask"].all() and not batch["video_mask"].all()  # padding happened


@pytest.mark.unit
def test_same_config_gives_byte_identical_shards(tmp_path, tiny_folder):
    synthesize_features(tmp_path / "again", FeatureSynthConfig(**TINY))
    again = tmp_path / "again" / "shards" / "cached"
    names = sorted(p.name for p in tiny_folder.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_folder / name).read_bytes() == (again / name).read_bytes(), name
    synthesize_features(tmp_path / "other", FeatureSynthConfig(**{**TINY, "seed": 1}))
    other = tmp_path / "other" / "shards" / "cached" / "train-000000.tar"
    assert other.read_bytes() != (tiny_folder / "train-000000.tar").read_bytes()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train", 0),
        ("test", -3),
        ("classes", 1),
        ("audio_dim", 4),  # fewer dims than classes: no orthogonal cue per class
        ("video_max_len", 2),  # below video_min_len
        ("strong", "speech"),
        ("weak_strength", 1.5),
        ("strong_frames", -0.1),
        ("weak_flip", 0.7),
        ("strong_amplitude", -1.0),
        ("seed", -1),
        ("maxcount", "many"),
    ],
)
def test_config_errors_name_key_and_value(key, value):
    with pytest.raises(ValueError) as err:
        FeatureSynthConfig(**{key: value})
    assert f"{key}={value!r}" in str(err.value)


def _pooled(folder: Path, split: str, field: str, power: int) -> tuple[np.ndarray, np.ndarray]:
    """Every clip's mean over steps of its features to the `power`: ([N, D], labels [N])."""
    samples = [s for name in sorted(folder.glob(f"{split}-*.tar")) for s in read_shard(name)]
    pooled = np.stack([(f[field].astype(np.float64) ** power).mean(0) for _, f in samples])  # [N, D]
    return pooled, np.array([f["json"]["label"] for _, f in samples])


def _nearest_mean_accuracy(folder: Path, field: str, power: int) -> float:
    """Accuracy on test of nearest class means fitted on train (no training of any model)."""
    x, y = _pooled(folder, "train", field, power)  # [N, D], [N]
    means = np.stack([x[y == c].mean(0) for c in range(6)])  # [C, D]
    x_test, y_test = _pooled(folder, "test", field, power)
    distances = ((x_test[:, None, :] - means[None]) ** 2).sum(-1)  # [N, C]
    return float((distances.argmin(1) == y_test).mean())


@pytest.mark.unit
def test_swapping_strong_swaps_which_modality_classifies(tmp_path):
    counts = {"train": 300, "validation": 1, "test": 300, "progress": False}
    field = {"audio": "w2v2.npy", "video": "effb2.npy"}
    chance = 1 / 6
    for strong, weak in (("audio", "video"), ("video", "audio")):
        synthesize_features(tmp_path / strong, FeatureSynthConfig(**counts, strong=strong))
        folder = tmp_path / strong / "shards" / "cached"
        strong_mean = _nearest_mean_accuracy(folder, field[strong], power=1)
        weak_mean = _nearest_mean_accuracy(folder, field[weak], power=1)
        weak_energy = _nearest_mean_accuracy(folder, field[weak], power=2)
        assert strong_mean > 0.6, strong  # an offset: mean pooling shows it
        assert weak_mean < chance + 0.1, strong  # a random sign: mean pooling cancels it...
        assert chance + 0.15 < weak_energy < strong_mean, strong  # ...its energy shows it: weak, not absent


@pytest.mark.integration
def test_cli_writes_the_folder_and_refuses_bad_options(tmp_path):
    args = ["synth", "features", str(tmp_path / "out"), "--train", "12", "--validation", "6", "--test", "6"]
    result = CliRunner().invoke(app, [*args, "--strong", "video", "--weak-flip", "0.25"])
    assert result.exit_code == 0, result.output
    assert "wrote 24 synthetic clips (train 12, validation 6, test 6)" in result.output
    meta = json.loads((tmp_path / "out" / "shards" / "cached" / "meta.json").read_text())
    assert meta["config"]["synth_features"]["strong"] == "video"
    assert meta["config"]["synth_features"]["weak_flip"] == 0.25
    assert meta["extractors"]["video"]["role"] == "strong"

    result = CliRunner().invoke(app, ["synth", "features", str(tmp_path / "bad"), "--weak-strength", "2"])
    assert result.exit_code == 2
    assert "weak_strength=2.0" in result.output
    assert not (tmp_path / "bad").exists()  # nothing written before the options are checked
