"""The generic corpus needs no code: a corpus named in params.yaml and described by a CSV, and a folder of
class folders, are each prepared end to end (index, frames, spectrograms, shards) and trained one epoch; a
malformed row, a missing file and a clip without audio are each rejected with their reason; separate audio
and video files pair by stem; the splits are the copy's own or a group-disjoint draw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.media import make_mp4, make_wav
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.corpora import CorpusError, corpus_for
from pipeline.manifest import Reason, Segment, read_manifest
from pipeline.store.shards import read_shard

pytestmark = pytest.mark.integration

CLASSES = ("bark", "bell", "horn")
SIZE = (48, 32)


def clip(path: Path, video: int, **kw) -> str:
    """A 3 s clip whose tone says its class (so one epoch has something to learn)."""
    make_mp4(path, seconds=3.0, fps=10, size=SIZE, tone_hz=300 + 200 * (video % 3), **kw)
    return path.name


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory) -> Path:
    """`clips.csv` with its own column names: 12 clips cut two by two from 6 source videos (the group),
    their splits and segments given; then a malformed row, a row whose file is absent, a clip without an
    audio stream and a label outside layout.classes."""
    root = tmp_path_factory.mktemp("csv_corpus")
    splits = ["train", "train", "train", "validation", "test", "test"]
    rows = ["file,class,split,group,start,end"]
    for video in range(6):
        for n in range(2):
            name = clip(root / "media" / f"v{video}_{n}.mp4", video)
            rows.append(f"media/{name},{CLASSES[video % 3]},{splits[video]},src{video},0.5,2.5")
    clip(root / "media" / "bad.mp4", 0)
    rows.append("media/bad.mp4,bark,train,src6,later,2.5")  # start is not a number
    rows.append("media/absent.mp4,bell,train,src7,,")
    clip(root / "media" / "mute.mp4", 0, audio=False)
    rows.append("media/mute.mp4,bark,train,src8,,")
    clip(root / "media" / "other.mp4", 1)
    rows.append("media/other.mp4,siren,train,src9,,")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    """Class folders ROOT/<label>/<clip>.mp4: 3 clips per class, a notes file, and a video without audio."""
    root = tmp_path_factory.mktemp("folder_corpus")
    for video in range(9):
        clip(root / CLASSES[video % 3] / f"c{video}.mp4", video)
    clip(root / "horn" / "silent_film.mp4", 2, audio=False)
    (root / "bark" / "notes.txt").write_text("not a clip\n")
    return root


def prepare(*args: str) -> None:
    result = CliRunner().invoke(
        app, ["prepare", *args, "--stages", "index,frames,spectrograms,shards_raw", "--size", "32", "--quiet"]
    )
    assert result.exit_code == 0, result.output


def train_one_epoch(shards: Path, out: Path) -> dict:
    from mlb.train import TrainConfig, train

    config = TrainConfig(data=shards, out=out, features="raw", method="mlb", size="tiny", epochs=1,
                         batch_size=4, device="cpu", dvclive=False)  # fmt: skip
    return train(config)


@pytest.fixture(scope="module")
def csv_prepared(csv_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("csv_out")
    params = out / "params.yaml"
    layout = {"annotations": "clips.csv", "classes": list(CLASSES), "columns": {"path": "file", "label": "class"},
              "method_defaults": {"mlb": {"raw": {"*": {"alpha": 1.5, "beta_max": 1.0}}}}}  # fmt: skip
    params.write_text(yaml.safe_dump({"corpora": {"mycorpus": {"corpus": "generic", "layout": layout}}}))
    prepare("mycorpus", "--root", str(csv_root), "--out", str(out / "data"), "--params", str(params))
    return out / "data"


def test_a_csv_corpus_is_indexed_under_its_own_name_with_every_rejection_explained(csv_prepared):
    by_id = {r.id: r for r in read_manifest(csv_prepared / "manifest.jsonl")}
    assert len(by_id) == 16
    good = by_id["v4_1"]
    assert (good.corpus, good.label_name, good.label, good.group, good.split) == (
        "mycorpus",
        "bell",
        1,
        "src4",
        "test",
    )
    assert good.media == {"audio": "media/v4_1.mp4", "video": "media/v4_1.mp4"} and good.segment == Segment(
        0.5, 2.0
    )
    assert by_id["bad"].reason == Reason.BAD_ANNOTATION.says(
        "clips.csv:14: start 'later' is not a number of seconds"
    )
    assert by_id["absent"].reason == Reason.MISSING_FILE.says("media/absent.mp4 is absent")
    assert by_id["mute"].reason == Reason.NO_AUDIO_STREAM.says("media/mute.mp4 has no audio stream")
    assert by_id["other"].reason.startswith(f"{Reason.EXCLUDED_CLASS}: clips.csv:17: the label 'siren'")
    kept = [r for r in by_id.values() if r.ok]
    assert len(kept) == 12 and {r.split for r in kept} == {"train", "validation", "test"}
    corpus = json.loads((csv_prepared / "corpus.json").read_text())
    assert (corpus["corpus"], corpus["label_names"], corpus["protocol"]) == (
        "mycorpus",
        list(CLASSES),
        "given",
    )


def test_a_csv_corpus_gives_shards_that_train_one_epoch(csv_prepared, tmp_path):
    folder = csv_prepared / "shards" / "raw"
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["corpus"], meta["num_classes"], meta["label_names"]) == ("mycorpus", 3, list(CLASSES))
    assert meta["fields"]["spec.npy"]["shape"][0] == 80  # the generic default: an 80-band log-Mel
    samples = dict(s for tar in sorted(folder.glob("*.tar")) for s in read_shard(tar))
    frames = samples["v4_1"]["frames.npy"]  # 3 frames at 1 fps inside [0.5, 2.5) s
    assert frames.shape == (3, 32, 32, 3) and [round(f.mean() / 8) for f in frames][:2] == [5, 15]
    result = train_one_epoch(folder, tmp_path / "run")
    assert result["training"]["epochs_run"] == 1
    assert result["method_params"] == {"alpha": 1.5, "beta_max": 1.0}  # layout.method_defaults
    assert np.isfinite(result["test"]["fused"]["accuracy"])


def test_class_folders_are_prepared_with_a_group_disjoint_random_split_and_train_one_epoch(
    folder_root, tmp_path
):
    out = tmp_path / "data"
    # seed 0 would draw the clip without audio alone into validation
    prepare("generic", "--root", str(folder_root), "--out", str(out), "--seed", "1")
    by_id = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    assert len(by_id) == 10 and by_id["c4"].label_name == "bell" and by_id["c4"].label == 1
    assert by_id["silent_film"].reason == Reason.NO_AUDIO_STREAM.says(
        "horn/silent_film.mp4 has no audio stream"
    )
    assert {r.split for r in by_id.values() if r.ok} == {"train", "validation", "test"}
    corpus = json.loads((out / "corpus.json").read_text())
    assert (corpus["corpus"], corpus["label_names"], corpus["protocol"]) == (
        "generic",
        list(CLASSES),
        "random-1",
    )
    result = train_one_epoch(out / "shards" / "raw", tmp_path / "run")
    assert result["training"]["epochs_run"] == 1


def test_split_folders_and_separate_audio_files_pair_by_stem(tmp_path):
    root = tmp_path / "root"
    for split, n in (("train", 0), ("val", 1), ("test", 2)):
        clip(root / split / "bark" / f"a{n}.mp4", 0, audio=False)
        make_wav(root / split / "bark" / f"a{n}.wav", seconds=3.0)
    clip(root / "test" / "bark" / "lonely.mp4", 0, audio=False)
    corpus = corpus_for("pairs", {"corpora": {"pairs": {"corpus": "generic", "layout": {"audio": "file"}}}})
    scan = corpus.scan(root)
    by_id = {c.id: c for c in scan.clips}
    assert by_id["a1"].files == {"video": ["val/bark/a1.mp4"], "audio": ["val/bark/a1.wav"]}
    assert by_id["a1"].extra["given_split"] == "validation" and by_id["lonely"].files["audio"] == []
    out = tmp_path / "out"
    prepare(
        "pairs",
        "--root",
        str(root),
        "--out",
        str(out),
        "--params",
        str(_params(tmp_path, "pairs", {"audio": "file"})),
    )
    records = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    assert records["a0"].ok and records["a0"].media == {
        "audio": "train/bark/a0.wav",
        "video": "train/bark/a0.mp4",
    }
    assert records["lonely"].reason.startswith(
        Reason.MISSING_FILE.says("the audio file of test/bark/lonely.mp4")
    )


def _params(folder: Path, name: str, layout: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"corpora": {name: {"corpus": "generic", "layout": layout}}}))
    return path


def test_a_copy_that_cannot_be_read_fails_naming_the_setting(tmp_path):
    (tmp_path / "clips.csv").write_text("filename,label\nx.mp4,bark\n")
    with pytest.raises(CorpusError, match=r"has no column path or video; .* layout.columns"):
        corpus_for(
            "g", {"corpora": {"g": {"corpus": "generic", "layout": {"annotations": "clips.csv"}}}}
        ).scan(tmp_path)
    with pytest.raises(CorpusError, match="layout.audio='both': choose one of stream, file"):
        corpus_for("g", {"corpora": {"g": {"corpus": "generic", "layout": {"audio": "both"}}}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no clips"):
        corpus_for("generic").scan(tmp_path / "empty")


def test_doctor_checks_a_generic_copy_named_in_params(csv_root, csv_prepared):
    params = csv_prepared.parent / "params.yaml"
    args = ["doctor", "--corpus", "mycorpus", "--root", str(csv_root), "--params", str(params)]
    lines = CliRunner().invoke(app, args).output.splitlines()
    annotations = next(line for line in lines if "corpus annotations" in line)
    assert (
        annotations.startswith("warn")
        and "16 clips of 3 classes from clips.csv; 1 row(s) do not parse" in annotations
    )
    media = next(line for line in lines if "corpus media" in line)
    assert media.startswith("ok") and "15 media files present, 1 clip(s) lack one (e.g. absent)" in media
