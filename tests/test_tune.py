"""`mlbpipe tune`: equal-budget Optuna studies on validation accuracy, resumable after a SIGKILL, test split
never read."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.shards import write_shard_folder
from optuna.trial import TrialState
from typer.testing import CliRunner

import mlb.train.trainer as train_module
from mlb.balancing import METHODS
from mlb.common.search_space import FloatRange, IntRange
from mlb.experiment.tune import (
    BUDGET_NAME,
    DB_NAME,
    TuneConfig,
    TuneError,
    run_tune,
    search_space,
    study_name,
)
from mlb.train.config import TrainConfig, TrainError
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune_data")
    write_shard_folder(out / "shards" / "raw", "raw")
    return out


def _base(data: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        data=data / "shards" / "raw",
        out=out,
        features="raw",
        size="tiny",
        epochs=2,
        batch_size=8,
        device="cpu",
        dvclive=False,
    )


def _trials(out: Path, method: str) -> list:
    study = optuna.load_study(
        study_name=study_name("raw", method, "late-linear"), storage=f"sqlite:///{out / DB_NAME}"
    )
    return study.get_trials(deepcopy=False)


@pytest.mark.unit
def test_every_search_space_names_init_keywords_inside_valid_ranges():
    for name, cls in METHODS.items():
        keywords = inspect.signature(cls.__init__).parameters
        for key, dim in cls.search_space.items():
            assert key in keywords, f"{name}: {key} is not an __init__ keyword"
            assert isinstance(dim, FloatRange | IntRange) and dim.low < dim.high
            assert not (isinstance(dim, FloatRange) and dim.log and dim.low <= 0)
    space = search_space("mlb", "raw", pins={"alpha": 1.0})
    assert set(space) == {"lr", "weight_decay", "beta_max"}  # the pinned key leaves the search
    assert space["lr"] == FloatRange(1e-4, 1e-2, log=True)  # a decade either way of the paper's 1e-3


@pytest.mark.integration
def test_two_methods_four_trials_write_an_sqlite_study_and_never_read_test(data, tmp_path, monkeypatch):
    splits_read = []
    real_init = train_module.ShardLoader.__init__

    def spy(self, folder, split, *args, **kw):
        splits_read.append(split)
        real_init(self, folder, split, *args, **kw)

    monkeypatch.setattr(train_module.ShardLoader, "__init__", spy)
    out = tmp_path / "tune"
    tree = run_tune(
        _base(data, out), ["joint", "mlb"], ["late-linear"], out, TuneConfig(trials=4, startup_trials=2)
    )
    assert (out / DB_NAME).read_bytes()[:16] == b"SQLite format 3\x00"  # a real database
    for method in ("joint", "mlb"):
        trials = _trials(out, method)
        assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        best = tree["raw"][method]["late-linear"]
        assert best["trials"] == 4 and 0 <= best["val_accuracy"] <= 1
        assert {"lr", "weight_decay"} <= set(best)
    assert set(tree["raw"]["mlb"]["late-linear"]["method_params"]) == {"alpha", "beta_max"}
    assert yaml.safe_load((out / "best_params.yaml").read_text()) == tree
    assert "test" not in splits_read and splits_read.count("validation") == 8  # one per trial
    assert not list(out.rglob("test_predictions.json")) and not list(out.rglob("checkpoints"))


@pytest.mark.integration
def test_one_budget_per_tune_folder_refused_before_any_trial(data, tmp_path):
    out = tmp_path / "tune"
    run_tune(_base(data, out), ["joint"], ["late-linear"], out, TuneConfig(trials=1, prune=False))
    best = (out / "best_params.yaml").read_bytes()
    assert json.loads((out / BUDGET_NAME).read_text())["trials"] == 1
    # another method with another budget into the same folder: refused, naming both and the fix
    with pytest.raises(TuneError, match=r"trials=1.*trials 1 -> 2.*--trials 1"):
        run_tune(_base(data, out), ["mlb"], ["late-linear"], out, TuneConfig(trials=2, prune=False))
    longer = dataclasses.replace(_base(data, out), epochs=3)
    with pytest.raises(TuneError, match="epochs 2 -> 3"):
        run_tune(longer, ["mlb"], ["late-linear"], out, TuneConfig(trials=1, prune=False))
    storage = f"sqlite:///{out / DB_NAME}"
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["raw/joint/late-linear"]
    assert (out / "best_params.yaml").read_bytes() == best
    # a folder tuned before budget.json existed (its best_params.yaml gone too): each study keeps its count
    (out / BUDGET_NAME).unlink()
    (out / "best_params.yaml").unlink()
    with pytest.raises(TuneError, match="created with trials=1, not 2.*--trials 1,"):
        run_tune(_base(data, out), ["joint"], ["late-linear"], out, TuneConfig(trials=2, prune=False))
    with pytest.raises(TuneError, match="unknown method 'nope'"):
        run_tune(_base(data, out), ["nope"], ["late-linear"], out, TuneConfig(trials=1))


def _fake_train(config, on_epoch=None, test=True, command=None):
    """A trial without training: MLB's fail (as at a non-finite loss), the others score 0.5."""
    if config.method == "mlb":
        raise TrainError("non-finite loss")
    return {"selected": {"val_accuracy": 0.5}}


