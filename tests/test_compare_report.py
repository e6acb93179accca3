"""`mlbpipe compare` and `mlbpipe report`: the same budget for every method, mean ± std, readable figures."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.text
import pytest
from helpers.shards import write_shard_folder
from matplotlib.container import BarContainer
from typer.testing import CliRunner

from mlb.analysis import report
from mlb.analysis.compare import aggregate, flatten, load_runs, to_markdown
from mlb.analysis.report import NoRunsError, write_report
from mlb.experiment.sweep import run_comparison
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


@pytest.mark.unit
def test_aggregate_mean_and_sample_std():
    runs = [_fake_run("mlb", 0, 0.6), _fake_run("mlb", 1, 0.8), _fake_run("joint", 0, 0.5)]
    by_method = {s.group["method"]: s for s in aggregate(runs)}
    assert by_method["mlb"].runs == 2
    assert by_method["mlb"].mean["test.fused.accuracy"] == pytest.approx(0.7)
    assert by_method["mlb"].std["test.fused.accuracy"] == pytest.approx(0.1414213562)  # ddof = 1
    assert by_method["joint"].std["test.fused.accuracy"] == 0.0
    table = to_markdown(aggregate(runs))
    assert "| raw | mlb | late-linear | 2 | 70.0 ± 14.1 |" in table


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.integration
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
            "--features",
            "raw",
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


@pytest.mark.integration
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


REPORT_FIGURES = [
    "fig2_k_vs_r",
    "fig3_accuracy_raw",
    "fig4_agreement_raw",
    "fig5_ece_raw",
    "heads_raw",
    # training curves: the first seed of each (method, fusion), in path order
    "curves_raw_joint_late-linear",
    "curves_raw_joint_mid-mlp",
    "curves_raw_mlb_late-linear",
    "curves_raw_mlb_mid-mlp",
    "curves_raw_ogm-ge_late-linear",
]


@pytest.mark.integration
def test_write_report_draws_each_figure_once_and_links_it(runs_dir, tmp_path):
    _, runs = runs_dir
    out = tmp_path / "figures"
    made = write_report(runs, out)
    assert made == [out / f"{name}.png" for name in REPORT_FIGURES]
    for png in made:
        assert png.stat().st_size > 10_000 and png.with_suffix(".svg").stat().st_size > 10_000, png
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md"] + [f"{name}.{ext}" for name in REPORT_FIGURES for ext in ("png", "svg")]
    )
    table = to_markdown(aggregate(load_runs(runs)))
    links = [f"![{name}]({name}.png)" for name in REPORT_FIGURES]
    text = (out / "report.md").read_text()
    assert text == "\n".join(["# mlbpipe report", "", table, "", *links]) + "\n"
    lines = text.splitlines()
    assert lines[:3] == ["# mlbpipe report", "", table.splitlines()[0]]
    assert (
        "| raw | mlb | mid-mlp | 2 |" in text
        and lines[-1] == "![curves_raw_ogm-ge_late-linear](curves_raw_ogm-ge_late-linear.png)"
    )


@pytest.mark.unit
def test_write_report_defaults_to_runs_figures_and_picks_the_fusion(tmp_path):
    runs = tmp_path / "runs"
    for i, (method, fusion) in enumerate([("mlb", "late-linear"), ("mlb", "mid-mlp"), ("joint", "mid-mlp")]):
        run = _fake_run(method, 0, 0.5 + 0.1 * i, fusion=fusion)
        run["test"]["agreement"] = [  # two heads: both wrong, video only, audio only, both right
            {"audio_correct": a, "video_correct": v, "count": 3, "fused_accuracy": (a + v) / 2}
            for a in (False, True)
            for v in (False, True)
        ]
        path = runs / "cached" / method / fusion / "seed0" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**run, "features": "cached"}))
    made = write_report(runs, fusion="mid-mlp")
    assert [p.name for p in made[:5]] == [
        "fig2_k_vs_r.png",
        "fig3_accuracy_cached.png",
        "fig4_agreement_cached.png",
        "fig5_ece_cached.png",
        "heads_cached.png",
    ]
    assert all(p.parent == runs / "figures" for p in made)
    assert (runs / "figures" / "report.md").is_file()


@pytest.mark.unit
def test_write_report_without_finished_runs_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "runs" / "dvclive").mkdir(parents=True)
    (tmp_path / "runs" / "dvclive" / "metrics.json").write_text("{}")  # not the trainer's
    with pytest.raises(NoRunsError, match="no finished runs under"):
        write_report(tmp_path / "runs", tmp_path / "figures")
    assert isinstance(NoRunsError(), ValueError)
    assert not (tmp_path / "figures").exists()


def _capture_figures(monkeypatch) -> list:
    """The Figures the report draws, kept as they are saved."""
    figures, save = [], report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    return figures


@pytest.mark.unit
def test_the_heads_figure_draws_only_the_head_an_encoder_trained_alone_has(tmp_path, monkeypatch):
    """`video-only`'s audio head is a probe on an untrained encoder: no bar, and none for `audio-only`'s video."""
    runs = [_fake_run(m, 0, 0.5) for m in ("joint", "mlb", "audio-only", "video-only")]
    bars = report.head_bars(aggregate(runs))
    assert {m: list(by_method) for m, by_method in bars.items()} == {
        "audio": ["joint", "mlb", "audio-only"],
        "video": ["joint", "mlb", "video-only"],
    }
    assert bars["audio"]["mlb"] == (50.0, 0.0) and bars["video"]["video-only"] == (25.0, 0.0)
    figures = _capture_figures(monkeypatch)
    report.figure_heads(aggregate(runs), tmp_path / "heads.png")
    (ax,) = figures[0].axes
    drawn = {  # each bar's centre: the method's row (down the axis), offset to its head's side
        c.get_label(): [round(bar.get_y() + bar.get_height() / 2, 3) for bar in c.patches]
        for c in ax.containers
        if isinstance(c, BarContainer)
    }
    assert drawn == {"audio head": [-0.2, 0.8, 1.8], "video head": [0.2, 1.2, 3.2]}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["joint", "mlb", "audio-only", "video-only"]


@pytest.mark.unit
def test_no_figure_title_names_an_absolute_path(tmp_path, monkeypatch):
    """The training curves are titled by the run's folder inside the runs folder."""
    runs = tmp_path / "runs"
    for method in ("mlb", "joint"):
        path = runs / "raw" / method / "late-linear" / "seed0" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_fake_run(method, 0, 0.5)))
    figures = _capture_figures(monkeypatch)
    write_report(runs)
    texts = [t.get_text() for fig in figures for t in fig.findobj(matplotlib.text.Text)]
    assert not [text for text in texts if str(tmp_path) in text]
    assert [fig.get_suptitle() for fig in figures[-2:]] == [  # the training curves, drawn last
        "raw/joint/late-linear/seed0",
        "raw/mlb/late-linear/seed0",
    ]


