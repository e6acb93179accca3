"""The trainer and `mlbpipe train`: CLI runs on tiny shards, exact resume, honest evaluation, NaN steps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.shards import first_key, npy_bytes, replace_member, write_shard_folder
from typer.testing import CliRunner

import mlb.train.trainer as train_module
from mlb.data import ShardError
from mlb.train import TrainConfig, TrainConfigError, TrainError, train
from mlb.train.checkpoint import load_checkpoint
from mlb.train.trainer import TrainState, duration, lr_at
from pipeline.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """A prepare output folder OUT with both shard paths (cached with small video features: speed)."""
    out = tmp_path_factory.mktemp("out")
    write_shard_folder(out / "shards" / "cached", "cached", video_dim=32)
    write_shard_folder(out / "shards" / "raw", "raw")
    return out


def _config(out_dir: Path, run: Path, features="raw", **kw) -> TrainConfig:
    base = {
        "data": out_dir / "shards" / features,
        "out": run,
        "features": features,
        "size": "tiny",
        "epochs": 3,
        "batch_size": 8,
        "seed": 3,
        "device": "cpu",  # exact resume is a CPU guarantee (tests/test_gpu.py covers CUDA)
        "dvclive": False,
    }
    return TrainConfig(**{**base, **kw})


@pytest.mark.integration
@pytest.mark.parametrize("features", ["cached", "raw"])
def test_cli_train_few_steps_writes_metrics(out_dir, tmp_path, features):
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--features",
            features,
            "--data",
            str(out_dir),
            "--method",
            "mlb",
            "--fusion",
            "late-linear",
            "--epochs",
            "2",
            "--max-steps",
            "4",
            "--out",
            str(run),
            "--size",
            "tiny",
            "--batch-size",
            "8",
            "--seed",
            "1",
            "--param",
            "mlb.alpha=1.0",
            "--param",
            "mlb.beta_max=4",
            "--device",
            "cpu",
            "--param",
            "mlb.eps=0.001",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method_params"] == {"alpha": 1.0, "beta_max": 4.0, "eps": 0.001}
    assert metrics["training"]["steps"] == 4  # 3 batches per epoch: epoch 0 whole, epoch 1 one batch
    for split, n in (("validation", 12), ("test", 12)):
        m = metrics[split]
        assert m["num_samples"] == n
        assert set(m["unimodal"]) == {"audio", "video"}
        assert 0 <= m["fused"]["accuracy"] <= 1 and 0 <= m["fused"]["ece"] <= 1
        assert sum(row["count"] for row in m["agreement"]) == n
        assert np.asarray(m["fused"]["confusion_matrix"]).sum() == n
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert {"k_audio", "r_audio", "s_audio", "k_video", "loss_fused"} <= set(steps[0])
    summary = json.loads((run / "dvclive" / "metrics.json").read_text())
    assert "val" in summary and "test" in summary
    assert (run / "dvclive" / "plots" / "metrics" / "val" / "acc.tsv").exists()


@pytest.mark.integration
def test_cli_refuses_shards_of_the_wrong_kind(tmp_path):
    out = tmp_path / "out"
    write_shard_folder(
        out / "shards" / "raw", "cached", counts={"train": 4, "validation": 2, "test": 2}, video_dim=8
    )
    result = runner.invoke(
        app,
        [
            "train",
            "--features",
            "raw",
            "--data",
            str(out),
            "--out",
            str(tmp_path / "r"),
            "--size",
            "tiny",
            "--no-dvclive",
        ],
    )
    assert result.exit_code == 2
    assert "'input_path' is 'cached' but the trainer expects 'raw'" in result.output
    write_shard_folder(
        out / "shards" / "cached", "cached", counts={"train": 4, "validation": 2, "test": 2}, video_dim=8
    )
    result = runner.invoke(
        app,
        [
            "train",
            "--features",
            "cached",
            "--data",
            str(out),
            "--out",
            str(tmp_path / "r"),
            "--expect-meta",
            "extractors.audio.layer=9",
            "--no-dvclive",
        ],
    )
    assert result.exit_code == 2
    assert "'extractors.audio.layer' is 12 but the trainer expects 9" in result.output
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before any training
    result = runner.invoke(
        app, ["train", "--features", "cached", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.integration
def test_resume_after_interruption_gives_the_same_weights(out_dir, tmp_path):
    """Interrupt after 5 steps (mid epoch 1; last.pt is from step 4), resume, compare with a straight run."""
    # Mid-MLP has dropout layers: the torch RNG state must be restored too
    kw = {
        "checkpoint_every": 2,
        "dropout": 0.2,
        "method": "mlb",
        "fusion": "mid-mlp",
        "epochs": 3,
        "dvclive": True,
    }
    straight = train(_config(out_dir, tmp_path / "straight", **kw))

    class Interrupt(Exception):
        pass

    def interrupt_at_5(state):
        if state.step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_config(out_dir, tmp_path / "resumed", **kw), on_step=interrupt_at_5)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["state"]["step"] == 4
    with pytest.raises(TrainConfigError, match="already holds a checkpoint"):
        train(_config(out_dir, tmp_path / "resumed", **kw))
    with pytest.raises(TrainConfigError, match="lr=0.5 differs"):
        train(_config(out_dir, tmp_path / "resumed", resume=True, lr=0.5, **kw))
    performed = []  # a restart from step 0 ends with the same weights on the CPU: check where it started
    resumed = train(
        _config(out_dir, tmp_path / "resumed", resume=True, **kw), on_step=lambda s: performed.append(s.step)
    )
    assert performed == [5, 6, 7, 8, 9]
    start = {"epoch": 1, "batch_in_epoch": 1, "step": 4}  # 3 batches per epoch
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["start"] == start
    fresh = {"epoch": 0, "batch_in_epoch": 0, "step": 0}
    assert json.loads((tmp_path / "straight" / "run.json").read_text())["start"] == fresh

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["state"] == b["state"] and a["state"]["step"] == 9
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert resumed["test"] == straight["test"] and resumed["validation"] == straight["validation"]
    for log in (
        "steps.jsonl",
        "dvclive/metrics.json",
        "dvclive/plots/metrics/val/acc.tsv",
        "dvclive/plots/metrics/train/k_audio_mean.tsv",
    ):
        assert (tmp_path / "straight" / log).read_text() == (tmp_path / "resumed" / log).read_text(), log


@pytest.mark.integration
def test_resume_at_epoch_boundary_with_loader_workers(out_dir, tmp_path):
    kw = {"features": "cached", "num_workers": 2, "epochs": 2, "batch_size": 6, "method": "multi-loss"}
    straight = train(_config(out_dir, tmp_path / "straight", **kw))

    def stop_after_epoch_0(epoch, _value):  # called after the epoch end's last.pt
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(out_dir, tmp_path / "resumed", **kw), on_epoch=stop_after_epoch_0)
    # batches per epoch: each loader worker batches its own shards, so more than 24 clips / 6
    n = json.loads((tmp_path / "straight" / "run.json").read_text())["steps_per_epoch"]
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["state"]
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 0, n)
    performed = []
    resumed = train(
        _config(out_dir, tmp_path / "resumed", resume=True, **kw), on_step=lambda s: performed.append(s.step)
    )
    assert performed == list(range(n + 1, 2 * n + 1))  # epoch 1 only, not a restart from step 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test"] == straight["test"]


@pytest.mark.integration
def test_selection_on_validation_and_test_evaluated_once(out_dir, tmp_path, monkeypatch):
    calls = []
    real = train_module.evaluate_split

    def spy(model, loader, *args, **kw):
        metrics, loss = real(model, loader, *args, **kw)
        calls.append((loader.split, metrics["fused"]["accuracy"]))
        return metrics, loss

    monkeypatch.setattr(train_module, "evaluate_split", spy)
    result = train(_config(out_dir, tmp_path / "run", epochs=4, patience=10, method="joint"))
    splits = [s for s, _ in calls]
    assert splits.count("test") == 1 and splits[-1] == "test"  # once, at the very end
    per_epoch = [acc for s, acc in calls[:-2]]  # validation at each epoch end, then the final val + test
    assert splits[:-1] == ["validation"] * 5
    best = int(np.argmax(per_epoch))  # the first epoch with the best validation accuracy
    assert result["selected"]["epoch"] == best
    assert result["validation"]["fused"]["accuracy"] == per_epoch[best]


@pytest.mark.integration
def test_early_stopping(out_dir, tmp_path):
    result = train(_config(out_dir, tmp_path / "run", epochs=50, patience=2, lr=1e-9))  # lr ~0: barely learns
    # stops after `patience` epochs without a better validation accuracy than the selected epoch's
    assert result["training"]["stopped_early"]
    assert result["training"]["epochs_run"] == result["selected"]["epoch"] + 1 + 2 < 50


def _script_validation_accuracy(monkeypatch, accuracies: list[float]) -> list[dict]:
    """Set the fused accuracy of the first validation passes (one per epoch end) to `accuracies`, through a
    spy on `mlb.train.trainer.evaluate_split` (the tiny corpus gives no ties on demand); returns the model
    weights each of those passes evaluated."""
    real = train_module.evaluate_split
    seen = []

    def scripted(model, loader, *args, **kw):
        metrics, loss = real(model, loader, *args, **kw)
        if loader.split == "validation" and len(seen) < len(accuracies):
            metrics["fused"]["accuracy"] = accuracies[len(seen)]
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return metrics, loss

    monkeypatch.setattr(train_module, "evaluate_split", scripted)
    return seen


@pytest.mark.integration
def test_a_tie_selects_the_first_epoch_with_the_best_validation_accuracy(out_dir, tmp_path, monkeypatch):
    weights = _script_validation_accuracy(monkeypatch, [0.25, 0.5, 0.25, 0.5])
    result = train(
        _config(out_dir, tmp_path / "run", features="cached", epochs=4, patience=10, method="joint")
    )
    assert (result["selected"]["epoch"], result["selected"]["val_accuracy"]) == (1, 0.5)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and all(torch.equal(best["model"][k], weights[1][k]) for k in weights[1])


@pytest.mark.integration
def test_early_stopping_counts_a_tie_as_no_improvement(out_dir, tmp_path, monkeypatch):
    _script_validation_accuracy(monkeypatch, [0.25, 0.5, 0.5, 0.5, 0.75, 0.75])
    result = train(
        _config(out_dir, tmp_path / "run", features="cached", epochs=6, patience=2, method="joint")
    )
    # epochs 2 and 3 only tie epoch 1: patience is spent before epoch 4's better value
    assert result["training"]["stopped_early"] and result["training"]["epochs_run"] == 4
    assert result["selected"]["epoch"] == 1


def _nan_shards(tmp_path: Path, how_many: int) -> Path:
    folder = write_shard_folder(
        tmp_path / "shards" / "cached",
        "cached",
        video_dim=8,
        counts={"train": 16, "validation": 4, "test": 4},
    )
    # stats.json is already written from clean data: only the samples carry NaN
    for shard in sorted(folder.glob("train-*.tar"))[:how_many]:
        key = first_key(shard)
        replace_member(shard, f"{key}.w2v2.npy", npy_bytes(np.full((5, 16), np.nan, np.float16)))
    return folder


@pytest.mark.integration
def test_the_loader_refuses_nan_in_a_shard_naming_the_shard_and_the_clip(tmp_path):
    folder = _nan_shards(tmp_path, how_many=1)
    config = TrainConfig(data=folder, out=tmp_path / "run", features="cached", size="tiny", epochs=1, batch_size=16,
                         dvclive=False, method="multi-loss")  # fmt: skip
    with pytest.raises(ShardError, match=r"clip 1001_\w+ in .*train-000000.tar: w2v2.npy holds NaN or Inf"):
        train(config)
    assert not (tmp_path / "run" / "metrics.json").exists()


def _poison_the_loss(monkeypatch, poisoned: set[str]) -> None:
    """The loss of a batch holding one of `poisoned` clips is NaN (a numerical blow-up, from clean shards)."""
    from mlb.balancing.multi_loss import MultiLoss

    real = MultiLoss.loss

    def loss(self, model, batch, out):
        total, logs = real(self, model, batch, out)
        return (total * float("nan") if poisoned & set(batch["id"]) else total), logs

    monkeypatch.setattr(MultiLoss, "loss", loss)


def _clean_shards(tmp_path: Path) -> Path:
    return write_shard_folder(tmp_path / "shards" / "cached", "cached", video_dim=8,
                              counts={"train": 16, "validation": 4, "test": 4})  # fmt: skip


@pytest.mark.integration
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    folder = _clean_shards(tmp_path)
    _poison_the_loss(monkeypatch, {first_key(min(folder.glob("train-*.tar")))})
    result = train(
        TrainConfig(
            data=folder,
            out=tmp_path / "run",
            features="cached",
            size="tiny",
            epochs=2,
            batch_size=16,
            dvclive=False,
            method="multi-loss",
            max_skipped_fraction=1.0,  # allow it: this test looks at the skipping itself
        )
    )
    # one batch per epoch = all 16 clips, one of them poisoned: every step is skipped ...
    assert result["training"]["skipped_nonfinite_steps"] == 2
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.integration
def test_a_run_that_skipped_most_of_its_steps_fails_with_the_count(tmp_path, monkeypatch):
    folder = _clean_shards(tmp_path)
    _poison_the_loss(monkeypatch, {first_key(min(folder.glob("train-*.tar")))})
    config = TrainConfig(data=folder, out=tmp_path / "run", features="cached", size="tiny", epochs=4, batch_size=16,
                         dvclive=False, method="multi-loss")  # fmt: skip
    with pytest.raises(TrainError, match=r"4 of 4 steps were skipped .* max_skipped_fraction=0.5"):
        train(config)
    assert not (tmp_path / "run" / "metrics.json").exists()  # no result that a sweep would tabulate


@pytest.mark.integration
def test_run_stops_when_nonfinite_steps_keep_coming(tmp_path, monkeypatch):
    folder = _clean_shards(tmp_path)
    _poison_the_loss(monkeypatch, {first_key(shard) for shard in folder.glob("train-*.tar")})
    config = TrainConfig(
        data=folder,
        out=tmp_path / "run",
        features="cached",
        size="tiny",
        epochs=5,
        batch_size=8,
        dvclive=False,
        max_bad_steps=3,
        method="multi-loss",
    )
    with pytest.raises(TrainError, match="3 steps in a row had a non-finite loss"):
        train(config)


@pytest.mark.integration
def test_config_errors_name_key_and_value(out_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="epochs=0"):
        train(_config(out_dir, tmp_path / "a", epochs=0))
    with pytest.raises(TrainConfigError, match="precision='fp8'"):
        train(_config(out_dir, tmp_path / "a", precision="fp8"))
    with pytest.raises(TrainConfigError, match="features='video'"):
        train(_config(out_dir, tmp_path / "a", features="video", data=out_dir))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        train(_config(out_dir, tmp_path / "a", method="nope"))


@pytest.mark.unit
def test_lr_schedule_constant_warmup_then_cosine_restarts():
    kw = {"warmup_steps": 3, "cycle_steps": 4, "cycle_mult": 2, "min_ratio": 0.0}
    factors = [lr_at(s, **kw) for s in range(3 + 4 + 8 + 1)]
    assert factors[:3] == [1.0, 1.0, 1.0]
    assert factors[3:7] == pytest.approx(
        [1.0, 0.5 + 0.5 * np.cos(np.pi / 4), 0.5, 0.5 - 0.5 * np.cos(np.pi / 4)]
    )
    assert factors[7] == 1.0 and factors[11] == pytest.approx(0.5) and factors[15] == 1.0  # cycles of 4, 8


@pytest.mark.integration
def test_the_banner_says_what_the_run_trains_with_every_setting_resolved(tmp_path, capsys):
    """Once per run, before the first epoch, with the values run.json records; on resume it says from where."""
    data = write_shard_folder(tmp_path / "shards" / "raw", "raw")
    meta = json.loads((data / "meta.json").read_text())
    meta["config"]["protocol"] = "vavl-1"
    meta["method_defaults"] = {"mlb": {"raw": {"late-linear": {"alpha": 2.0, "beta_max": 3.0}}}}
    (data / "meta.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    kw = {"epochs": 2, "method": "mlb", "method_params": {"beta_max": 4.0}}
    train(_config(tmp_path, run, max_steps=4, **kw))
    out = capsys.readouterr().out
    banner, _, _ = out.partition("\nepoch 0:")
    recorded = json.loads((run / "run.json").read_text())
    assert banner.splitlines()[0] == "mlbpipe train: mlb on the raw path, late-linear fusion"
    rows, label = {}, ""
    for line in banner.splitlines()[1:]:  # "  label      value", a long value wrapped under it
        if line[:13].strip():
            label = line[:13].strip()
            rows[label] = line[13:]
        else:
            rows[label] += " " + line[13:]
    assert (
        rows
        == {
            "method": "mlb: alpha=2.0 beta_max=4.0 eps=1e-06 ownership=authors",  # the corpus's alpha, the user's beta_max
            "model": f"tiny, {recorded['num_parameters']:,} trainable parameters",
            "data": f"{data} (cremad, protocol vavl-1)",
            "clips": "train 24, validation 12, test 12",
            "budget": "at most 2 epochs or 4 steps, patience 10; 3 steps per epoch",
            "batch": "8 = 8 per process x 1 process",
            "optimiser": "Adam, lr 0.001, weight decay 0.0001",  # the paper's for raw: lr is unset
            "device": "cpu, fp32",
            "start": "from scratch",
            "out": str(run),
        }
    )
    assert all(len(line) <= 80 for line in banner.splitlines() if str(tmp_path) not in line)
    assert recorded["method_settings"] == {
        "alpha": 2.0,
        "beta_max": 4.0,
        "eps": 1e-06,
        "ownership": "authors",
    }
    assert (recorded["lr"], recorded["weight_decay"], recorded["batch_size"]) == (1e-3, 1e-4, 8)
    assert recorded["clips"] == {"train": 24, "validation": 12, "test": 12}

    train(_config(tmp_path, run, resume=True, **kw))  # on from step 4, mid epoch 1, to the end of epoch 1
    out = capsys.readouterr().out
    assert out.count("mlbpipe train: mlb on the raw path") == 1
    assert "  start      resumed at epoch 1, batch 1, step 4 (checkpoints/last.pt)\n" in out
    assert "  budget     at most 2 epochs, patience 10; 3 steps per epoch\n" in out


@pytest.mark.integration
def test_each_epoch_says_its_time_and_at_most_how_long_the_rest_takes(out_dir, tmp_path, capsys):
    """The budget ends at `max_steps` when that comes before the epochs: the last epoch has no time left."""
    run = tmp_path / "run"
    train(_config(out_dir, run, epochs=4, max_steps=7))  # 3 steps per epoch: epoch 2 takes one
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    time = r"(\d+\.\ds|\d+m\d\ds|\d+h\d\dm)"
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1", "epoch 2"]
    for line in lines[:2]:
        assert re.fullmatch(rf"epoch \d: step \d, val acc .*; {time}, at most {time} left", line), line
    assert re.fullmatch(rf"epoch 2: step 7, val acc .*; {time}", lines[2]), lines[2]
    records = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(isinstance(r["seconds"], float) and r["seconds"] > 0 for r in records)


@pytest.mark.unit
def test_the_time_left_counts_the_epochs_left_or_the_steps_left_whichever_ends_sooner():
    def left(epoch, step, epochs=10, max_steps=None, stopped_early=False):
        run = SimpleNamespace(
            config=SimpleNamespace(epochs=epochs, max_steps=max_steps),
            state=TrainState(epoch=epoch, step=step, stopped_early=stopped_early),
            info={"steps_per_epoch": 5},
        )
        return train_module._steps_left(run)

    assert left(0, 5) == 45 and left(9, 50) == 0  # after epoch 0 of 10; after the last
    assert left(0, 5, max_steps=12) == 7 and left(2, 12, max_steps=12) == 0
    assert left(3, 20, stopped_early=True) == 0
    assert [duration(s) for s in (0.04, 42.25, 59.96, 185, 7500)] == [
        "0.0s",
        "42.2s",
        "1m00s",
        "3m05s",
        "2h05m",
    ]


@pytest.mark.integration
def test_shards_of_random_init_extractors_warn_once_per_run(out_dir, tmp_path, capsys):
    train(_config(out_dir, tmp_path / "cached", features="cached", epochs=2))  # tests' cached shards: random
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1
    said = " ".join(err.split())  # wrapped for an 80-column terminal
    assert "the shards' audio and video extractors have random weights (meta.json: random_init)" in said
    assert all(len(line) <= 80 for line in err.splitlines())
    train(_config(out_dir, tmp_path / "raw", epochs=2))  # raw shards have no extractors
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.integration
def test_in_memory_gives_the_same_batches_and_weights_as_streaming(out_dir, tmp_path):
    """Decoding each split once and shuffling the kept examples is a speed option only."""
    kw = {"method": "mlb", "epochs": 2, "features": "cached"}
    streaming = train(_config(out_dir, tmp_path / "streaming", **kw))
    in_memory = train(_config(out_dir, tmp_path / "in_memory", in_memory=True, **kw))
    a = load_checkpoint(tmp_path / "streaming" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "in_memory" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert in_memory["test"] == streaming["test"]
    with pytest.raises(TrainConfigError, match="in_memory"):
        _config(out_dir, tmp_path / "x", in_memory=True, num_workers=1).validate()
