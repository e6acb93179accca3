"""Kinetics-Sounds and VGGSound are presets of the generic corpus: a stand-in of each in the layout of the
public copies (`mlbpipe synth`) is checked by `doctor`, prepared (its own annotation format and file names,
the listed clips it lacks counted, a malformed row and a clip without audio rejected) and trained one
epoch; a chosen class list keeps a whole Kinetics copy to its classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.corpora import corpus_for
from pipeline.manifest import Reason, read_manifest

pytestmark = pytest.mark.integration

runner = CliRunner()
IDS = {  # (the clip the stand-in writes without an audio stream, the malformed row, a listed clip it lacks)
    "vggsound": ("Q2hmsCfjdpy_000294", "X1fH-ZM9TBrx", "h7fmYzHT8vA_000029"),
    "kinetics_sounds": ("Q2hmsCfjdpy_000294_000297", "X1fH-ZM9TBrx", "h7fmYzHT8vA_000029_000032"),
}


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module", params=sorted(IDS))
def prepared(request, tmp_path_factory) -> tuple[str, Path, Path]:
    name = request.param
    root, out = tmp_path_factory.mktemp(f"{name}_copy"), tmp_path_factory.mktemp(f"{name}_out")
    invoke("synth", name, str(root), "--seconds", "3")
    invoke("prepare", name, "--root", str(root), "--out", str(out), "--stages",
           "index,frames,spectrograms,shards_raw", "--size", "32", "--quiet")  # fmt: skip
    return name, root, out


def test_a_stand_in_in_the_public_layout_is_prepared_with_its_rejections(prepared):
    name, _, out = prepared
    mute, malformed, lacking = IDS[name]
    by_id = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    assert by_id[mute].reason.startswith(f"{Reason.NO_AUDIO_STREAM}:")
    assert by_id[malformed].reason.startswith(f"{Reason.BAD_ANNOTATION}:")
    assert lacking not in by_id and len(by_id) == 12  # a listed clip the copy lacks is counted, not a record
    kept = [r for r in by_id.values() if r.ok]
    assert len(kept) == 10 and {r.split for r in kept} == {"train", "validation", "test"}
    assert all(r.group == r.id[:11] for r in kept)  # the YouTube video
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["corpus"] == name and corpus["num_classes"] == 3 and corpus["stand_in"]


def test_a_prepared_stand_in_trains_one_epoch(prepared, tmp_path):
    from mlb.train import TrainConfig, train

    _, _, out = prepared
    config = TrainConfig(data=out / "shards" / "raw", out=tmp_path / "run", features="raw", method="mlb",
                         size="tiny", epochs=1, batch_size=4, device="cpu", dvclive=False)  # fmt: skip
    assert train(config)["training"]["epochs_run"] == 1


def test_doctor_checks_each_stand_in(prepared):
    name, root, _ = prepared
    lines = runner.invoke(app, ["doctor", "--corpus", name, "--root", str(root)]).output.splitlines()
    annotations = next(line for line in lines if "corpus annotations" in line)
    assert annotations.startswith("warn") and "12 clips of 3 classes" in annotations
    copy = next(line for line in lines if "corpus copy" in line)
    assert "1 of the 13 clips" in copy and "are not in this copy" in copy


def test_a_class_list_keeps_a_kinetics_copy_to_its_classes(tmp_path):
    invoke("synth", "kinetics_sounds", str(tmp_path / "root"), "--seconds", "1", "--videos-per-class", "4")
    classes = ["synthetic action 0", "synthetic action 2"]
    params = {"corpora": {"ks31": {"corpus": "kinetics_sounds", "layout": {"classes": classes}}}}
    corpus = corpus_for("ks31", params)
    scan = corpus.scan(tmp_path / "root")
    assert corpus.name == "ks31" and corpus.label_names == tuple(classes)
    assert {c.label_name for c in scan.clips} == set(classes) | {None}  # None: the malformed row
    checks = {c.name: c for c in corpus.check_layout(tmp_path / "root")}
    assert not checks["corpus classes"].ok and "2 classes" in checks["corpus classes"].detail
