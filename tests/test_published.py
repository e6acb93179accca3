"""The published anchors (mlb.analysis.published, mlb/analysis/published.yaml): the data file's integrity, the
matching rules (within or outside the band, every reason why no published value applies) and the section
`mlbpipe compare` writes beside compare.md."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlb.analysis.compare import load_runs
from mlb.analysis.published import (
    TABLE_FILE,
    ShardFacts,
    anchors,
    load_table,
    published_for,
    published_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
VAVL = {"corpus": "cremad", "config": {"protocol": "vavl-1"}}  # a real CREMA-D raw path's shard_meta
STANDIN = {"corpus": "cremad", "config": {"protocol": "speaker-random-0"}}  # the demo's synthetic CREMA-D


def write_run(root: Path, method: str, seed: int, accuracy: float, meta: dict | None, **group) -> None:
    """A finished run as `mlbpipe train` leaves it, reduced to what the anchors read."""
    group = {"features": "raw", "fusion": "late-linear"} | group
    folder = root / group["features"] / method / group["fusion"] / f"seed{seed}"
    folder.mkdir(parents=True)
    fused = 1 / 6 if method.endswith("-only") else accuracy  # an alone run's fused output is untrained
    test = {"fused": {"accuracy": fused}, "unimodal": {"audio": {"accuracy": accuracy}}}
    metrics = {"method": method, "seed": seed, "fold": seed, "test": test, **group}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if meta is not None:
        (folder / "run.json").write_text(json.dumps({"shard_meta": meta}))


def facts(corpus="cremad", protocol="vavl-1", random_init=False, stand_in=None) -> ShardFacts:
    return ShardFacts(corpus, protocol, random_init, stand_in)


# --- the data file ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_row_names_registered_methods_and_every_column_has_a_source_and_a_value():
    from mlb.balancing import METHODS
    from pipeline.corpora import get_corpus

    table = load_table()
    assert {"paper", "arxiv", "table", "venue"} <= set(table["source"]) and table["units"] and table["metric"]
    assert table["fusion"] == "late-linear" and table["fusion_stated"] is False and table["fusion_note"]
    for name, column in table["columns"].items():
        assert column["source"] and column["title"] and column["spread"] and column["encoders"], name
        assert name == f"{column['corpus']}/{column['input_path']}" and column["input_path"] in (
            "raw",
            "cached",
        )
        assert column["protocol"] in get_corpus(column["corpus"]).protocols, name  # a protocol mlbpipe has
    assert "not_comparable" in table["columns"]["ave/cached"]  # mlbpipe refuses AVE's cached path
    methods = [m for row in table["rows"] for m in row["methods"]]
    assert len(methods) == len(set(methods))  # one row per method
    for row in table["rows"]:
        for method in row["methods"]:  # `--method` names; the alone rows are the audio-only / video-only runs
            assert method in METHODS, method
        assert row["methods"] != ["audio-only"] or row["title"] == "audio alone"
        assert set(row["values"]) <= set(table["columns"]), row["title"]
        # Table 1 gives every row in every column, each with its std
        assert set(row["values"]) == set(table["columns"]), row["title"]
        for mean, std in row["values"].values():
            assert 0 < mean <= 100 and std is not None and 0 <= std < 10, row["title"]


@pytest.mark.unit
def test_the_data_file_ships_with_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert TABLE_FILE.name in pyproject["tool"]["setuptools"]["package-data"]["mlb.analysis"]
    assert TABLE_FILE.parent == ROOT / "mlb" / "analysis"


# --- matching ----------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("accuracy", "within"),
    [
        (0.700, True),  # 1.9 below 71.9 ± 2.2
        (0.741, True),  # 2.2 above: on the std
        (0.696, False),  # 2.3 below
        (0.743, False),  # 2.4 above
    ],
)
def test_a_matching_group_is_within_the_band_of_the_published_std(tmp_path, accuracy, within):
    for fold in (1, 2, 3):  # the VAVL partitions, each its own prepared folder
        meta = VAVL | {"config": {"protocol": f"vavl-{fold}"}}
        write_run(tmp_path, "mlb", fold, accuracy, meta)
    (anchor,) = anchors(load_runs(tmp_path))
    assert anchor.published.value == (71.9, 2.2) and anchor.published.column == "CREMA-D ResNet"
    assert anchor.published.why_not == [] and anchor.runs == 3
    assert anchor.measured == pytest.approx((100 * accuracy, 0.0))
    assert anchor.within is within


@pytest.mark.unit
@pytest.mark.parametrize(
    ("accuracy", "within"), [(0.736, True), (0.737, False), (0.696, True), (0.695, False)]
)
def test_the_band_is_at_least_two_points(tmp_path, accuracy, within):
    write_run(tmp_path, "mlb", 0, accuracy, {"corpus": "ave", "config": {"protocol": "official"}})
    (anchor,) = anchors(load_runs(tmp_path))
    assert anchor.published.value == (71.6, 0.2)  # AVE ResNet: a std of 0.2 points
    assert anchor.within is within


@pytest.mark.unit
def test_alone_runs_are_measured_on_their_own_head_and_ogm_is_the_ogm_ge_row(tmp_path):
    write_run(tmp_path, "audio-only", 0, 0.61, VAVL)
    write_run(tmp_path, "ogm", 0, 0.65, VAVL)
    alone, ogm = anchors(load_runs(tmp_path))
    assert (alone.published.row, alone.published.value, alone.within) == ("audio alone", (60.6, 2.3), True)
    assert (ogm.published.row, ogm.published.value) == ("OGM(-GE)", (65.6, 3.8))


@pytest.mark.unit
@pytest.mark.parametrize(("accuracy", "within"), [(0.552, True), (0.531, False)])
def test_a_mean_published_without_its_std_gets_the_two_point_band(tmp_path, accuracy, within):
    write_run(tmp_path, "mcr", 1, accuracy, {"corpus": "ucf101", "config": {"protocol": "official-1-seed-0"}})
    table = load_table()
    next(r for r in table["rows"] if r["title"] == "MCR")["values"]["ucf101/raw"] = [
        55.2,
        None,
    ]  # no std given
    (anchor,) = anchors(load_runs(tmp_path), table)
    assert (anchor.published.row, anchor.published.value, anchor.within) == ("MCR", (55.2, None), within)
    assert "| 55.2 (UCF-51 ResNet, MCR) |" in published_markdown([anchor])


@pytest.mark.unit
def test_a_column_the_row_lacks_says_so():
    group = {"features": "raw", "method": "ensemble", "fusion": "late-linear"}
    table = load_table()
    del next(r for r in table["rows"] if r["title"] == "Ensemble")["values"]["ave/raw"]
    published = published_for(group, [facts("ave", "official")], table)
    assert published.value is None
    assert "the table's copy here has no Ensemble value for AVE ResNet" in published.why_not


@pytest.mark.unit
@pytest.mark.parametrize(
    ("group", "run_facts", "reason"),
    [
        ({}, [facts("synthetic-features", "synthetic")], "stand-in corpus: synthetic-features"),
        ({}, [facts(protocol="speaker-random-0")], "other protocol: speaker-random-0"),
        ({}, [facts(), facts(protocol="speaker-random-1")], "other protocol: speaker-random-1"),
        ({"features": "cached"}, [facts(random_init=True)], "random-init extractors"),
        (
            {},
            [facts(stand_in="SYNTHETIC.txt, written by mlbpipe synth")],
            "synthetic stand-in (SYNTHETIC.txt",
        ),
        ({"fusion": "mid-mlp"}, [facts()], "other fusion: mid-mlp (the table's: late-linear, assumed"),
        ({"method": "pmr"}, [facts()], "method not in the table: pmr"),
        ({"features": "cached"}, [facts("ucf101", "official-1-seed-0")], "no cached column for ucf101"),
        ({"features": "cached"}, [facts("ave", "official")], "other encoders: the table's AVE"),
        ({}, [facts(), facts("ave", "official")], "runs of several corpora: ave, cremad"),
        ({}, [facts(), None], "shard facts unknown"),
    ],
)
def test_every_reason_why_no_published_value_applies(group, run_facts, reason):
    group = {"features": "raw", "method": "mlb", "fusion": "late-linear"} | group
    published = published_for(group, run_facts)
    assert published.value is None
    assert len(published.why_not) == 1 and published.why_not[0].startswith(reason), published.why_not


@pytest.mark.unit
def test_every_reason_that_applies_is_given():
    group = {"features": "cached", "method": "joint", "fusion": "film"}
    published = published_for(group, [facts(protocol="speaker-random-0", random_init=True)])
    assert [r.split(":")[0] for r in published.why_not] == [
        "other protocol",
        "random-init extractors",
        "other fusion",
    ]


@pytest.mark.unit
def test_the_section_on_a_stand_in_says_no_published_value_applies(tmp_path):
    write_run(tmp_path, "joint", 0, 0.72, STANDIN)
    write_run(tmp_path, "mlb", 0, 0.80, STANDIN)
    write_run(
        tmp_path,
        "mlb",
        0,
        0.51,
        STANDIN | {"extractors": {"audio": {"random_init": True}}},
        features="cached",
    )
    text = published_markdown(anchors(load_runs(tmp_path)))
    assert "No published value applies to any group here" in text
    rows = [line for line in text.splitlines() if line.startswith(("| raw", "| cached"))]
    assert len(rows) == 3
    for line in rows:
        published, within, why = [c.strip() for c in line.strip("|").split("|")][5:]
        assert (published, within) == ("-", "-") and why.startswith("other protocol: speaker-random-0")
    assert "random-init extractors" in rows[0]  # the cached row


@pytest.mark.unit
def test_the_section_on_matching_runs_gives_the_published_value_and_the_verdict(tmp_path):
    for fold in (1, 2, 3):
        write_run(tmp_path, "mlb", fold, 0.70 + 0.01 * fold, VAVL)
    text = published_markdown(anchors(load_runs(tmp_path)))
    assert "| raw | mlb | late-linear | 3 | 72.0 ± 1.0 | 71.9 ± 2.2 (CREMA-D ResNet, MLB) | yes |  |" in text
    assert "A published value applies to 1 of 1 groups; 1 lie within it." in text


@pytest.mark.unit
def test_the_conformer_values_come_with_the_frozen_wav2vec2_difference(tmp_path):
    for fold in (1, 2, 3):
        write_run(tmp_path, "mlb", fold, 0.80, {**VAVL, "extractors": {}}, features="cached")
    text = published_markdown(anchors(load_runs(tmp_path)))
    assert "85.2 ± 0.9 (CREMA-D Conformer, MLB)" in text
    assert "CREMA-D Conformer: mlbpipe's Wav2Vec2 is frozen" in " ".join(text.split())
    assert "is frozen" not in published_markdown(anchors(load_runs(_raw_runs(tmp_path / "raw"))))


def _raw_runs(root: Path) -> Path:
    for fold in (1, 2, 3):
        write_run(root, "mlb", fold, 0.70, VAVL)
    return root


# --- the command -----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_compare_prints_the_section_and_writes_it_beside_compare_md(tmp_path):
    from pipeline.cli import app

    runs = tmp_path / "runs"
    write_run(runs, "joint", 0, 0.72, STANDIN)
    write_run(runs, "mlb", 0, 0.80, STANDIN)
    result = CliRunner().invoke(app, ["compare", "--aggregate-only", "--out", str(runs)])
    assert result.exit_code == 0, result.output
    written = (runs / "compare_published.md").read_text()
    assert (runs / "compare.md").is_file() and written.startswith("## Published values")
    assert written in result.output
