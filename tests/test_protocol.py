"""`mlbpipe compare` over folds and with tuned settings: each fold trains on its own data, the tuned lr, weight
decay and method parameters reach the runs, and settings given by hand win."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helpers.shards import write_shard_folder
from typer.testing import CliRunner

from mlb.experiment.sweep import run_comparison
from mlb.train import TrainConfig
from pipeline.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Two prepared folders, one per fold (different clips: another seed of the factory), each with its VAVL
    partition in meta.json."""
    root = tmp_path_factory.mktemp("folds")
    for fold in (1, 2):
        write_shard_folder(root / f"p{fold}" / "shards" / "raw", "raw", seed=fold, protocol=f"vavl-{fold}")
    return root


def _base(data, out) -> TrainConfig:
    return TrainConfig(
        data=data, out=out, features="raw", size="tiny", epochs=1, batch_size=8, dvclive=False, device="cpu"
    )


def test_folds_train_on_their_own_data_with_seed_equal_to_fold(folds, tmp_path):
    fold_data = {k: folds / f"p{k}" / "shards" / "raw" for k in (1, 2)}
    swapped = {1: fold_data[2], 2: fold_data[1]}
    with pytest.raises(ValueError, match="says protocol 'vavl-2', fold 1 expects 'vavl-1'"):
        run_comparison(_base(swapped[1], tmp_path), ["joint"], ["late-linear"], [1, 2], tmp_path,
                       fold_data=swapped, log=lambda *_: None)  # fmt: skip
    run_comparison(
        _base(fold_data[1], tmp_path), ["joint"], ["late-linear"], [1, 2], tmp_path, fold_data=fold_data,
        log=lambda *_: None,
    )  # fmt: skip
    for fold in (1, 2):
        run = tmp_path / "raw" / "joint" / "late-linear" / f"fold{fold}"
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "run.json").read_text())["config"]
        assert metrics["fold"] == metrics["seed"] == fold
        assert config["data"] == str(fold_data[fold])
        predictions = json.loads((run / "test_predictions.json").read_text())
        assert len(predictions["ids"]) == metrics["test"]["num_samples"] == 12
    ids = [json.loads((tmp_path / "raw/joint/late-linear" / f"fold{k}/test_predictions.json").read_text())["ids"]
           for k in (1, 2)]  # fmt: skip
    assert ids[0] == sorted(ids[0])  # loader order is the shards' order, the same for every run of a fold


MLB_TUNED = {"lr": 0.002, "weight_decay": 3e-5, "method_params": {"alpha": 1.5, "beta_max": 4.0}, "trials": 3,
             "trial": 1}  # fmt: skip