@pytest.mark.integration
def test_report_leaves_matplotlib_backend_alone(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "from pathlib import Path\n"
        "from mlb.analysis.report import figure_k_vs_r\n"
        f"figure_k_vs_r(Path({str(tmp_path / 'k.png')!r}))\n"
        "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "k.svg").is_file()


@pytest.mark.integration
def test_compare_rejects_bad_lists(tmp_path):
    result = runner.invoke(
        app, ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--seeds", "a,b"]
    )
    assert result.exit_code == 2


@pytest.mark.integration
def test_compare_and_report_take_the_new_methods(tmp_path):
    """The newer methods run under `mlbpipe compare` (refusing the fusions they cannot serve, with the
    reason) and appear in its tables and in `mlbpipe report`."""
    from mlb.balancing import METHODS

    # the two that refuse Mid-MLP and one that trains on both (the matrix test covers all of them)
    new = [m for m in ("mla", "reconboost", "gblending") if m in METHODS]
    write_shard_folder(tmp_path / "out" / "shards" / "raw", "raw")
    runs = tmp_path / "runs"
    args = ["compare", "--data", str(tmp_path / "out"), "--out", str(runs), "--methods", ",".join(new)]
    args += ["--fusions", "late-linear,mid-mlp", "--seeds", "0", "--size", "tiny", "--epochs", "1"]
    args += ["--features", "raw"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--resume given" not in result.output  # fresh runs under compare: no resume warning
    for m in new:
        if METHODS[m].supported_fusions is not None:
            assert f"{m} supports only ['late-linear']" in result.output
    rows = json.loads((runs / "compare.json").read_text())
    assert {r["group"]["method"] for r in rows} == set(new)
    result = runner.invoke(app, ["report", "--runs", str(runs)])
    assert result.exit_code == 0, result.output


@pytest.mark.integration
def test_aggregate_only_without_finished_runs_exits_1_with_a_message(tmp_path):
    """Nothing to aggregate is exit 1 (docs/CONTRACTS.md), not a fault; a missing folder is not made."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["compare", "--aggregate-only", "--out", str(empty)])
    assert result.exit_code == 1 and f"no finished runs under {empty}" in result.output, result.output
    assert "error" not in result.output
    missing = tmp_path / "missing"
    result = runner.invoke(app, ["compare", "--aggregate-only", "--out", str(missing)])
    assert result.exit_code == 1 and f"{missing} does not exist" in result.output, result.output
    assert not missing.exists()


@pytest.mark.integration
def test_compare_resamples_groups_unless_told_clips(tmp_path):
    """The runs' test predictions carry each clip's group: compare_stats resamples groups by default,
    clips with --resample clip; another unit is refused before anything is read."""
    runs = tmp_path / "runs"
    for method, right in (("joint", 30), ("mlb", 45)):
        folder = runs / "raw" / method / "late-linear" / "seed0"
        folder.mkdir(parents=True)
        metrics = {"method": method, "fusion": "late-linear", "features": "raw", "seed": 0, "fold": 0}
        metrics["test"] = {"fused": {"accuracy": right / 60}, "unimodal": {}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        labels = [i % 6 for i in range(60)]
        predictions = {
            "ids": [f"c{i:02d}" for i in range(60)],
            "groups": [f"actor{i // 10}" for i in range(60)],
            "label": labels,
            "fused": [y if i < right else (y + 1) % 6 for i, y in enumerate(labels)],
            "unimodal": {},
        }
        (folder / "test_predictions.json").write_text(json.dumps(predictions))
    for args, unit in (([], "group"), (["--resample", "clip"], "clip")):
        result = runner.invoke(app, ["compare", "--aggregate-only", "--out", str(runs), *args])
        assert result.exit_code == 0, result.output
        assert (
            f"| raw | late-linear | mlb | joint | 1 | one | {unit} |"
            in (runs / "compare_stats.md").read_text()
        )
    refused = runner.invoke(app, ["compare", "--aggregate-only", "--out", str(runs), "--resample", "actor"])
    assert refused.exit_code == 2 and "'actor': choose group or clip" in refused.output
