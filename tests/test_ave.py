"""The AVE plug-in (pipeline.corpora.ave): row parsing and its defects, the official split, the validator on
AVE's media defects, segment cropping, the synthetic stand-in, prepare to shards and two training steps.

Tiny stand-ins only: a 2-videos-per-category synthetic corpus at 64 x 48 (16 kHz mono audio), small
spectrogram settings, 32-pixel frames."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from helpers.media import make_mp4
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.corpora.ave import CORPUS
from pipeline.corpora.ave.layout import CATEGORIES, SPLIT_LISTS, read_list, scan_corpus
from pipeline.corpora.base import CorpusError, ValidationConfig
from pipeline.manifest import ClipRecord, Reason, Segment, read_manifest, reason_code
from pipeline.splits import check_group_disjoint
from pipeline.stages.spectrograms import SpectrogramConfig, load_fixed_length
from pipeline.standins.ave import SynthConfig, synth_ave
from pipeline.standins.ave.generate import HEADERS, LINE_ENDINGS, list_texts, plan_corpus
from pipeline.store.shards import read_shard

RAW_STAGES = ["index", "frames", "spectrograms", "shards_raw"]
SMALL_SPEC = {"spectrograms.sample_rate": 8000, "spectrograms.seconds": 2.0, "spectrograms.n_fft": 128,
              "spectrograms.hop_length": 64}  # fmt: skip
TINY = {"videos_per_category": 2, "width": 64, "height": 48, "fps": 10, "sample_rate": 16000, "channels": 1,
        "progress": False}  # fmt: skip
HEADER = "Category&VideoID&Quality&StartTime&EndTime"


def write_root(root: Path, lists: dict[str, str | bytes], videos=()) -> Path:
    """A corpus root with the given annotation files and placeholder mp4s (the scan does not probe)."""
    (root / "AVE").mkdir(parents=True, exist_ok=True)
    for name, text in lists.items():
        (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    for video_id in videos:
        (root / "AVE" / f"{video_id}.mp4").write_bytes(b"placeholder")
    return root


# --- rows ----------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_rows_parse_with_or_without_a_header_and_any_line_ending(tmp_path, header, end):
    rows = [
        "Church bell&RUhOCu3LNXM&good&0&10",
        "Frying (food)&-a_b-c&good&2&5",
        "Rodents, rats, mice&x_Y&good&3&9",
    ]
    text = end.join(([HEADER] if header else []) + rows) + end + end  # a trailing empty line
    path = tmp_path / "trainSet.txt"
    path.write_bytes(("\ufeff" if header else "").encode() + text.encode())  # a BOM before the header
    listing = read_list(path)
    assert listing.header is header and listing.bad == []
    first = 2 if header else 1  # the first row is never dropped when there is no header
    assert [(r.category, r.video_id, r.quality, r.start, r.end, r.line) for r in listing.rows] == [
        ("Church bell", "RUhOCu3LNXM", "good", 0, 10, first),
        ("Frying (food)", "-a_b-c", "good", 2, 5, first + 1),
        ("Rodents, rats, mice", "x_Y", "good", 3, 9, first + 2),
    ]


@pytest.mark.unit
def test_malformed_lines_are_reported_with_file_and_line_and_nothing_crashes(tmp_path):
    lines = [
        "Bark&goodOne&good&0&10",  # 1
        "Bark&fewFields&good&0",  # 2: wrong field count, usable id
        "Barking&unknownCat&good&0&10",  # 3
        "Bark&notNumeric&good&a&10",  # 4
        "Bark&reversed&good&5&3",  # 5
        "Bark&tooLate&good&0&12",  # 6
        "Bark&dotted.id&good&0&10",  # 7: no usable id
        "Bark&a/b&good&0&10",  # 8: no usable id
        "just some text",  # 9: no usable id
        HEADER,  # 10: a header in the middle
        "Bark&missingVideo&good&0&10",  # 11
    ]
    raw = ("\r\n".join(lines) + "\r\n").encode() + b"Bark&badBytes\xff&good&0&10\n"  # 12: undecodable
    root = write_root(tmp_path / "root", {"trainSet.txt": raw},
                      ["goodOne", "fewFields", "unknownCat", "notNumeric", "reversed", "tooLate", "unlisted"])  # fmt: skip
    scan = scan_corpus(root)
    clips = {c.id: c for c in scan.clips}
    assert clips["goodOne"].problems == [] and clips["goodOne"].segment == Segment(0.0, 10.0)
    expected = {"fewFields": 2, "unknownCat": 3, "notNumeric": 4, "reversed": 5, "tooLate": 6}
    for video_id, line in expected.items():
        (problem,) = clips[video_id].problems
        assert problem.startswith(Reason.BAD_ANNOTATION.says(f"trainSet.txt:{line}: ")), problem
    assert "unknown category 'Barking'" in clips["unknownCat"].problems[0]
    for line in (7, 8, 9, 10, 12):
        assert any(note.startswith(f"trainSet.txt:{line}: ") for note in scan.notes), (line, scan.notes)
    assert "AVE/unlisted.mp4" in scan.ignored  # a video no row names
    # the validator turns each into a reason: the scan's problem first, a missing video named with its row
    config = ValidationConfig()
    record = CORPUS.validate(root, clips["reversed"], config, {})
    assert record.reason == Reason.BAD_ANNOTATION.says(
        "trainSet.txt:5: the event [5, 3) s is empty (the end time must be after the start)"
    )
    record = CORPUS.validate(root, clips["missingVideo"], config, {})
    assert record.reason == Reason.MISSING_FILE.says(
        "AVE/missingVideo.mp4 (listed at trainSet.txt:11) is absent"
    )


@pytest.mark.unit
def test_duplicate_rows_identical_are_one_clip_disagreeing_ones_are_rejected(tmp_path):
    annotations = f"""{HEADER}
