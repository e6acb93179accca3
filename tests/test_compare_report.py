"""`mlbpipe compare` and `mlbpipe report`: the same budget for every method, mean ± std, readable figures."""

from __future__ import annotations

import json

import pytest
from shard_factory import write_shard_folder
from typer.testing import CliRunner

from mlb.compare import aggregate, flatten, run_comparison, to_markdown
from mlb.train import TrainConfig
from pipeline.cli import app

runner = CliRunner()


def _fake_run(method, seed, acc, fusion="late-linear"):
    head = {"accuracy": acc, "macro_f1": acc - 0.1, "ece": 0.05}
    return {
        "method": method,
        "fusion": fusion,
        "features": "raw",
        "seed": seed,
        "validation": {"fused": head, "unimodal": {}},
        "test": {"fused": head, "unimodal": {"audio": {"accuracy": 0.5}, "video": {"accuracy": 0.25}}},
    }


def test_aggregate_mean_and_sample_std():
    runs = [_fake_run("mlb", 0, 0.6), _fake_run("mlb", 1, 0.8), _fake_run("joint", 0, 0.5)]
    by_method = {s.group["method"]: s for s in aggregate(runs)}
    assert by_method["mlb"].runs == 2
    assert by_method["mlb"].mean["test.fused.accuracy"] == pytest.approx(0.7)
    assert by_method["mlb"].std["test.fused.accuracy"] == pytest.approx(0.1414213562)  # ddof = 1
    assert by_method["joint"].std["test.fused.accuracy"] == 0.0
    table = to_markdown(aggregate(runs))
    assert "| raw | mlb | late-linear | 2 | 70.0 ± 14.1 |" in table


def test_tables_list_joint_multi_loss_and_mlb_first_then_the_baselines_by_name():
    runs = [_fake_run(m, 0, 0.5) for m in ("pmr", "mlb", "agm", "joint", "multi-loss")]
    runs.append(_fake_run("joint", 0, 0.5, fusion="mid-mlp"))
    order = [(s.group["method"], s.group["fusion"]) for s in aggregate(runs)]
    assert order == [
        ("joint", "late-linear"),
        ("joint", "mid-mlp"),
        ("multi-loss", "late-linear"),
        ("mlb", "late-linear"),
        ("agm", "late-linear"),
        ("pmr", "late-linear"),
    ]


def test_flatten_keeps_numbers_only():
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": "x", "e": True}, "f": 2.5}) == {"a.b": 1.0, "f": 2.5}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    write_shard_folder(out / "shards" / "raw", "raw")
    runs = out / "runs"
    base = TrainConfig(
        data=out / "shards" / "raw",
        out=runs,
        features="raw",
        size="tiny",
        epochs=1,
        batch_size=8,
        dvclive=False,
        device="cpu",
    )
    done, skipped = run_comparison(
        base, ["joint", "mlb", "ogm-ge"], ["late-linear", "mid-mlp"], [0, 1], runs, log=lambda *_: None
    )
    assert len(done) == 10 and len(skipped) == 2  # OGM-GE refuses Mid-MLP, once per seed
    assert {s["fusion"] for s in skipped} == {"mid-mlp"}
    return out, runs


def test_compare_keeps_finished_runs_and_writes_tables(runs_dir):
    out, runs = runs_dir
    stamp = (runs / "raw" / "mlb" / "late-linear" / "seed0" / "metrics.json").stat().st_mtime_ns
    result = runner.invoke(
        app,
        [
            "compare",
            "--data",
            str(out),
            "--out",
            str(runs),
            "--methods",
            "joint,mlb",
            "--fusions",
            "late-linear,mid-mlp",
            "--seeds",
            "0,1",
            "--size",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "done before, kept" in result.output
    assert (runs / "raw" / "mlb" / "late-linear" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    rows = json.loads((runs / "compare.json").read_text())
    assert {(r["group"]["method"], r["group"]["fusion"]) for r in rows} >= {
        ("mlb", "mid-mlp"),
        ("joint", "late-linear"),
    }
    assert all(r["runs"] == 2 for r in rows)
    assert (runs / "compare.csv").read_text().startswith("features,method,fusion,runs,")


def test_report_draws_every_figure(runs_dir):
    _, runs = runs_dir
    result = runner.invoke(app, ["report", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    figures = runs / "figures"
    for name in (
        "fig2_k_vs_r",
        "fig3_accuracy_raw",
        "fig4_agreement_raw",
        "fig5_ece_raw",
        "heads_raw",
        "curves_raw_mlb_late-linear",
    ):
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
        assert (figures / f"{name}.svg").exists()
    assert "fig3_accuracy_raw.png" in (figures / "report.md").read_text()


def test_compare_rejects_bad_lists(tmp_path):
    result = runner.invoke(
        app, ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--seeds", "a,b"]
    )
    assert result.exit_code == 2
