"""Indexing and validating a CREMA-D root (pipeline.corpora.cremad, pipeline.corpora.base, pipeline.stages.index,
pipeline.manifest) on a hand-made mini corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.media import LFS_STUB, make_flv, make_wav
from typer.testing import CliRunner

from pipeline import corpora
from pipeline.cli import app
from pipeline.corpora import CorpusError, base, get_corpus
from pipeline.corpora.cremad import layout
from pipeline.manifest import ClipRecord, Reason, format_summary, read_manifest, summarize, write_manifest
from pipeline.stages.index import IndexConfig, run_index

CREMAD = get_corpus("cremad")

runner = CliRunner()


def make_clip(
    root: Path, clip_id: str, *, wav_name: str | None = None, seconds: float = 1.0, **wav_kwargs
) -> None:
    make_wav(root / "AudioWAV" / f"{wav_name or clip_id}.wav", seconds=seconds, **wav_kwargs)
    make_flv(root / "VideoFlash" / f"{clip_id}.flv", seconds=seconds, fps=5, size=(32, 24))


@pytest.fixture(scope="module")
def mini_corpus(tmp_path_factory) -> Path:
    """Good clips of 3 actors, a known-bad clip, an `_X.wav`, an LFS stub, a mismatch and a stray file."""
    root = tmp_path_factory.mktemp("mini")
    for clip_id in ("1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "1003_TIE_SAD_XX", "1064_TIE_SAD_XX"):
        make_clip(root, clip_id)
    make_clip(root, "1040_ITH_SAD_XX", wav_name="1040_ITH_SAD_X")  # old mirrors' misnaming
    make_clip(root, "1001_IEO_NEU_LO")
    (root / "AudioWAV" / "1001_IEO_NEU_LO.wav").write_bytes(LFS_STUB)
    make_flv(root / "VideoFlash" / "1002_DFA_DIS_XX.flv", seconds=3.0, fps=5, size=(32, 24))
    make_wav(root / "AudioWAV" / "1002_DFA_DIS_XX.wav", seconds=1.0)  # video 3 s, audio 1 s
    (root / "AudioWAV" / "notes.txt").write_text("not media")
    return root


# --- names -----------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_parse_clip_name():
    name = layout.parse_clip_name("1001_DFA_ANG_XX")
    assert (name.actor, name.sentence, name.emotion, name.level, name.fixes) == (1001, "DFA", "ANG", "XX", ())
    fixed = layout.parse_clip_name("1040_ITH_SAD_X")
    assert fixed.id == "1040_ITH_SAD_XX" and fixed.fixes == ("wav-name-_X",)


@pytest.mark.unit
@pytest.mark.parametrize(
    "stem",
    [
        "1001_DFA_ANGRY_XX",
        "1001_DFA_XYZ_XX",
        "0999_DFA_ANG_XX",
        "1001_ABC_ANG_XX",
        "1001_DFA_ANG_ZZ",
        "1001-DFA-ANG-XX",
        "hello",
    ],
)
def test_names_that_do_not_parse(stem):
    assert layout.parse_clip_name(stem) is None


# --- wrong roots -----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_wrong_root_and_empty_corpus_are_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        CREMAD.scan(tmp_path / "nope")
    with pytest.raises(CorpusError, match="neither AudioWAV/ nor VideoFlash/"):
        CREMAD.scan(tmp_path)
    (tmp_path / "AudioWAV").mkdir()
    with pytest.raises(CorpusError, match="no .wav or .flv files"):
        CREMAD.scan(tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("make_root", ["missing", "empty"])
def test_prepare_exits_2_naming_the_path_and_the_fix(tmp_path, make_root):
    root = tmp_path / "corpus"
    if make_root == "empty":
        (root / "AudioWAV").mkdir(parents=True)
    result = runner.invoke(app, ["prepare", "cremad", "--root", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # the message may wrap
    assert str(root) in output and "mlbpipe synth cremad" in output
    assert "weights" not in output.lower()  # the root is reported before the cached path's weights


# --- validation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    records, summary = run_index(
        CREMAD, mini_corpus, out, IndexConfig(protocol="speaker-random", seed=3), progress=False
    )
    return out, {r.id: r for r in records}, summary


@pytest.mark.integration
def test_every_clip_is_in_the_manifest_with_a_status(indexed):
    _, by_id, summary = indexed
    assert sorted(by_id) == [
        "1001_DFA_ANG_XX",
        "1001_IEO_NEU_LO",
        "1002_DFA_DIS_XX",
        "1002_IEO_HAP_HI",
        "1003_TIE_SAD_XX",
        "1040_ITH_SAD_XX",
        "1064_TIE_SAD_XX",
    ]
    assert summary["kept"] + summary["rejected"] == len(by_id) == summary["clips"]
    assert summary["ignored_files"] == ["AudioWAV/notes.txt"]


@pytest.mark.integration
def test_good_clip_record_follows_the_contract(indexed):
    _, by_id, _ = indexed
    r = by_id["1002_IEO_HAP_HI"]
    assert (r.status, r.reason, r.label, r.label_name, r.group, r.corpus) == (
        "ok",
        None,
        3,
        "HAP",
        "1002",
        "cremad",
    )
    assert r.extra == {"actor": 1002, "sentence": "IEO", "level": "HI"} and r.segment is None
    assert r.media == {"audio": "AudioWAV/1002_IEO_HAP_HI.wav", "video": "VideoFlash/1002_IEO_HAP_HI.flv"}
    assert r.probe["audio"] == {"sample_rate": 16000, "channels": 1, "sample_width": 2, "duration": 1.0}
    assert r.probe["video"]["width"] == 32 and r.probe["video"]["has_audio"] is True
    assert r.protocol == "speaker-random-3" and r.split in ("train", "validation", "test")
    assert r.usable == {"raw": True, "cached": True}


@pytest.mark.integration
def test_the_manifest_has_the_contracts_keys_in_order_and_corpus_json_beside_it(indexed):
    out, _, _ = indexed
    first = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert list(first) == [
        "id", "corpus", "label", "label_name", "group", "media", "segment", "probe", "protocol", "split", "status",
        "reason", "usable", "reasons", "fixes", "extra",
    ]  # fmt: skip
    corpus = json.loads((out / "corpus.json").read_text())
    assert (
        corpus["corpus"] == "cremad"
        and corpus["num_classes"] == 6
        and corpus["protocol"] == "speaker-random-3"
    )
    assert corpus["label_names"] == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    assert corpus["method_defaults"]["mlb"]["cached"]["*"] == {"alpha": 5.0, "beta_max": 2.0}


@pytest.mark.integration
def test_rejections_carry_their_reason(indexed):
    _, by_id, summary = indexed
    assert by_id["1001_IEO_NEU_LO"].reason.startswith("lfs-pointer: AudioWAV/1001_IEO_NEU_LO.wav")
    assert "git lfs pull" in by_id["1001_IEO_NEU_LO"].reason
    assert by_id["1002_DFA_DIS_XX"].reason.startswith("duration-mismatch:")
    # on the known-bad list, and no more specific check fired (the media here are fine)
    assert by_id["1064_TIE_SAD_XX"].reason.startswith("known-bad: FLV/MP3 have no duration")
    for clip_id in ("1001_IEO_NEU_LO", "1002_DFA_DIS_XX", "1064_TIE_SAD_XX"):
        assert by_id[clip_id].status == "rejected" and by_id[clip_id].split is not None
        assert by_id[clip_id].usable == {"raw": False, "cached": False}
    assert summary["rejected_by_reason"] == {"duration-mismatch": 1, "known-bad": 1, "lfs-pointer": 1}
    text = format_summary(summary)
    assert "rejected lfs-pointer: 1  [1001_IEO_NEU_LO]" in text and "7 clips: 4 kept, 3 rejected" in text


@pytest.mark.integration
def test_x_wav_misnaming_is_accepted_and_noted(indexed):
    _, by_id, _ = indexed
    r = by_id["1040_ITH_SAD_XX"]
    assert (
        r.status == "ok" and r.media["audio"] == "AudioWAV/1040_ITH_SAD_X.wav" and r.fixes == ["wav-name-_X"]
    )


@pytest.mark.integration
def test_duplicate_id_and_missing_file(tmp_path):
    make_clip(tmp_path, "1001_DFA_ANG_XX")
    make_wav(tmp_path / "AudioWAV" / "copies" / "1001_DFA_ANG_XX.wav")
    make_wav(tmp_path / "AudioWAV" / "1002_DFA_ANG_XX.wav")
    records, _ = run_index(CREMAD, tmp_path, tmp_path / "out", IndexConfig(protocol="vavl"), progress=False)
    by_id = {r.id: r for r in records}
    assert by_id["1001_DFA_ANG_XX"].reason.startswith("duplicate-id:")
    assert "AudioWAV/copies/1001_DFA_ANG_XX.wav" in by_id["1001_DFA_ANG_XX"].reason
    assert by_id["1002_DFA_ANG_XX"].reason.startswith(
        "missing-file: VideoFlash/1002_DFA_ANG_XX.flv is absent (its WAV"
    )


@pytest.mark.integration
def test_rerun_skips_probing_when_nothing_changed(mini_corpus, indexed, monkeypatch):
    out, by_id, _ = indexed
    before = (out / "manifest.jsonl").read_bytes()

    def must_not_probe(*args, **kwargs):
        raise AssertionError("probed again although nothing changed")

    monkeypatch.setattr(base, "validate_clip", must_not_probe)
    records, _ = run_index(
        CREMAD, mini_corpus, out, IndexConfig(protocol="speaker-random", seed=3), progress=False
    )
    assert {r.id for r in records} == set(by_id)
    assert (out / "manifest.jsonl").read_bytes() == before


@pytest.mark.integration
def test_index_is_identical_with_two_workers(mini_corpus, indexed, tmp_path):
    out, _, _ = indexed
    from pipeline.engine import LocalExecutor

    with LocalExecutor(2) as executor:
        config = IndexConfig(protocol="speaker-random", seed=3)
        run_index(CREMAD, mini_corpus, tmp_path, config, executor=executor, progress=False)
    assert (tmp_path / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()


# --- the manifest file -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_manifest_round_trip_is_sorted_and_atomic(tmp_path):
    records = [
        ClipRecord("b", "toy", split="train"),
        ClipRecord("a", "toy", status="rejected", reason="x: y"),
    ]
    write_manifest(records, tmp_path / "m.jsonl")
    assert read_manifest(tmp_path / "m.jsonl") == sorted(records, key=lambda r: r.id)
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temp file left behind
    assert summarize(read_manifest(tmp_path / "m.jsonl"))["rejected_by_reason"] == {"x": 1}


@pytest.mark.unit
def test_manifest_reader_names_the_bad_line(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "corpus": "toy", "status": "ok"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_manifest(tmp_path / "m.jsonl")


@pytest.mark.unit
def test_manifest_reader_names_an_unknown_key_and_a_bad_segment(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "a", "corpus": "toy", "status": "ok", "wav": "x.wav"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"m.jsonl:1: unknown key\(s\) wav"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "a", "corpus": "toy", "status": "ok", "segment": [1, 2]}) + "\n"
    )
    with pytest.raises(ValueError, match=r"m.jsonl:1: segment of 'a'"):
        read_manifest(tmp_path / "m.jsonl")


@pytest.mark.unit
def test_reason_codes_are_one_enum():
    assert Reason.LFS_POINTER.says("x") == "lfs-pointer: x" and Reason("no-face") is Reason.NO_FACE
    assert len({r.value for r in Reason}) == len(Reason)


@pytest.mark.unit
def test_an_unknown_corpus_and_protocol_are_named(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus 'nope'; choose one of .*cremad"):
        corpora.get_corpus("nope")
    with pytest.raises(
        ValueError, match="index.protocol='official': cremad has the protocols vavl, speaker-random"
    ):
        run_index(CREMAD, tmp_path, tmp_path / "out", IndexConfig(protocol="official"), progress=False)
    with pytest.raises(ValueError, match="index.partition=7"):
        run_index(CREMAD, tmp_path, tmp_path / "out", IndexConfig(partition=7), progress=False)


# --- a copy that gives nothing to prepare, and how much of the corpus a copy holds -------------------------


def _copy_as_stubs(source: Path, root: Path, only: set[str] | None = None) -> Path:
    """`source` (a synthetic CREMA-D) copied to `root` with its media, or those of the clips in `only`,
    replaced by Git LFS pointers: what a clone without `git lfs pull` holds."""
    import shutil

    shutil.copytree(source, root)
    for media in [*root.glob("AudioWAV/*.wav"), *root.glob("VideoFlash/*.flv")]:
        if only is None or media.stem in only:
            media.write_bytes(LFS_STUB)
    return root


@pytest.mark.integration
def test_an_all_lfs_stub_copy_exits_1_naming_the_reason(synth_corpus, tmp_path):
    import subprocess
    import sys

    root = _copy_as_stubs(synth_corpus, tmp_path / "CREMA-D")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "prepare", "cremad", "--root", str(root), "--out", str(out),
         "--quiet", "--stages", "index,frames,spectrograms,shards_raw"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # 1: nothing to do (docs/CONTRACTS.md)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("mlbpipe prepare: error: no clip of")  # one paragraph
    assert "Traceback" not in result.stderr
    said = errors[0]
    assert "no clip of" in said and "all 12 clips were rejected (lfs-pointer 12)" in said
    assert "All 12 clips are Git LFS pointer stubs" in said and "git lfs pull" in said
    assert layout.SOURCE in said and f"{out / 'manifest.jsonl'} lists every clip" in said
    records = read_manifest(out / "manifest.jsonl")  # every clip stays there, with its reason
    assert len(records) == 12 and all(r.reason.startswith("lfs-pointer:") for r in records)
    assert not (out / "shards").exists()


@pytest.mark.integration
def test_a_split_of_the_protocol_without_a_kept_clip_is_an_error_naming_why(synth_corpus, tmp_path):
    from pipeline.corpora.cremad.protocols import vavl_protocol

    actor_split, _ = vavl_protocol(1)
    test_clips = {
        p.stem for p in synth_corpus.glob("AudioWAV/*.wav") if actor_split[int(p.stem[:4])] == "test"
    }
    assert test_clips
    root = _copy_as_stubs(synth_corpus, tmp_path / "copy", only=test_clips)
    result = runner.invoke(
        app, ["prepare", "cremad", "--root", str(root), "--out", str(tmp_path / "out"), "--stages", "index"]
    )
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "the vavl-1 protocol has no kept clip in test" in said
    assert f"test: its {len(test_clips)} clip(s) were all rejected (lfs-pointer {len(test_clips)})" in said
    assert "--protocol: vavl, speaker-random" in said


@pytest.mark.integration
def test_prepare_says_how_much_of_the_corpus_a_stand_in_holds(synth_corpus, tmp_path):
    result = runner.invoke(
        app, ["prepare", "cremad", "--root", str(synth_corpus), "--out", str(tmp_path), "--stages", "index"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "warning: this copy has 12 of CREMA-D's 7442 clips (0.2%), 12 of VAVL's 5820: a synthetic stand-in "
        "(SYNTHETIC.txt, written by mlbpipe synth)" in result.output
    )


def _doctor(root: Path) -> tuple[int, dict[str, tuple[str, str]]]:
    """(exit code, {check name: (status, detail)}) of `mlbpipe doctor --corpus cremad --root ROOT`."""
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(root)])
    checks = {}
    for line in result.output.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "warn", "fail"):
            name, _, detail = rest.strip().partition("  ")
            checks[name] = (status, detail.strip())
    return result.exit_code, checks


@pytest.mark.integration
def test_doctor_counts_the_corpus_clips_a_copy_holds(synth_corpus, tmp_path):
    small = tmp_path / "small"
    for clip_id in ("1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "1003_TIE_SAD_XX"):
        make_clip(small, clip_id)
    (small / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n")
    code, checks = _doctor(small)
    status, detail = checks["corpus clips"]
    assert code == 0 and status == "warn"  # it prepares, but it is not CREMA-D
    assert detail.startswith("3 of CREMA-D's 7442 clips (0.0%), 3 of VAVL's 5820: a partial copy")

    code, checks = _doctor(synth_corpus)  # the demo's kind of corpus: small on purpose, and says so
    status, detail = checks["corpus clips"]
    assert code == 0 and status == "warn"
    assert detail.startswith("12 of CREMA-D's 7442 clips (0.2%), 12 of VAVL's 5820: a synthetic stand-in")

    none = tmp_path / "none"  # CREMA-D's layout, and not one of its clips
    make_wav(none / "AudioWAV" / "1001_DFA_ANGRY_XX.wav")
    code, checks = _doctor(none)
    assert code == 1 and checks["corpus clips"][0] == "fail"
    assert checks["corpus clips"][1].startswith("0 of CREMA-D's 7442 clips")


@pytest.mark.integration
def test_the_root_errors_offer_a_stand_in_elsewhere_than_the_root(tmp_path):
    root = tmp_path / "CREMA-D"
    root.mkdir()
    for bad_root in (tmp_path / "nope", root):
        with pytest.raises(CorpusError) as caught:
            CREMAD.scan(bad_root)
        assert "mlbpipe synth cremad data/cremad-synthetic" in str(caught.value)
        assert f"mlbpipe synth cremad {bad_root}" not in str(caught.value)


@pytest.mark.unit
def test_only_the_whole_real_corpus_is_covered_without_a_warning():
    whole = base.Coverage("X", 3, 3, "P", 2, 2)
    assert whole.ok and whole.describe() == "3 of X's 3 clips (100.0%), 2 of P's 2"
    partial = base.Coverage("X", 4, 1)
    assert not partial.ok and partial.describe() == (
        "1 of X's 4 clips (25.0%): a partial copy, on which results say little about X"
    )
    assert not base.Coverage("X", 3, 3, stand_in="marker.txt").ok  # every clip, yet synthetic


@pytest.mark.integration
def test_prepare_prints_a_whole_copy_on_stdout_without_a_warning(synth_corpus, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_corpus, root)
    (root / layout.SYNTH_MARKER).unlink()  # as far as mlbpipe can tell, a real copy
    ids = {p.stem for p in root.glob("AudioWAV/*.wav")}
    monkeypatch.setattr(type(CREMAD), "corpus_clips", lambda self: ids)  # a corpus of these 12 clips
    result = runner.invoke(
        app, ["prepare", "cremad", "--root", str(root), "--out", str(tmp_path / "out"), "--stages", "index"]
    )
    assert result.exit_code == 0, result.output
    assert "copy: 12 of CREMA-D's 12 clips (100.0%), 12 of VAVL's 5820" in result.stdout
    assert "warning: this copy" not in result.output