Bark&same&good&0&10
Bark&cats&good&0&10
Cat&cats&good&0&10
Bark&times&good&0&10
Bark&times&good&2&10
Goat&twoLists&good&1&4
"""
    train = """Bark&same&good&0&10
Bark&same&good&0&10
Bark&cats&good&0&10
Cat&cats&good&0&10
Bark&times&good&0&10
Bark&times&good&2&10
Goat&twoLists&good&1&4
"""
    test = "Goat&twoLists&good&1&4\n"
    root = write_root(tmp_path / "root", {"Annotations.txt": annotations, "trainSet.txt": train,
                                          "testSet.txt": test}, ["same", "cats", "times", "twoLists"])  # fmt: skip
    clips = {c.id: c for c in scan_corpus(root).clips}
    assert len(clips) == 4
    same = clips["same"]  # in Annotations.txt once and in trainSet.txt twice: one clip, no problem
    assert same.problems == [] and same.extra == {"quality": "good", "lists": ["trainSet.txt"]}
    cats = clips["cats"]  # the first row wins the label; the clip is rejected
    assert (cats.label_name, cats.label) == ("Bark", CATEGORIES.index("Bark"))
    assert cats.problems == [Reason.DUPLICATE_ID.says(
        "cats has rows that disagree: Annotations.txt:3 (Bark, [0, 10) s) and Annotations.txt:4 (Cat, [0, 10) s); "
        "one clip cannot have two labels or segments")]  # fmt: skip
    assert reason_code(clips["times"].problems[0]) == Reason.DUPLICATE_ID  # same category, other segment
    (problem,) = clips["twoLists"].problems  # identical rows, but in train and test
    assert problem == Reason.DUPLICATE_ID.says(
        "twoLists is in 2 split lists (trainSet.txt:7, testSet.txt:1); a video can be in one split only"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("layout", "says"),
    [
        (None, "does not exist or is not a folder"),
        ({}, "neither AVE/ nor any of"),
        ({"AVE/x.mp4": b"x"}, "has AVE/ but none of Annotations.txt"),
        ({"trainSet.txt": b"Bark&x&good&0&10\n"}, "no AVE/ folder of videos"),
        ({"trainSet.txt": b"Bark&x&good&0&10\n", "AVE/notes.txt": b""}, "holds no .mp4 files"),
        ({"trainSet.txt": (HEADER + "\n\n").encode(), "AVE/x.mp4": b"x"}, "hold no rows"),
    ],
)
def test_a_wrong_or_empty_root_names_the_path_and_the_fix(tmp_path, layout, says):
    root = tmp_path / "root"
    for name, data in (layout or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    if layout is not None:
        root.mkdir(exist_ok=True)
    with pytest.raises(CorpusError) as caught:
        CORPUS.scan(root)
    assert says in str(caught.value) and str(root) in str(caught.value)
    assert "mlbpipe synth ave" in str(caught.value) or "AVE release" in str(caught.value)


# --- protocol and settings -----------------------------------------------------------------------------


@pytest.mark.unit
def test_the_official_protocol_follows_the_lists_whatever_the_partition_and_seed():
    def record(video_id: str, lists: list[str]) -> ClipRecord:
        return ClipRecord(
            id=video_id, corpus="ave", group=video_id, extra={"quality": "good", "lists": lists}
        )

    for partition, seed in ((1, 0), (3, 337)):
        records = [record("a", ["trainSet.txt"]), record("b", ["valSet.txt"]), record("c", ["testSet.txt"]),
                   record("d", []), record("e", ["trainSet.txt", "testSet.txt"])]  # fmt: skip
        assert CORPUS.assign_splits(records, "official", partition, seed) == "official"
        assert [r.split for r in records] == ["train", "validation", "test", None, None]
    with pytest.raises(ValueError, match=r"index.protocol='random': ave has the protocols official"):
        CORPUS.check_protocol("random", 1)


@pytest.mark.unit
def test_the_authors_settings_are_the_corpus_defaults_and_only_the_raw_path_is_offered():
    from pipeline.prepare import check_stages, prepare_config

    config = prepare_config(CORPUS, {}, {})
    assert (config.frames.fps, config.frames.count, config.frames.size) == (1.0, 4, 224)
    spec = config.spectrograms
    assert (spec.kind, spec.sample_rate, spec.seconds, spec.n_fft, spec.hop_length) == (
        "psd",
        16000,
        10.0,
        512,
        159,
    )
    assert spec.shape == (257, 1004)  # the authors' Audio-1004-SE spectrograms
    assert CORPUS.method_defaults == {
        "mlb": {"raw": {"*": {"alpha": 2.0, "beta_max": 2.0}}},
        "mcr": {"raw": {"*": {"mipd_weight": 0.01}}},  # MCR's authors' AVE run (their run.sh)
    }
    assert check_stages(None, CORPUS) == RAW_STAGES
    with pytest.raises(ValueError, match="ran only the ResNet-18"):
        check_stages(["index", "faces"], CORPUS)


# --- media: cropping to the event, an audio-less video ---------------------------------------------------


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """Real MP4s (make_mp4: frame i is grey level 8 i, the audio's loudness rises linearly with time), 6 s
    at 5 fps, in the AVE layout: `inside` has the event [2, 5) s; `mute` has no audio stream."""
    root = tmp_path_factory.mktemp("ave_toy")
    for video_id, audio in (("inside", True), ("mute", False), ("other", True), ("third", True)):
        make_mp4(root / "AVE" / f"{video_id}.mp4", seconds=6.0, fps=5, size=(48, 32), audio=audio)
    (root / "trainSet.txt").write_text("Bark&inside&good&2&5\nBark&mute&good&0&6\n")
    (root / "valSet.txt").write_text("Cat&other&good&0&6\n")
    (root / "testSet.txt").write_text("Goat&third&good&1&4\n")
    (root / "Annotations.txt").write_text(
        HEADER + "\n" + "".join((root / f).read_text() for f in SPLIT_LISTS)
    )
    return root


@pytest.mark.integration
def test_frames_and_audio_come_from_inside_the_event_only(toy_root, tmp_path):
    from pipeline.prepare import Run, prepare, prepare_config

    config = prepare_config(CORPUS, {}, {"frames.size": 32, **SMALL_SPEC})
    prepare(Run(CORPUS, toy_root, tmp_path, config, progress=False), RAW_STAGES)
    by_id = {r.id: r for r in read_manifest(tmp_path / "manifest.jsonl")}
    assert by_id["mute"].reason == Reason.NO_AUDIO_STREAM.says("AVE/mute.mp4 has no audio stream")
    inside = by_id["inside"]
    assert (inside.ok, inside.split, inside.segment, inside.group) == (
        True,
        "train",
        Segment(2.0, 3.0),
        "inside",
    )
    assert inside.media == {"audio": "AVE/inside.mp4", "video": "AVE/inside.mp4"}
    samples = dict(s for tar in sorted((tmp_path / "shards" / "raw").glob("*.tar")) for s in read_shard(tar))
    frames = samples["inside"]["frames.npy"]  # [4, 32, 32, 3]: 1 fps inside [2, 5) s, the last one repeated
    assert [round(f.mean() / 8) for f in frames] == [10, 15, 20, 20]  # frames 10, 15, 20 of 5 fps
    # the spectrograms stage's own reader, on the record: 3 s of audio whose loudness rose from 2/6 to 5/6
    spec_config = asdict(SpectrogramConfig(kind="psd", sample_rate=16000, seconds=3.0, hop_length=159))
    wave = load_fixed_length(
        str(toy_root / inside.media["audio"]), spec_config, segment=inside.segment.as_tuple()
    )
    start, end = np.abs(wave[:3200]).max(), np.abs(wave[-3200:]).max()  # the first and last 0.2 s
    assert (
        0.8 * 2 / 6 - 0.05 < start < 0.8 * 2.2 / 6 + 0.05 and 0.8 * 4.8 / 6 - 0.05 < end < 0.8 * 5 / 6 + 0.05
    )


@pytest.mark.integration
def test_the_layout_check_counts_rows_and_videos(toy_root, tmp_path):
    checks = {c.name: c for c in CORPUS.check_layout(toy_root)}
    assert all(c.ok for c in checks.values()), checks
    assert checks["corpus trainSet.txt"].detail.startswith("2 rows (real AVE: 3339)")
    assert "with a header row" in checks["corpus Annotations.txt"].detail
    assert checks["corpus AVE/"].detail.startswith("4 .mp4 files")
    stub = write_root(tmp_path / "stub", {"trainSet.txt": "Bark&x&good&0&10\n"})
    (stub / "AVE" / "x.mp4").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n"
    )
    checks = {c.name: c for c in CORPUS.check_layout(stub)}
    assert not checks["corpus valSet.txt"].ok and "missing" in checks["corpus valSet.txt"].detail
    assert not checks["corpus AVE/"].ok and "git lfs pull" in checks["corpus AVE/"].detail


# --- the synthetic stand-in ----------------------------------------------------------------------------


@pytest.mark.unit
def test_every_header_and_line_ending_choice_gives_the_same_rows(tmp_path):
    plan = plan_corpus(SynthConfig(**TINY, with_defects=True))
    parsed = {}
    for header in HEADERS:
        for ending in LINE_ENDINGS:
            texts, _ = list_texts(plan, SynthConfig(**TINY, header=header, line_endings=ending))
            folder = tmp_path / f"{header}-{ending}"
            write_root(folder, texts)
            listings = {name: read_list(folder / name) for name in texts}
            assert all(listing.header is (header == "all" or header == "annotations" and name == "Annotations.txt")
                       for name, listing in listings.items())  # fmt: skip
            parsed[header, ending] = {
                n: [(r.video_id, r.event) for r in ls.rows] for n, ls in listings.items()
            }
    assert all(rows == parsed["none", "lf"] for rows in parsed.values())
    assert len(parsed["none", "lf"]["Annotations.txt"]) == 2 * 28 + 13  # the good rows and the defects'


@pytest.mark.integration
def test_the_stand_in_is_byte_identical_whatever_the_workers(tmp_path):
    config = {**TINY, "videos_per_category": 1, "width": 32, "height": 32, "fps": 5, "with_defects": True}
    one = synth_ave(tmp_path / "one", SynthConfig(**config))
    synth_ave(tmp_path / "two", SynthConfig(**config, workers=2))
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file()
    )
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
    assert len(one.video_ids) == 28 and set(one.per_split) == {"train", "validation", "test"}
    assert "28 videos" in one.describe() and "defects: 16" in one.describe()


@pytest.mark.integration
def test_the_synth_command_line_is_made_from_the_config(tmp_path):
    result = CliRunner().invoke(app, ["synth", "ave", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--videos-per-category", "--audio-cue", "--video-noise", "--header", "--with-defects"):
        assert option in result.output
    result = CliRunner().invoke(app, ["synth", "ave", str(tmp_path / "out"), "--videos-per-category", "0"])
    assert result.exit_code == 2 and "videos_per_category must be a positive integer" in result.output
    result = CliRunner().invoke(app, ["synth", "ave", str(tmp_path / "out"), "--header", "first"])
    assert result.exit_code == 2 and "header must be one of annotations, all, none" in result.output
    assert not (tmp_path / "out" / "AVE").exists()


@pytest.fixture(scope="module")
def defect_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ave_synth")
    synth_ave(root, SynthConfig(**TINY, with_defects=True))
    return root


@pytest.fixture(scope="module")
def prepared(defect_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ave_out")
    sets = [item for key, value in SMALL_SPEC.items() for item in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(app, ["prepare", "ave", "--root", str(defect_root), "--out", str(out),
                                            "--stages", ",".join(RAW_STAGES), "--size", "32", *sets, "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.integration
def test_every_planted_defect_gets_its_listed_reason(defect_root, prepared):
    defects = json.loads((defect_root / "synth_defects.json").read_text())
    by_id = {r.id: r for r in read_manifest(prepared / "manifest.jsonl")}
    scan = CORPUS.scan(defect_root)
    ignored = scan.ignored + scan.notes  # files that are no clip's media, and lines that cannot be a clip
    assert {d["expected_reason"] for d in defects} >= {"ok", "ignored", Reason.DUPLICATE_ID, Reason.BAD_ANNOTATION,
                                                       Reason.MISSING_FILE, Reason.NO_AUDIO_STREAM}  # fmt: skip
    for defect in defects:
        if defect["expected_reason"] == "ignored":
            assert any(note.startswith(defect["file"]) for note in ignored), defect
            assert defect["id"] not in by_id
            continue
        record = by_id[defect["id"]]
        got = "ok" if record.ok else reason_code(record.reason)
        assert got in defect["acceptable_reasons"], (defect, record.reason)
        if defect["file"].endswith(".mp4") or defect["expected_reason"] == "ok":
            continue
        assert f": {defect['file']}: " in record.reason  # a bad row is named by its file and line


@pytest.mark.integration
def test_the_split_honours_the_official_lists_exactly(defect_root, prepared):
    records = read_manifest(prepared / "manifest.jsonl")
    check_group_disjoint(records)
    named: dict[str, set[str]] = {}
    for name, split in SPLIT_LISTS.items():
        listing = read_list(defect_root / name)
        for entry in [*listing.rows, *listing.bad]:  # a malformed row still says which list names a video
            if entry.video_id is not None:
                named.setdefault(entry.video_id, set()).add(split)
    for record in records:
        splits = named.get(record.id, set())
        assert record.split == (splits.pop() if len(splits) == 1 else None), record.id
        assert record.protocol == "official" and record.group == record.id
    kept = [r for r in records if r.in_split()]
    assert {r.split for r in kept} == {"train", "validation", "test"}
    assert all(r.extra["quality"] == "good" and len(r.extra["lists"]) == 1 for r in kept)


@pytest.mark.integration
def test_the_shards_describe_ave(prepared):
    meta = json.loads((prepared / "shards" / "raw" / "meta.json").read_text())
    assert (meta["corpus"], meta["num_classes"], meta["label_names"]) == ("ave", 28, list(CATEGORIES))
    assert meta["config"]["protocol"] == "official" and meta["method_defaults"] == CORPUS.method_defaults
    spec = SpectrogramConfig(kind="psd", sample_rate=8000, seconds=2.0, n_fft=128, hop_length=64)
    assert meta["fields"]["spec.npy"]["shape"] == list(spec.shape) == [65, 249]
    assert meta["fields"]["frames.npy"]["shape"] == [4, 32, 32, 3]
    sample = next(iter(read_shard(min((prepared / "shards" / "raw").glob("train-*.tar")))))[1]
    assert sample["frames.npy"].shape == (4, 32, 32, 3) and sample["spec.npy"].shape == (65, 249)
    assert sample["json"]["corpus"] == "ave" and set(sample["json"]["extra"]) == {"quality", "lists"}


@pytest.mark.integration
def test_the_shards_are_byte_identical_on_a_rerun_and_with_two_workers(defect_root, prepared, tmp_path):
    from pipeline.engine import LocalExecutor
    from pipeline.prepare import Run, prepare, prepare_config

    def shard_bytes(out: Path) -> dict[str, bytes]:
        folder = out / "shards" / "raw"
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    first = shard_bytes(prepared)
    config = prepare_config(CORPUS, {}, {"frames.size": 32, **SMALL_SPEC})
    prepare(
        Run(CORPUS, defect_root, prepared, config, progress=False), RAW_STAGES
    )  # a rerun: nothing to redo
    assert shard_bytes(prepared) == first
    executor = LocalExecutor(2)
    try:
        prepare(Run(CORPUS, defect_root, tmp_path / "two", config, executor, progress=False), RAW_STAGES)
    finally:
        executor.close()
    assert shard_bytes(tmp_path / "two") == first


@pytest.mark.integration
def test_two_training_steps_take_the_corpus_mlb_settings(prepared, tmp_path):
    from mlb.train import TrainConfig, train

    config = TrainConfig(data=prepared / "shards" / "raw", out=tmp_path / "run", features="raw", method="mlb",
                         size="tiny", epochs=1, max_steps=2, batch_size=4, device="cpu", dvclive=False)  # fmt: skip
    result = train(config)
    assert result["training"]["steps"] == 2
    assert (
        result["method_params"]
        == CORPUS.method_defaults["mlb"]["raw"]["*"]
        == {"alpha": 2.0, "beta_max": 2.0}
    )
    assert np.array(result["test"]["fused"]["confusion_matrix"]).shape == (28, 28)


@pytest.mark.integration
def test_the_command_line_takes_auto_or_a_number_and_refuses_the_cached_path(prepared, tmp_path):
    base = ["train", "--data", str(prepared), "--method", "mlb", "--size", "tiny", "--epochs", "1",
            "--max-steps", "1", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [*base, "--features", "raw", "--param", "mlb.alpha=auto",
                                      "--param", "mlb.beta_max=1.5", "--out", str(run)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method_params"] == {"alpha": 2.0, "beta_max": 1.5}  # auto: the corpus's alpha

    result = CliRunner().invoke(
        app, [*base, "--features", "raw", "--param", "mlb.alpha=two", "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "alpha" in result.output and "got 'two'" in result.output
    assert not (tmp_path / "b").exists()  # refused before the run starts

    result = CliRunner().invoke(app, [*base, "--features", "cached", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())
    assert "ave has no cached path" in said and "train with --features raw" in said, said
