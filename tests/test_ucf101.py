"""The UCF101 plug-in (`pipeline.corpora.ucf101`): the split files, the official protocol, the per-clip rules,
the synthetic stand-in and its planted defects, and index -> shards_raw -> two training steps on the stand-in.
Stand-ins are tiny (3 audio classes x 4 groups x 1 clip, one class without audio, the defects)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.compute.spectrogram import spectrogram_batch
from pipeline.corpora.base import CorpusError
from pipeline.corpora.ucf101 import CORPUS
from pipeline.corpora.ucf101.layout import (
    AUDIO_CLASSES,
    SHIPPED_LISTS,
    UCF50_CLASSES,
    known_class,
    read_split_lists,
    scan_corpus,
)
from pipeline.corpora.ucf101.protocols import assign_official_splits, stratified_group_draw
from pipeline.corpora.ucf101.rules import frames_at_one_fps
from pipeline.manifest import ClipRecord, Reason, read_manifest, reason_code
from pipeline.splits import check_group_disjoint
from pipeline.standins.ucf101 import SynthConfig, synth_ucf101
from pipeline.store.shards import read_shard

STAGES = "index,frames,spectrograms,shards_raw"
SIZE = 32
TINY = {"classes": 3, "ucf50_classes": 1, "groups": 4, "clips_per_group": 1, "progress": False}


def file_hashes(root: Path, pattern: str = "*") -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf101")
    synth_ucf101(root, SynthConfig(**TINY, with_defects=True))
    return root


@pytest.fixture(scope="module")
def prepared(standin, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ucf101_out")
    result = CliRunner().invoke(
        app, ["prepare", "ucf101", "--root", str(standin), "--out", str(out), "--size", str(SIZE), "--quiet"]
    )  # every stage of the corpus's one input path
    assert result.exit_code == 0, result.output
    assert "note: ucf101 split files: " in result.output  # the planted malformed list lines
    return out


@pytest.fixture(scope="module")
def manifest(prepared) -> dict[str, ClipRecord]:
    return {r.id: r for r in read_manifest(prepared / "manifest.jsonl")}


# --- the split files -----------------------------------------------------------------------------------------


def write_lists(folder: Path, files: dict[str, list[str]], newline: str = "\r\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        # each file ends with a trailing empty line, as the official ones may
        (folder / name).write_bytes((newline.join(lines) + newline + newline).encode())
    return folder


@pytest.mark.unit
def test_split_files_with_crlf_a_trailing_empty_line_and_malformed_lines(tmp_path):
    folder = write_lists(
        tmp_path / "ucfTrainTestlist",
        {
            "classInd.txt": ["1 ApplyEyeMakeup", "37 HandstandPushups", "38 HandstandWalking"],
            "trainlist01.txt": [
                "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
                "HandstandPushups/v_HandStandPushups_g08_c01.avi 37",
                "HandstandPushups/v_HandStandPushups_g08_c02.avi 38",  # line 3: the index of another class
                "HandstandPushups/v_HandStandPushups_g09_c01.avi",  # line 4: no index
                "garbage",  # line 5: names no clip
            ],
            "testlist01.txt": ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"],
            "trainlist02.txt": [], "testlist02.txt": [],
        },
    )  # fmt: skip
    lists = read_split_lists(folder, "ucfTrainTestlist")
    assert lists.membership[1] == {
        "v_applyeyemakeup_g08_c01": "train",  # the test list's line 2 names it again: a problem, not a move
        "v_handstandpushups_g08_c01": "train",
        "v_handstandpushups_g08_c02": "train",
        "v_handstandpushups_g09_c01": "train",
        "v_applyeyemakeup_g01_c01": "test",
    }
    assert lists.membership[2] == {} and 3 not in lists.membership  # trainlist03 / testlist03 are missing
    where = [p.split(": ")[0] for p in lists.problems]
    assert where == ["ucfTrainTestlist/trainlist01.txt:3", "ucfTrainTestlist/trainlist01.txt:4",
                     "ucfTrainTestlist/trainlist01.txt:5", "ucfTrainTestlist/testlist01.txt:2",
                     "ucfTrainTestlist/trainlist03.txt is missing", "ucfTrainTestlist/testlist03.txt is missing"]  # fmt: skip
    assert set(lists.bad_lines) == {
        "v_handstandpushups_g08_c02",
        "v_handstandpushups_g09_c01",
        "v_applyeyemakeup_g08_c01",
    }
    assert lists.bad_lines["v_handstandpushups_g08_c02"].startswith(
        f"{Reason.BAD_ANNOTATION}: ucfTrainTestlist/trainlist01.txt:3: the class index '38'"
    )


@pytest.mark.unit
def test_the_shipped_split_files_are_the_official_ones():
    lists = read_split_lists(SHIPPED_LISTS)
    assert lists.problems == [] and len(lists.named()) == 13_320
    counts = {p: (sum(s == "train" for s in m.values()), sum(s == "test" for s in m.values()))
              for p, m in lists.membership.items()}  # fmt: skip
    assert counts == {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}
    for partition, band in ((1, range(1, 8)), (2, range(8, 15)), (3, range(15, 22))):
        test_groups = {
            int(k.rsplit("_", 2)[1][1:]) for k, s in lists.membership[partition].items() if s == "test"
        }
        assert test_groups == set(band)
    assert len(AUDIO_CLASSES) == 51 and len(UCF50_CLASSES) == 50 and AUDIO_CLASSES[25] == "HandstandPushups"


def records_from_lists(lists) -> list[ClipRecord]:
    """One record per clip the lists name, as a scan of a complete copy would give them."""
    records = []
    for key in sorted(lists.named()):
        _, class_part, group, _ = key.split("_")
        name = known_class(class_part)
        audio = name in AUDIO_CLASSES
        records.append(
            ClipRecord(id=key, corpus="ucf101", label=AUDIO_CLASSES.index(name) if audio else None,
                       label_name=name if audio else None, group=f"{name}_{group}",
                       extra={"lists": {str(p): m.get(key) for p, m in lists.membership.items()}})
        )  # fmt: skip
    return records


@pytest.mark.unit
def test_the_official_protocol_honours_the_lists_and_draws_10_percent_of_train_groups():
    lists = read_split_lists(SHIPPED_LISTS)
    records = records_from_lists(lists)
    drawn = {}
    for partition in (1, 2, 3):
        assert assign_official_splits(records, partition, seed=0) == f"official-{partition}-seed-0"
        check_group_disjoint(records)
        audio = [r for r in records if r.label is not None]
        assert all(r.split is None for r in records if r.label is None)  # the 50 classes without audio
        for r in audio:
            listed = r.extra["lists"][str(partition)]
            assert r.split == listed or (listed, r.split) == ("train", "validation")
        train_groups = {r.group for r in audio if r.extra["lists"][str(partition)] == "train"}
        drawn[partition] = {r.group for r in audio if r.split == "validation"}
        assert len(drawn[partition]) == math.ceil(0.1 * len(train_groups)) == 92  # of 918 train groups
        per_class = {c: sum(g.startswith(f"{c}_") for g in drawn[partition]) for c in AUDIO_CLASSES}
        assert set(per_class.values()) == {1, 2}  # stratified: 1.8 per class
        if partition == 1:  # the reference counts: 4,901 train clips of the 51 classes (8 of them silent)
            assert sum(r.split in ("train", "validation") for r in audio) == 4901
    assert drawn[1] != drawn[2] != drawn[3]
    assign_official_splits(records, 1, seed=1)
    assert {r.group for r in records if r.split == "validation"} != drawn[1]


@pytest.mark.unit
def test_the_stratified_draw_is_deterministic_and_proportional():
    groups = {"a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(10)], "c": ["c0"]}
    drawn = stratified_group_draw(groups, 0.1, seed=3)
    # ceil(3.1) = 4 groups; shares 2.58 / 1.29 / 0.13: floors 2 / 1 / 0, the one left to the largest remainder
    assert len(drawn) == 4 and [sum(g.startswith(c) for g in drawn) for c in "abc"] == [3, 1, 0]
    assert drawn == stratified_group_draw({k: v[::-1] for k, v in reversed(groups.items())}, 0.1, seed=3)
    assert stratified_group_draw({"a": ["a0"]}, 0.1, seed=0) == set()  # the last group stays in train


@pytest.mark.unit
def test_a_group_in_both_train_and_test_is_refused():
    records = [ClipRecord(id=f"v_Archery_g01_c0{k}", corpus="ucf101", label=2, label_name="Archery",
                          group="Archery_g01", extra={"lists": {"1": split}})
               for k, split in ((1, "train"), (2, "test"))]  # fmt: skip
    with pytest.raises(CorpusError, match="group Archery_g01 in both trainlist01.txt and testlist01.txt"):
        assign_official_splits(records, 1, seed=0)


@pytest.mark.unit
def test_check_protocol_names_the_key_and_value():
    CORPUS.check_protocol("official", 3)
    with pytest.raises(ValueError, match=r"index.protocol='vavl'.*official"):
        CORPUS.check_protocol("vavl", 1)
    for partition in (0, 4):
        with pytest.raises(ValueError, match=rf"index.partition={partition}: .*partitions 1-3"):
            CORPUS.check_protocol("official", partition)


# --- layout, naming and the per-clip rules ----------------------------------------------------------------


@pytest.mark.unit
def test_a_wrong_or_empty_root_names_the_path_and_the_fix(tmp_path):
    for root, what in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "has no UCF-101/")):
        with pytest.raises(CorpusError, match=what) as err:
            scan_corpus(root)
        assert str(root) in str(err.value) and "mlbpipe synth ucf101 data/ucf101-synthetic" in str(err.value)
    (tmp_path / "UCF-101" / "Archery").mkdir(parents=True)
    with pytest.raises(CorpusError, match="holds no .avi files"):
        scan_corpus(tmp_path)


@pytest.mark.integration
def test_the_spelling_trap_and_a_fixed_copy_match_the_official_lists(standin, tmp_path):
    by_id = {c.id: c for c in scan_corpus(standin).clips}
    clip = by_id["v_HandStandPushups_g02_c01"]  # folder HandstandPushups, file v_HandStandPushups_...
    assert (clip.label, clip.label_name, clip.group) == (25, "HandstandPushups", "HandstandPushups_g02")
    assert clip.extra == {"class": "HandstandPushups", "group": 2, "clip": 1, "official_index": 37,
                          "lists": {"1": "train", "2": "test", "3": "train"}} and clip.problems == []  # fmt: skip
    # a copy whose files were "fixed" to the folder's spelling, without split files: the shipped lists apply
    source = standin / clip.files["video"][0]
    fixed = tmp_path / "UCF-101" / "HandstandPushups" / "v_HandstandPushups_g08_c01.avi"
    fixed.parent.mkdir(parents=True)
    shutil.copyfile(source, fixed)
    scan = scan_corpus(tmp_path)
    assert any(
        "13319 clips that manifests/ucf101/ucfTrainTestlist names are not" in note for note in scan.notes
    )
    (only,) = scan.clips
    assert only.extra["lists"] == {"1": "train", "2": "test", "3": "train"} and len(scan.missing) == 13_319


@pytest.mark.unit
def test_the_too_short_rule_is_the_authors_four_frames_at_one_fps():
    assert frames_at_one_fps({"duration": 3.0, "fps": 25.0}) == 3  # 75 frames: 0, 25, 50
    assert frames_at_one_fps({"duration": 3.04, "fps": 25.0}) == 4  # frame 75 is the fourth
    assert frames_at_one_fps({"duration": 1.06, "fps": 25.0}) == 2  # UCF101's shortest clip
    assert frames_at_one_fps({"duration": 3.0, "fps": 29.97}) == 4  # every int(29.97) = 29th frame


@pytest.mark.integration
def test_every_planted_defect_is_rejected_with_its_listed_reason(standin, manifest):
    defects = json.loads((standin / "synth_defects.json").read_text())
    assert {d["expected_reason"] for d in defects} == {
        "no-audio-stream", "empty-file", "decode-error", "lfs-pointer", "too-short", "excluded-class",
        "bad-annotation", "bad-name", "ok"}  # fmt: skip
    scan = scan_corpus(standin)
    problems = scan.lists.problems
    assert all(any(p in note for note in scan.notes) for p in problems)  # each is a note of the index summary
    for defect in defects:
        if defect["id"] is None:  # a list line that names no clip: reported with file and line
            assert any(p.startswith(f"{defect['file']}:{defect['line']}: ") for p in problems), defect
            continue
        record = manifest[defect["id"]]
        if defect["expected_reason"] == "ok":
            assert record.ok, (defect, record.reason)
        else:
            assert reason_code(record.reason) == defect["expected_reason"], (defect, record.reason)
    bad_line = next(d for d in defects if d["defect"] == "malformed-list-line-wrong-index")
    assert f"{bad_line['file']}:{bad_line['line']}: " in manifest[bad_line["id"]].reason


@pytest.mark.integration
def test_clips_without_audio_are_rejected_whatever_their_class(manifest):
    silent = [r for r in manifest.values() if r.probe["video"] and not r.probe["video"]["has_audio"]]
    assert {r.extra["class"] for r in silent} == {"HandstandPushups", UCF50_CLASSES[0]}
    assert all(not r.ok for r in silent)
    audio_class = [r for r in silent if r.extra["class"] in AUDIO_CLASSES]
    assert [reason_code(r.reason) for r in audio_class] == [Reason.NO_AUDIO_STREAM]
    ucf50 = [r for r in manifest.values() if r.extra.get("class") == UCF50_CLASSES[0]]
    assert len(ucf50) == 5 and all(reason_code(r.reason) == Reason.EXCLUDED_CLASS for r in ucf50)
    assert all(r.label is None and r.split is None and UCF50_CLASSES[0] in r.reason for r in ucf50)
    # the one with a sound track is excluded all the same
    assert any(r.probe["video"]["has_audio"] for r in ucf50)


# --- the authors' settings -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_corpus_defaults_are_the_authors_settings():
    from pipeline.prepare import check_stages, prepare_config

    config = prepare_config(CORPUS, {}, {})
    assert (config.frames.fps, config.frames.count, config.frames.size) == (1.0, 4, 224)
    spec = config.spectrograms
    assert (spec.kind, spec.sample_rate, spec.seconds, spec.n_fft, spec.hop_length, spec.channel) == (
        "stft", 16000, 3.0, 512, 353, "first")  # fmt: skip
    assert spec.shape == (257, 1 + 48000 // 353)
    assert check_stages(None, CORPUS) == STAGES.split(",")
    with pytest.raises(ValueError, match="ucf101 has no cached input path.*ResNet-18"):
        check_stages(["faces"], CORPUS)


@pytest.mark.integration
def test_doctor_checks_the_layout(standin, tmp_path):
    checks = {c.name: c for c in CORPUS.check_layout(standin)}
    assert (
        checks["corpus UCF-101/ classes"].ok and "4 class folders" in checks["corpus UCF-101/ classes"].detail
    )
    assert (
        not checks["corpus UCF-101/*/*.avi"].ok and "git lfs pull" in checks["corpus UCF-101/*/*.avi"].detail
    )
    assert not checks["corpus split files"].ok and "trainlist01.txt:" in checks["corpus split files"].detail
    assert CORPUS.check_layout(tmp_path)[0].ok is False


# --- prepare and train on the stand-in --------------------------------------------------------------------


def shard_samples(folder: Path) -> dict[str, dict]:
    return dict(s for tar in sorted(folder.glob("*.tar")) for s in read_shard(tar))


@pytest.mark.integration
def test_prepare_gives_ucf101_shards_with_the_authors_shapes(prepared, manifest):
    folder = prepared / "shards" / "raw"
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["corpus"], meta["num_classes"], meta["label_names"]) == ("ucf101", 51, list(AUDIO_CLASSES))
    assert meta["fields"]["spec.npy"]["shape"] == [257, 1 + 48000 // 353]
    assert meta["fields"]["frames.npy"]["shape"] == [4, SIZE, SIZE, 3]
    assert meta["config"]["protocol"] == "official-1-seed-0"
    samples = shard_samples(folder)
    assert set(samples) == {r.id for r in manifest.values() if r.in_split()}
    assert {s["json"]["split"] for s in samples.values()} == {"train", "validation", "test"}
    check_group_disjoint(list(manifest.values()))


@pytest.mark.integration
def test_the_spectrogram_is_of_the_first_channel(standin, prepared, manifest):
    from pipeline.stages.spectrograms import load_fixed_length

    stereo = next(r for r in manifest.values() if r.in_split() and r.probe["audio"]["channels"] == 2)
    config = json.loads((prepared / "shards" / "raw" / "meta.json").read_text())["config"]["spectrograms"]
    stored = shard_samples(prepared / "shards" / "raw")[stereo.id]["spec.npy"]  # [257, 136]
    path = str(standin / stereo.media["audio"])
    first = spectrogram_batch(load_fixed_length(path, config)[None], config)[0]  # [257, 136]
    mean = spectrogram_batch(load_fixed_length(path, config | {"channel": "mean"})[None], config)[0]
    np.testing.assert_allclose(stored, first, atol=1e-5)
    assert np.abs(stored - mean).max() > 0.1


@pytest.mark.integration
def test_shards_are_byte_identical_on_a_rerun_with_two_workers(standin, prepared, tmp_path):
    from pipeline.engine import LocalExecutor
    from pipeline.prepare import Run, prepare, prepare_config

    config = prepare_config(CORPUS, {}, {"frames.size": SIZE})
    prepare(Run(CORPUS, standin, tmp_path, config, executor=LocalExecutor(2), progress=False),
            STAGES.split(","))  # fmt: skip
    assert file_hashes(tmp_path / "shards") == file_hashes(prepared / "shards")
    assert (tmp_path / "manifest.jsonl").read_bytes() == (prepared / "manifest.jsonl").read_bytes()


@pytest.mark.integration
def test_two_training_steps_take_the_mlb_defaults_from_meta(prepared, tmp_path):
    from mlb.train import TrainConfig, train

    config = TrainConfig(data=prepared / "shards" / "raw", out=tmp_path / "run", features="raw", method="mlb",
                         size="tiny", epochs=1, max_steps=2, batch_size=4, device="cpu", dvclive=False)  # fmt: skip
    result = train(config)
    assert result["training"]["steps"] == 2 and result["method_params"] == {"alpha": 2.0, "beta_max": 0.5}
    assert np.array(result["test"]["fused"]["confusion_matrix"]).shape == (51, 51)


# --- the stand-in itself ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_standin_has_the_real_formats_and_lists_naming_exactly_its_clips(standin, manifest):
    good = [r for r in manifest.values() if r.ok]
    assert {
        (r.probe["video"]["width"], r.probe["video"]["height"], r.probe["video"]["fps"]) for r in good
    } == {(320, 240, 25.0)}
    assert {(r.probe["video"]["video_codec"], r.probe["video"]["audio_codec"], r.probe["audio"]["sample_rate"])
            for r in good} == {("mpeg4", "mp3", 44100)}  # fmt: skip
    assert {r.probe["audio"]["channels"] for r in good} == {1, 2}
    avi = (standin / good[0].media["video"]).read_bytes()
    assert avi[:4] == b"RIFF" and avi[8:12] == b"AVI " and b"XVID" in avi[:4096]
    scan = scan_corpus(standin)
    assert scan.missing == []  # the stand-in's lists name only clips it has
    assert (standin / "ucfTrainTestlist" / "testlist02.txt").read_bytes().endswith(b".avi\r\n\r\n")


@pytest.mark.integration
def test_the_standin_is_byte_identical_whatever_the_workers(tmp_path):
    small = TINY | {"classes": 1, "clips_per_group": 1}
    one, two = tmp_path / "one", tmp_path / "two"
    summary = synth_ucf101(one, SynthConfig(**small, workers=1))
    synth_ucf101(two, SynthConfig(**small, workers=2))
    assert file_hashes(one) == file_hashes(two)
    assert (
        len(summary.clip_ids) == 4 and len(summary.ucf50_ids) == 4 and "wrote 4 clips" in summary.describe()
    )


@pytest.mark.integration
def test_synth_command_line_help_and_a_bad_option(tmp_path):
    result = CliRunner().invoke(app, ["synth", "ucf101", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--classes", "--ucf50-classes", "--groups", "--clips-per-group", "--audio-cue", "--video-cue",
                   "--audio-noise", "--video-noise", "--mono-fraction", "--with-defects", "--seed", "--workers"):  # fmt: skip
        assert option in result.output
    for bad in (["--groups", "2"], ["--classes", "52"], ["--bogus"]):
        result = CliRunner().invoke(app, ["synth", "ucf101", str(tmp_path / "out"), *bad])
        assert result.exit_code == 2, (bad, result.output)
    assert not (tmp_path / "out" / "UCF-101").exists()