def test_tuned_settings_reach_the_run_and_settings_by_hand_win(folds, tmp_path):
    data = folds / "p1" / "shards" / "raw"
    tuned = {"raw": {"mlb": {"late-linear": MLB_TUNED}}}
    run_comparison(
        _base(data, tmp_path), ["mlb", "joint"], ["late-linear"], [0], tmp_path, tuned=tuned,
        tuned_file="best.yaml", allow_untuned=True,
        method_params={"mlb": {"beta_max": 7.0}, "shared": {"weight_decay": 1e-6}}, log=lambda *_: None,
    )  # fmt: skip
    mlb_run = json.loads((tmp_path / "raw/mlb/late-linear/seed0/run.json").read_text())
    assert mlb_run["config"]["lr"] == 0.002
    assert mlb_run["config"]["weight_decay"] == 1e-6  # by hand wins over tuned
    assert mlb_run["method_params"] == {"alpha": 1.5, "beta_max": 7.0}
    assert mlb_run["config"]["tuning"] == {"tuned": True, "file": "best.yaml", "trials": 3, "trial": 1}
    joint_run = json.loads((tmp_path / "raw/joint/late-linear/seed0/run.json").read_text())
    assert joint_run["config"]["lr"] is None  # not tuned: the paper's default
    assert joint_run["config"]["weight_decay"] == 1e-6
    assert joint_run["config"]["tuning"] == {"tuned": False}

    # --aggregate-only reads the records back: the tables and the statistics say which method was tuned
    result = runner.invoke(app, ["compare", "--aggregate-only", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "compare.md").read_text()
    assert re.search(r"\| raw \| mlb \| late-linear \| 1 \|.*\| tuned \(3 trials\) \|", table), table
    assert re.search(r"\| raw \| joint \| late-linear \| 1 \|.*\| untuned \|", table), table
    assert "tuned on validation (from best.yaml)" in table
    rows = {r["group"]["method"]: r for r in json.loads((tmp_path / "compare.json").read_text())}
    assert rows["mlb"]["settings"]["trials"] == 3 and rows["joint"]["settings"] == {"tuned": False}
    assert "mlb,late-linear,1,tuned (3 trials),best.yaml," in (tmp_path / "compare.csv").read_text()
    assert "| tuned (3 trials) / untuned |" in (tmp_path / "compare_stats.md").read_text()

    # a rerun that asks for tuned settings keeps no run trained untuned: refused before any run
    tuned["raw"]["joint"] = {"late-linear": {"lr": 0.003, "method_params": {}, "trials": 3}}
    with pytest.raises(
        ValueError, match=r"joint/late-linear/seed0 was trained with untuned \(defaults\) settings"
    ):
        run_comparison(_base(data, tmp_path), ["mlb", "joint"], ["late-linear"], [0], tmp_path, tuned=tuned,
                       log=lambda *_: None)  # fmt: skip


def test_tuned_file_must_hold_every_method_with_one_budget_before_any_run(folds, tmp_path):
    data = folds / "p1" / "shards" / "raw"
    tuned = {"raw": {"mlb": {"late-linear": MLB_TUNED}}}
    with pytest.raises(ValueError, match=r"best.yaml has no tuned settings for raw/mlb/mid-mlp, raw/joint/late-"
                       r"linear, raw/joint/mid-mlp \(it has raw/mlb/late-linear\).*--methods mlb,joint --fusions "
                       r"mid-mlp,late-linear.*--allow-untuned"):  # fmt: skip
        run_comparison(_base(data, tmp_path), ["mlb", "joint"], ["late-linear", "mid-mlp"], [0], tmp_path,
                       tuned=tuned, tuned_file="best.yaml", log=lambda *_: None)  # fmt: skip
    tuned["raw"]["joint"] = {"late-linear": {"lr": 0.003, "method_params": {}, "trials": 5}}
    with pytest.raises(
        ValueError, match=r"different trial counts \(raw/mlb/late-linear: 3, raw/joint/late-linear: 5"
    ):
        run_comparison(_base(data, tmp_path), ["mlb", "joint"], ["late-linear"], [0], tmp_path, tuned=tuned,
                       log=lambda *_: None)  # fmt: skip
    assert not list(tmp_path.iterdir())  # nothing trained


def test_cli_tuned_file_lacking_a_method_is_refused_before_the_folder_is_made(folds, tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text(yaml.safe_dump({"raw": {"mlb": {"late-linear": MLB_TUNED}}}))
    out = tmp_path / "r"
    args = ["compare", "--data", str(folds / "p1"), "--out", str(out), "--features", "raw", "--seeds", "0",
            "--methods", "joint", "--size", "tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, [*args, "--tuned", str(best)])
    assert result.exit_code == 2 and "has no tuned settings for raw/joint/late-linear" in result.output
    assert "--allow-untuned" in result.output and not out.exists(), result.output
    result = runner.invoke(app, [*args, "--allow-untuned"])
    assert result.exit_code == 2 and "give --tuned too" in result.output and not out.exists(), result.output


def test_cli_folds_need_a_fold_placeholder_and_read_tuned_yaml(folds, tmp_path):
    result = runner.invoke(
        app, ["compare", "--data", str(folds / "p1"), "--out", str(tmp_path / "r"), "--folds", "1,2"]
    )
    assert result.exit_code == 2 and "{fold}" in result.output
    result = runner.invoke(
        app,
        ["compare", "--data", str(folds / "p{fold}"), "--out", str(tmp_path / "r"), "--folds", "1,3",
         "--features", "raw"],
    )  # fmt: skip
    assert result.exit_code == 2 and "p3" in result.output  # a missing fold fails before any run
    bad = tmp_path / "tuned.yaml"
    bad.write_text("- not a mapping\n")
    result = runner.invoke(
        app,
        ["compare", "--data", str(folds / "p{fold}"), "--out", str(tmp_path / "r"), "--folds", "1,2",
         "--features", "raw", "--tuned", str(bad)],
    )  # fmt: skip
    assert result.exit_code == 2 and "tuned.yaml" in result.output
    good = tmp_path / "best.yaml"
    good.write_text(yaml.safe_dump({"raw": {"joint": {"late-linear": {"lr": 0.003, "method_params": {}}}}}))
    params = tmp_path / "params.yaml"
    # a weight decay given in the file wins over the tuned one
    params.write_text(yaml.safe_dump({"protocol": {"train": {"weight_decay": 2e-5}}}))
    result = runner.invoke(
        app,
        ["compare", "--data", str(folds / "p{fold}"), "--out", str(tmp_path / "r"), "--folds", "1,2",
         "--methods", "joint", "--epochs", "1", "--size", "tiny", "--batch-size", "8", "--device", "cpu",
         "--features", "raw", "--tuned", str(good), "--params", str(params), "--section", "protocol.train"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r/raw/joint/late-linear/fold2/run.json").read_text())["config"]
    assert (config["lr"], config["weight_decay"]) == (0.003, 2e-5)


@pytest.mark.parametrize(
    ("protocols", "message"),
    [
        ({1: "vavl-1", 2: "vavl-1"}, "p2/shards/raw/meta.json says protocol 'vavl-1', fold 2 expects 'vavl-2'"),
        ({1: "vavl-1", 2: None}, "p2/shards/raw/meta.json records no split protocol"),
        ({1: "official", 2: "official"}, "p1/shards/raw/meta.json says protocol 'official': one split"),
        ({1: "vavl-1", 2: "speaker-random-2"}, "'protocol': 'speaker-random-{fold}'}, "),  # another family
    ],
)  # fmt: skip
def test_cli_folds_of_the_wrong_partition_are_refused_before_any_run(tmp_path, protocols, message):
    for fold, protocol in protocols.items():
        write_shard_folder(
            tmp_path / f"p{fold}" / "shards" / "raw", "raw", counts={"train": 6}, protocol=protocol
        )
    out = tmp_path / "r"
    result = runner.invoke(
        app,
        ["compare", "--data", str(tmp_path / "p{fold}"), "--out", str(out), "--folds", "1,2", "--features", "raw",
         "--methods", "joint", "--size", "tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