@pytest.mark.unit
def test_a_failed_tune_writes_no_best_params_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "train", _fake_train)
    out = tmp_path / "tune"
    base = _base(tmp_path, out)
    with pytest.raises(TuneError, match="'raw/mlb/late-linear': no trial completed"):
        run_tune(base, ["joint", "mlb"], ["late-linear"], out, TuneConfig(trials=2))
    assert not (out / "best_params.yaml").exists()  # joint finished, but the tune did not
    run_tune(base, ["joint"], ["late-linear"], out, TuneConfig(trials=2))
    best = (out / "best_params.yaml").read_bytes()
    with pytest.raises(TuneError, match="no trial completed"):
        run_tune(base, ["multi-loss", "mlb"], ["late-linear"], out, TuneConfig(trials=2))
    assert (out / "best_params.yaml").read_bytes() == best  # not half of the new tune in it
    assert sorted(p.name for p in out.iterdir()) == ["best_params.yaml", BUDGET_NAME, DB_NAME]


@pytest.mark.unit
def test_one_best_params_file_holds_one_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "train", _fake_train)
    shared = tmp_path / "best.yaml"
    run_tune(_base(tmp_path, tmp_path / "a"), ["joint"], ["late-linear"], tmp_path / "a", TuneConfig(trials=1),
             best_path=shared)  # fmt: skip
    with pytest.raises(TuneError, match=r"best.yaml holds raw/joint/late-linear tuned with trials=1, not 2"):
        run_tune(_base(tmp_path, tmp_path / "b"), ["multi-loss"], ["late-linear"], tmp_path / "b",
                 TuneConfig(trials=2), best_path=shared)  # fmt: skip
    assert not (tmp_path / "b").exists()


@pytest.mark.integration
def test_cli_tune_refuses_another_budget_before_it_takes_the_folder(data, tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text(yaml.safe_dump({"raw": {"joint": {"late-linear": {"lr": 0.001, "trials": 1}}}}))
    out = tmp_path / "tune"
    result = CliRunner().invoke(app, ["tune", "--data", str(data), "--out", str(out), "--features", "raw",
                                      "--methods", "mlb", "--trials", "2", "--best-params", str(best)])  # fmt: skip
    assert result.exit_code == 2 and "tuned with trials=1, not 2" in result.output, result.output
    assert not out.exists()


@pytest.mark.e2e
def test_sigkill_mid_trial_then_rerun_finishes_the_budget_without_counting_a_trial_twice(data, tmp_path):
    out = tmp_path / "tune"
    cmd = [
        sys.executable, "-m", "pipeline.cli", "tune", "--data", str(data), "--out", str(out), "--features", "raw",
        "--methods", "mlb", "--trials", "4", "--epochs", "3", "--size", "tiny", "--batch-size", "8",
        "--device", "cpu", "--no-prune",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    trial_dir = out / "raw" / "mlb" / "late-linear" / "trial001"
    deadline = time.time() + 120
    # kill inside trial 1, once it has trained an epoch (its last.pt exists)
    while not (trial_dir / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _trials(out, "mlb")
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    killed_params = killed[1].params

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "trial 1 was interrupted" in rerun.stdout
    trials = _trials(out, "mlb")
    states = [t.state for t in trials]
    assert states.count(TrialState.FAIL) == 1 and trials[1].user_attrs["killed"]
    assert states.count(TrialState.COMPLETE) == 4 and len(trials) == 5  # the budget, once each
    retry = trials[2]
    assert retry.params == killed_params and retry.user_attrs["retry_of"] == 1
    assert not trial_dir.exists()  # the interrupted trial's half-written folder is gone
    best = yaml.safe_load((out / "best_params.yaml").read_text())["raw"]["mlb"]["late-linear"]
    assert best["trials"] == 4
