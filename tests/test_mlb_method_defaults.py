"""Per-corpus method defaults from the shards' meta.json: the lookup, its precedence in the trainer, bad trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.shards import write_shard_folder

import mlb.train.trainer
from mlb.balancing import MLB
from mlb.data import ShardMetaError
from mlb.method_defaults import method_defaults
from mlb.train import TrainConfig, train

DEFAULTS = {
    "mlb": {
        "raw": {"late-linear": {"alpha": 0.25}, "*": {"alpha": 5.0, "beta_max": 2.0}},
        "cached": {"*": {"alpha": 3.0}},
    },
    "ogm-ge": {"raw": {"late-linear": {"alpha": 0.8}}},
}


@pytest.mark.unit
def test_exact_fusion_entry_wins_over_the_any_fusion_entry_key_by_key():
    meta = {"method_defaults": DEFAULTS}
    assert method_defaults(meta, "mlb", "raw", "late-linear") == {"alpha": 0.25, "beta_max": 2.0}
    assert method_defaults(meta, "mlb", "raw", "mid-mlp") == {"alpha": 5.0, "beta_max": 2.0}
    assert method_defaults(meta, "mlb", "cached", "tf") == {"alpha": 3.0}
    assert method_defaults(meta, "ogm-ge", "raw", "late-linear") == {"alpha": 0.8}


@pytest.mark.unit
def test_no_entry_gives_nothing_so_the_class_defaults_apply():
    assert method_defaults({}, "mlb", "raw", "late-linear") == {}  # shards older than the key
    meta = {"method_defaults": DEFAULTS}
    assert method_defaults(meta, "joint", "raw", "late-linear") == {}
    assert method_defaults(meta, "ogm-ge", "cached", "late-linear") == {}
    assert method_defaults(meta, "ogm-ge", "raw", "mid-mlp") == {}


@pytest.mark.unit
def test_the_result_is_a_copy():
    meta = {"method_defaults": json.loads(json.dumps(DEFAULTS))}
    method_defaults(meta, "mlb", "raw", "late-linear")["alpha"] = 99.0
    assert meta["method_defaults"] == DEFAULTS


@pytest.mark.unit
@pytest.mark.parametrize(
    ("tree", "key", "value"),
    [
        (None, "method_defaults", "None"),
        ([1], "method_defaults", "[1]"),
        ({"mlb": 0.5}, "method_defaults.mlb", "0.5"),
        ({"mlb": {"raw": ["alpha"]}}, "method_defaults.mlb.raw", "['alpha']"),
        ({"mlb": {"raw": {"late-linear": 0.5}}}, "method_defaults.mlb.raw.late-linear", "0.5"),
        ({"mlb": {"rwa": {"*": {}}}}, "method_defaults.mlb.rwa", "{'*': {}}"),
        ({"joint": {"raw": {"*": "x"}}}, "method_defaults.joint.raw.*", "'x'"),  # not the entry asked for
    ],
)
def test_a_malformed_tree_is_a_meta_error_naming_the_key_and_the_value(tree, key, value):
    with pytest.raises(ShardMetaError) as err:
        method_defaults({"method_defaults": tree}, "mlb", "raw", "late-linear")
    message = str(err.value)
    assert "meta.json" in message and repr(key) in message and value in message, message


# --- in the trainer ------------------------------------------------------------------------------------


def _shards(folder: Path, defaults=None) -> Path:
    write_shard_folder(folder, "raw")
    if defaults is not None:  # as the pipeline writes it from the corpus's plug-in
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "method_defaults": defaults}, indent=1))
    return folder


def _train(data: Path, run: Path, monkeypatch, **kw) -> tuple[dict, MLB]:
    """One training step of MLB on tiny raw shards; returns metrics.json and the balancer the run built."""
    built = []
    real = mlb.train.trainer.build_balancer

    def spy(name, **params):
        built.append(real(name, **params))
        return built[-1]

    monkeypatch.setattr(mlb.train.trainer, "build_balancer", spy)  # the name the trainer calls
    base = {"features": "raw", "method": "mlb", "size": "tiny", "epochs": 1, "max_steps": 1, "batch_size": 8}
    metrics = train(TrainConfig(data=data, out=run, dvclive=False, device="cpu", **base, **kw))
    assert json.loads((run / "run.json").read_text())["method_params"] == metrics["method_params"]
    return metrics, built[0]


@pytest.mark.integration
def test_trainer_user_params_over_the_exact_fusion_entry_over_any_fusion(tmp_path, monkeypatch):
    data = _shards(tmp_path / "shards", DEFAULTS)
    metrics, balancer = _train(data, tmp_path / "run", monkeypatch, method_params={"eps": 1e-3})
    assert metrics["method_params"] == {"alpha": 0.25, "beta_max": 2.0, "eps": 1e-3}
    assert (balancer.alpha, balancer.beta_max, balancer.eps) == (0.25, 2.0, 1e-3)
    metrics, balancer = _train(data, tmp_path / "run2", monkeypatch, method_params={"alpha": 1.5})
    assert metrics["method_params"] == {"alpha": 1.5, "beta_max": 2.0}
    assert (balancer.alpha, balancer.beta_max) == (1.5, 2.0)


@pytest.mark.integration
def test_trainer_without_method_defaults_uses_the_class_defaults(tmp_path, monkeypatch):
    metrics, balancer = _train(_shards(tmp_path / "shards"), tmp_path / "run", monkeypatch)
    assert metrics["method_params"] == {}
    assert (balancer.alpha, balancer.beta_max, balancer.eps) == (MLB().alpha, MLB().beta_max, MLB().eps)


@pytest.mark.integration
def test_trainer_refuses_a_malformed_tree_before_training(tmp_path, monkeypatch):
    data = _shards(tmp_path / "shards", {"mlb": {"raw": {"late-linear": [0.5, 10]}}})
    with pytest.raises(ShardMetaError) as err:
        _train(data, tmp_path / "run", monkeypatch)
    message = str(err.value)
    assert f"{data}/meta.json" in message and "'method_defaults.mlb.raw.late-linear'" in message
    assert "[0.5, 10]" in message
    assert not (tmp_path / "run" / "checkpoints").exists()
