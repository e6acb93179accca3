"""The baselines built on each encoder trained alone: Ensemble (the runs alone evaluated together) and Uni-Pre
(their encoders frozen or fine-tuned under a new fusion head); `init_encoders` checked before any work;
`compare` trains the runs alone first and hands them over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.shards import write_shard_folder

from mlb.experiment.sweep import run_comparison, with_unimodal_runs
from mlb.train import TrainConfig, train
from mlb.train.checkpoint import load_checkpoint
from mlb.train.config import TrainConfigError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shard_folder(tmp_path_factory.mktemp("unipre") / "shards" / "cached", "cached", video_dim=32)


def _config(data: Path, out: Path, method: str, **kw) -> TrainConfig:
    base = {"data": data, "out": out, "features": "cached", "method": method, "size": "tiny", "epochs": 2,
            "batch_size": 8, "device": "cpu", "dvclive": False, "lr": 1e-2}  # fmt: skip
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def alone(shards, tmp_path_factory) -> dict[str, Path]:
    """audio-only and video-only runs on the shards (the unimodal runs Uni-Pre starts from)."""
    root = tmp_path_factory.mktemp("alone")
    runs = {}
    for modality in ("audio", "video"):
        runs[modality] = root / f"{modality}-only"
        train(_config(shards, runs[modality], f"{modality}-only", seed=1))
    return runs


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, ("model",))["model"]


def _part(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.integration
@pytest.mark.parametrize("method", ["uni-pre-frozen", "uni-pre-finetuned"])
def test_the_encoders_start_from_the_unimodal_runs_and_the_frozen_ones_stay(shards, alone, tmp_path, method):
    out = tmp_path / method
    sources = f"audio={alone['audio']},video={alone['video']}"
    train(_config(shards, out, method, init_encoders=sources))
    trained = _weights(out / "checkpoints" / "last.pt")
    for modality, run in alone.items():
        pretrained = _weights(run / "checkpoints" / "best.pt")
        encoder = _part(pretrained, f"encoders.{modality}.")
        assert encoder and set(encoder) == set(_part(trained, f"encoders.{modality}."))
        same = all(torch.equal(v, trained[k]) for k, v in encoder.items())
        # frozen: every weight and BatchNorm statistic as the unimodal run's selected checkpoint left it
        assert same == (method == "uni-pre-frozen"), modality
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["config"]["init_encoders"] == sources
    if method == "uni-pre-frozen":  # only the fusion head and the probes are optimised
        assert (
            run_json["num_parameters"]
            < json.loads((alone["audio"] / "run.json").read_text())["num_parameters"]
        )


@pytest.mark.integration
def test_the_finetuned_encoders_start_at_the_unimodal_weights(shards, alone, tmp_path):
    """One step at a negligible lr: every encoder and head parameter is still the unimodal run's (Adam
    moves each by about the lr); BatchNorm statistics move with the step, so parameters only."""
    out = tmp_path / "run"
    train(_config(shards, out, "uni-pre-finetuned", epochs=1, max_steps=1, lr=1e-9,
                  init_encoders=f"audio={alone['audio']},video={alone['video']}"))  # fmt: skip
    trained = _weights(out / "checkpoints" / "last.pt")
    for modality, run in alone.items():
        pretrained = _weights(run / "checkpoints" / "best.pt")
        for prefix in (f"encoders.{modality}.", f"unimodal_heads.{modality}."):
            weights = {
                k: v
                for k, v in _part(pretrained, prefix).items()
                if v.is_floating_point() and "running_" not in k
            }
            assert weights
            for key, value in weights.items():
                torch.testing.assert_close(trained[key], value, atol=1e-6, rtol=0)


@pytest.mark.integration
def test_the_fusion_head_is_new_not_the_unimodal_runs(shards, alone, tmp_path):
    """The unimodal runs' fusion heads were never trained: a Uni-Pre run builds its own (the seed's init)."""
    out = tmp_path / "run"
    train(_config(shards, out, "uni-pre-frozen", epochs=1, max_steps=1,
                  init_encoders=f"audio={alone['audio']},video={alone['video']}"))  # fmt: skip
    fusion = _part(_weights(out / "checkpoints" / "last.pt"), "fusion.")
    audio_fusion = _part(_weights(alone["audio"] / "checkpoints" / "best.pt"), "fusion.")
    assert fusion and any(not torch.equal(v, audio_fusion[k]) for k, v in fusion.items())


@pytest.mark.integration
def test_uni_pre_without_the_unimodal_runs_is_refused_naming_the_fix(shards, tmp_path):
    with pytest.raises(TrainConfigError, match="init_encoders .*audio-only and video-only"):
        train(_config(shards, tmp_path / "run", "uni-pre-finetuned"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("audio", "'audio' is not MODALITY=PATH"),
        ("audio=/nowhere/run", "/nowhere/run does not exist: train that modality alone first"),
    ],
)
def test_a_bad_init_encoders_is_refused_before_any_work(tmp_path, value, message):
    config = TrainConfig(data=tmp_path, out=tmp_path / "run", init_encoders=value)
    with pytest.raises(TrainConfigError, match=message):
        config.validate()


@pytest.mark.integration
def test_a_unimodal_run_of_another_model_size_is_refused(shards, alone, tmp_path):
    with pytest.raises(TrainConfigError, match="cached/tiny run, this one is cached/small"):
        train(_config(shards, tmp_path / "run", "uni-pre-frozen", size="small",
                      init_encoders=f"audio={alone['audio']},video={alone['video']}"))  # fmt: skip


@pytest.mark.unit
def test_compare_puts_the_runs_alone_first_and_adds_the_missing_ones():
    said = []
    assert with_unimodal_runs(["joint", "uni-pre-frozen", "video-only"], said.append) == (
        ["audio-only", "video-only", "joint", "uni-pre-frozen"],
        ["audio-only"],
    )
    assert said == ["uni-pre-frozen start(s) from each encoder trained alone: audio-only added"]
    assert with_unimodal_runs(["joint", "mlb"], said.append) == (["joint", "mlb"], []) and len(said) == 1


@pytest.mark.integration
def test_runs_alone_added_for_them_train_once_per_seed_and_serve_every_fusion_head(shards, tmp_path):
    base = _config(shards, tmp_path / "unused", "joint", epochs=1)
    runs, _ = run_comparison(base, ["uni-pre-frozen"], ["late-linear", "mid-mlp"], [0], tmp_path / "runs",
                             log=lambda *_: None)  # fmt: skip
    assert [(r["method"], r["fusion"]) for r in runs] == [
        ("audio-only", "late-linear"),
        ("video-only", "late-linear"),
        ("uni-pre-frozen", "late-linear"),
        ("uni-pre-frozen", "mid-mlp"),
    ]
    run_json = json.loads((tmp_path / "runs/cached/uni-pre-frozen/mid-mlp/seed0/run.json").read_text())
    assert run_json["config"]["init_encoders"] == (
        f"audio={tmp_path / 'runs/cached/audio-only/late-linear/seed0'},"
        f"video={tmp_path / 'runs/cached/video-only/late-linear/seed0'}"
    )


@pytest.mark.integration
def test_compare_trains_the_runs_alone_first_and_hands_each_seed_its_own(shards, tmp_path):
    base = _config(shards, tmp_path / "unused", "joint", epochs=1)
    runs, skipped = run_comparison(base, ["uni-pre-finetuned"], ["late-linear"], [0, 1], tmp_path / "runs",
                                   log=lambda *_: None)  # fmt: skip
    assert not skipped
    methods = [(r["method"], r["seed"]) for r in runs]
    assert methods[:4] == [("audio-only", 0), ("audio-only", 1), ("video-only", 0), ("video-only", 1)]
    for seed in (0, 1):
        run_json = json.loads(
            (tmp_path / "runs/cached/uni-pre-finetuned/late-linear" / f"seed{seed}/run.json").read_text()
        )
        expected = ",".join(
            f"{m}={tmp_path / 'runs/cached' / f'{m}-only' / 'late-linear' / f'seed{seed}'}"
            for m in ("audio", "video")
        )
        assert run_json["config"]["init_encoders"] == expected


@pytest.mark.integration
def test_tune_trains_the_runs_alone_once_and_skips_ensemble(shards, tmp_path):
    from mlb.experiment.tune import TuneConfig, alone_runs, run_tune

    base = _config(shards, tmp_path / "unused", "joint", epochs=1)
    said = []
    tree = run_tune(base, ["uni-pre-frozen", "ensemble"], ["late-linear"], tmp_path / "tune",
                    TuneConfig(trials=1, prune=False), log=said.append)  # fmt: skip
    assert tree["cached"]["uni-pre-frozen"]["late-linear"]["trials"] == 1 and "ensemble" not in tree["cached"]
    alone = [tmp_path / "tune" / "alone" / m for m in ("audio-only", "video-only")]
    assert all((run / "metrics.json").is_file() for run in alone)
    assert all(
        "test" not in json.loads((run / "metrics.json").read_text()) for run in alone
    )  # tuning: no test
    trial = next((tmp_path / "tune" / "cached" / "uni-pre-frozen" / "late-linear").glob("trial*/run.json"))
    assert json.loads(trial.read_text())["config"]["init_encoders"] == f"audio={alone[0]},video={alone[1]}"
    assert any("ensemble trains nothing" in line for line in said)
    assert sum("trained alone first" in line for line in said) == 2
    said.clear()  # the tune folder's runs alone are reused, not trained again
    assert (
        alone_runs(base, tmp_path / "tune", said.append) == f"audio={alone[0]},video={alone[1]}" and not said
    )


@pytest.mark.integration
def test_a_tuned_comparison_asks_no_tuned_settings_of_the_runs_alone_it_adds(shards, tmp_path):
    base = _config(shards, tmp_path / "unused", "joint", epochs=1)
    tuned = {"cached": {m: {"late-linear": {"lr": 1e-2, "weight_decay": 0.0, "method_params": {}, "trials": 1}}
                        for m in ("joint", "uni-pre-finetuned")}}  # fmt: skip
    runs, _ = run_comparison(base, ["joint", "uni-pre-finetuned"], ["late-linear"], [0], tmp_path / "runs",
                             log=lambda *_: None, tuned=tuned, tuned_file="best.yaml")  # fmt: skip
    tuning = {
        r["method"]: json.loads((Path(r["path"]) / "run.json").read_text())["config"]["tuning"] for r in runs
    }
    assert tuning["audio-only"] == {"tuned": False} and tuning["uni-pre-finetuned"]["tuned"] is True


# --- Ensemble -------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_ensemble_logits_standardise_each_head_over_the_batch_then_sum():
    from mlb.models.model import ensemble_logits

    audio = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    video = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    fused, parts = ensemble_logits({"audio": audio, "video": video})
    # audio: mean 4, unbiased std sqrt(((9+4+1+0+1+25)/5)) = sqrt(8); video: mean 2, std sqrt((64+4+4+4+4+0)/5) = 4
    expected = (audio - 4.0) / 8.0**0.5 + (video - 2.0) / 4.0
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(parts["video"], (video - 2.0) / 4.0)


def _logits_of_run(run: Path, modality: str, shards: Path, batch_size: int) -> torch.Tensor:
    """The run alone's own head on the test split, batch by batch, rebuilt from its checkpoint: `[N, C]`."""
    from mlb.data import ShardLoader, open_shard_folder
    from mlb.models import build_model
    from mlb.train.trainer import input_dims

    folder = open_shard_folder(shards)
    saved = load_checkpoint(run / "checkpoints" / "best.pt", ("model",))
    model = build_model(features="cached", fusion="late-linear", num_classes=folder.num_classes, size="tiny",
                        input_dims=input_dims(folder))  # fmt: skip
    model.load_state_dict(saved["model"])
    model.eval()
    loader = ShardLoader(folder, "test", batch_size, shuffle=False)
    with torch.no_grad():
        return [model(batch).unimodal[modality] for batch in loader.iterate(0)]


@pytest.mark.integration
def test_ensemble_predicts_the_runs_alone_standardised_per_batch_and_trains_nothing(shards, alone, tmp_path):
    out = tmp_path / "ensemble"
    result = train(_config(shards, out, "ensemble", eval_batch_size=5,
                           init_encoders=f"audio={alone['audio']},video={alone['video']}"))  # fmt: skip
    assert result["training"]["steps"] == 0 and result["selected"]["epoch"] == 0
    batches = {m: _logits_of_run(alone[m], m, shards, 5) for m in ("audio", "video")}
    expected = []
    for audio, video in zip(batches["audio"], batches["video"]):  # each [B, C], B = 5 (the last 2)
        standard = [(x - x.mean()) / x.std() for x in (audio, video)]
        expected += (standard[0] + standard[1]).argmax(1).tolist()
    predictions = json.loads((out / "test_predictions.json").read_text())
    assert predictions["fused"] == expected
    for modality, run in alone.items():  # nothing moved: the selected weights are the runs alone's
        source = _part(_weights(run / "checkpoints" / "best.pt"), f"encoders.{modality}.")
        kept = _weights(out / "checkpoints" / "best.pt")
        assert all(torch.equal(v, kept[k]) for k, v in source.items())


@pytest.mark.integration
def test_compare_sets_every_method_against_ensemble_and_uni_pre(shards, tmp_path):
    from mlb.analysis.stats import compare_to_baselines

    base = _config(shards, tmp_path / "unused", "joint", epochs=1)
    runs, _ = run_comparison(base, ["joint", "ensemble", "uni-pre-finetuned"], ["late-linear"], [0], tmp_path / "runs",
                             log=lambda *_: None)  # fmt: skip
    rows = compare_to_baselines(runs, n_resamples=200)
    pairs = {(r["method"], r["baseline"]) for r in rows}
    assert {("joint", "ensemble"), ("joint", "uni-pre-finetuned"), ("ensemble", "uni-pre-finetuned")} <= pairs
    assert ("ensemble", "joint") in pairs and ("uni-pre-finetuned", "ensemble") in pairs
