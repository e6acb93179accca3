"""The synthetic CREMA-D generator (`pipeline.standins.cremad`, `mlbpipe synth cremad`): layout, formats, faces,
determinism, cue strength and the planted defects. Corpora are tiny; `synth_corpus` and
`synth_corpus_defects` come from conftest.py and are shared with other tests."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.corpora.cremad.layout import EMOTIONS, MANIFESTS_DIR
from pipeline.standins.cremad import SynthConfig, synth_cremad
from pipeline.standins.cremad.generate import choose_clips, load_actor_splits, parse_id, plan_clip

REASON_CODES = {
    "missing-file",
    "lfs-pointer",
    "empty-file",
    "unreadable",
    "decode-error",
    "no-video-stream",
    "no-audio-stream",
    "zero-duration",
    "duration-mismatch",
    "bad-audio-format",
    "silent-audio",
    "bad-name",
    "duplicate-id",
    "known-bad",
    "no-face",
    "ok",
}


def real_wav_bytes() -> dict[str, int]:
    with open(MANIFESTS_DIR / "clips.tsv", newline="") as f:
        return {r["clip_id"]: int(r["wav_bytes"]) for r in csv.DictReader(f, delimiter="\t")}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def video_frames(path: Path, every: int = 1) -> np.ndarray:
    """Decoded RGB frames, uint8 [T, H, W, 3], every `every`-th frame."""
    with av.open(str(path)) as container:
        frames = [
            f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % every == 0
        ]
    return np.stack(frames)


# --- command line ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_help_describes_options():
    result = CliRunner().invoke(app, ["synth", "cremad", "--help"])
    assert result.exit_code == 0, result.output
    for option in (
        "--clips",
        "--actors",
        "--clips-per-actor",
        "--audio-cue",
        "--video-cue",
        "--audio-noise",
        "--video-noise",
        "--seed",
        "--workers",
        "--with-defects",
    ):
        assert option in result.output


@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    [
        ["synth", "nosuchcorpus", "OUT"],
        ["synth", "cremad", "OUT", "--clips", "-3"],
        ["synth", "cremad", "OUT", "--actors", "0"],
        ["synth", "cremad", "OUT", "--clips", "99999"],
        ["synth", "cremad", "OUT", "--audio-noise", "1.5"],
        ["synth", "cremad", "OUT", "--width", "big"],
        ["synth", "cremad", "OUT", "--width", "63"],
        ["synth", "cremad", "OUT", "--clip-list", "ogm"],
    ],
)
def test_bad_options_exit_2(tmp_path, args):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists()  # nothing written before the options are checked


@pytest.mark.integration
def test_unwritable_out_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["synth", "cremad", str(blocker / "corpus"), "--clips", "1"])
    assert result.exit_code == 2
    assert "cannot write" in result.output


@pytest.mark.integration
def test_cli_generates_and_reports(tmp_path):
    result = CliRunner().invoke(
        app,
        ["synth", "cremad", str(tmp_path), "--clips", "2", "--width", "160", "--height", "120", "--fps", "5"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 clips" in result.output and "per emotion" in result.output
    assert len(list((tmp_path / "AudioWAV").glob("*.wav"))) == 2


@pytest.mark.unit
@pytest.mark.parametrize(
    "key,value",
    [
        ("clips", -1),
        ("actors", 0),
        ("clips_per_actor", -2),
        ("audio_cue", -0.1),
        ("video_noise", 2.0),
        ("width", 63),
        ("workers", 0),
        ("seed", -1),
        ("clip_list", "x"),
    ],
)
def test_config_errors_name_key_and_value(key, value):
    with pytest.raises(ValueError, match=key) as err:
        SynthConfig(**{key: value})
    assert repr(value) in str(err.value)


# --- choosing clips ------------------------------------------------------------------------------------


@pytest.mark.unit
def test_small_corpus_is_balanced_and_covers_every_split():
    clips = choose_clips(SynthConfig(clips=12))
    assert sorted(c.emotion for c in clips) == sorted(EMOTIONS * 2)
    splits = load_actor_splits()
    assert {splits[c.actor] for c in clips} == {"train", "validation", "test"}


@pytest.mark.unit
def test_actors_times_clips_per_actor():
    clips = choose_clips(SynthConfig(actors=4, clips_per_actor=6))
    per_actor = {}
    for c in clips:
        per_actor.setdefault(c.actor, []).append(c.emotion)
    assert len(per_actor) == 4 and all(sorted(e) == sorted(EMOTIONS) for e in per_actor.values())


@pytest.mark.unit
def test_label_noise_fraction():
    clips = choose_clips(SynthConfig(clips=600))
    sex = {}
    plans = [plan_clip(c, SynthConfig(audio_noise=0.5, video_noise=0.0), sex) for c in clips]
    flipped = np.mean([p.audio_emotion != p.clip.emotion for p in plans])
    assert 0.42 < flipped < 0.58
    assert all(p.video_emotion == p.clip.emotion for p in plans)


# --- the corpus on disk ------------------------------------------------------------------------------


@pytest.mark.integration
def test_layout_and_naming(synth_corpus):
    wavs = sorted(p.stem for p in (synth_corpus / "AudioWAV").glob("*.wav"))
    flvs = sorted(p.stem for p in (synth_corpus / "VideoFlash").glob("*.flv"))
    assert len(wavs) == 12 and wavs == flvs
    sizes = real_wav_bytes()
    for clip_id in wavs:
        actor, _sentence, emotion, level = parse_id(clip_id)
        assert 1001 <= actor <= 1091 and emotion in EMOTIONS and level in ("LO", "MD", "HI", "XX")
        # same byte size as the real clip: same duration, 44-byte header
        assert (synth_corpus / "AudioWAV" / f"{clip_id}.wav").stat().st_size == sizes[clip_id]
    with open(synth_corpus / "VideoDemographics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ActorID", "Age", "Sex", "Race", "Ethnicity"]
    assert [int(r["ActorID"]) for r in rows] == list(range(1001, 1092))
    assert not list(synth_corpus.rglob(".*.part"))  # no temporary file left behind


@pytest.mark.integration
def test_formats_probe_back(synth_corpus):
    for wav in sorted((synth_corpus / "AudioWAV").glob("*.wav")):
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        flv = synth_corpus / "VideoFlash" / f"{wav.stem}.flv"
        with av.open(str(flv)) as container:
            assert container.format.name == "flv"
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "flv"  # Sorenson H.263, "flv1"
            assert audio.codec_context.codec.id == av.Codec("mp3", "r").id
            assert (video.width, video.height, video.average_rate) == (480, 360, 30)
            assert audio.codec_context.sample_rate == 22050 and audio.codec_context.channels == 1
            assert abs(container.duration / 1e6 - info.duration) < 0.15
            n_frames = sum(1 for _ in container.decode(video=0))
        assert abs(n_frames / 30 - info.duration) < 0.1


@pytest.mark.integration
def test_flv_audio_is_the_wav_sound(synth_corpus):
    wav = min((synth_corpus / "AudioWAV").glob("*.wav"))
    x, _ = sf.read(str(wav), dtype="float32")
    with av.open(str(synth_corpus / "VideoFlash" / f"{wav.stem}.flv")) as container:
        mp3 = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])

    # loudness envelopes (20 ms windows) agree once the MP3's encoder delay (a few windows) is skipped
    def envelope(s: np.ndarray, rate: int) -> np.ndarray:
        w = rate // 50
        return np.sqrt((s[: len(s) // w * w].reshape(-1, w) ** 2).mean(1))

    a, b = envelope(x, 16000), envelope(mp3, 22050)
    n = min(len(a), len(b)) - 5
    best = max(np.corrcoef(a[:n], b[lag : lag + n])[0, 1] for lag in range(5))
    assert best > 0.95


@pytest.mark.integration
def test_mtcnn_finds_a_face_in_sampled_frames(synth_corpus):
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(device="cpu", min_face_size=40)  # heads are >= 100 px high here; smaller scales cost time
    frames = np.concatenate(
        [video_frames(p, every=25) for p in sorted((synth_corpus / "VideoFlash").glob("*.flv"))]
    )
    _, probs = mtcnn.detect(list(frames))  # frames: [N, 360, 480, 3]
    found = np.mean([p is not None and p[0] is not None and p[0] > 0.9 for p in probs])
    assert len(frames) >= 36 and found >= 0.95, f"face found in {found:.0%} of {len(frames)} frames"


@pytest.mark.integration
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    config = {"clips": 3, "width": 160, "height": 120, "fps": 10, "seed": 5, "progress": False}
    synth_cremad(tmp_path / "a", SynthConfig(**config, workers=1))
    synth_cremad(tmp_path / "b", SynthConfig(**config, workers=2))
    synth_cremad(tmp_path / "c", SynthConfig(**{**config, "seed": 6}))
    a, b, c = (file_hashes(tmp_path / x) for x in "abc")
    assert len(a) == 8 and a == b  # 3 WAVs, 3 FLVs, VideoDemographics.csv, SYNTHETIC.txt
    assert a != c


# --- cue strength ------------------------------------------------------------------------------------


def audio_stats(wav: Path) -> np.ndarray:
    """Per-clip prosody: loudness, spectral centroid, mean and spread of pitch, share of loud frames."""
    x, rate = sf.read(str(wav), dtype="float32")
    starts = np.arange(0, len(x) - 400, 160)
    frames = x[starts[:, None] + np.arange(400)[None, :]] * np.hanning(400)  # [F, 400]
    rms = np.sqrt((frames**2).mean(1)) + 1e-8
    loud = rms > 0.3 * rms.max()
    spec = np.abs(np.fft.rfft(frames[loud], 1024))  # [L, 513]
    centroid = (spec * np.fft.rfftfreq(1024, 1 / rate)).sum(1) / (spec.sum(1) + 1e-8)
    autocorr = np.fft.irfft(spec**2, 1024)  # [L, 1024]
    lag = rate // 500 + autocorr[:, rate // 500 : rate // 60].argmax(1)
    f0 = np.log(rate / lag)
    return np.array([np.log(rms[loud]).mean(), np.log(centroid).mean(), f0.mean(), f0.std(), loud.mean()])


def video_stats(flv: Path) -> np.ndarray:
    """Per-clip face statistics: colour balance of the head and its share of dark pixels (brows, mouth)."""
    mean = video_frames(flv).astype(np.float32).mean(0)  # [H, W, 3]
    head = np.abs(mean - mean[2, 2]).sum(-1) > 40  # differs from the one-colour background
    pixels = mean[head]  # [P, 3]
    r, g, b = pixels.mean(0) + 1e-3
    return np.array([np.log(r / g), np.log(b / g), (pixels.sum(-1) < 200).mean()])


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, actors: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-centroid classifier on per-actor-centred, standardised features."""
    x = features.copy()
    for actor in np.unique(actors):
        x[actors == actor] -= x[actors == actor].mean(0)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    classes = np.unique(labels)
    correct = 0
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        centroids = np.stack([x[rest & (labels == c)].mean(0) for c in classes])  # [C, D]
        correct += classes[((centroids - x[i]) ** 2).sum(1).argmin()] == labels[i]
    return correct / len(x)


@pytest.mark.integration
def test_cue_strength_changes_separability(tmp_path):
    accuracy = {}
    for name, cue in (("none", 0.0), ("strong", 1.5)):
        root = tmp_path / name
        summary = synth_cremad(
            root,
            SynthConfig(
                actors=6,
                clips_per_actor=6,
                audio_cue=cue,
                video_cue=cue,
                audio_noise=0,
                video_noise=0,
                width=160,
                height=120,
                fps=5,
                seed=1,
                progress=False,
            ),
        )
        ids = summary.clip_ids
        labels = np.array([parse_id(i)[2] for i in ids])
        actors = np.array([parse_id(i)[0] for i in ids])
        audio = np.stack([audio_stats(root / "AudioWAV" / f"{i}.wav") for i in ids])
        video = np.stack([video_stats(root / "VideoFlash" / f"{i}.flv") for i in ids])
        accuracy[name] = (
            nearest_centroid_accuracy(audio, labels, actors),
            nearest_centroid_accuracy(video, labels, actors),
        )
    for m, modality in enumerate(("audio", "video")):
        strong, none = accuracy["strong"][m], accuracy["none"][m]
        assert strong >= 0.5 and strong >= none + 0.3, (
            f"{modality}: strong cue {strong:.2f}, no cue {none:.2f}"
        )


# --- defects -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_defects_are_listed_and_present(synth_corpus_defects):
    records = json.loads((synth_corpus_defects / "synth_defects.json").read_text())
    assert len(records) >= 18
    for r in records:
        assert set(r) >= {"id", "file", "defect", "expected_reason", "acceptable_reasons"}
        assert r["expected_reason"] in REASON_CODES and set(r["acceptable_reasons"]) <= REASON_CODES
        assert r["expected_reason"] == r["acceptable_reasons"][0]
        assert (synth_corpus_defects / r["file"]).exists() == (r["expected_reason"] != "missing-file"), r
    ids = {r["id"] for r in records}
    for real_bad in (
        "1076_MTI_NEU_XX",
        "1076_MTI_SAD_XX",
        "1064_TIE_SAD_XX",
        "1064_IEO_DIS_MD",
        "1040_ITH_SAD_XX",
    ):
        assert real_bad in ids
    assert not list(synth_corpus_defects.rglob(".*.part"))  # no temporary file left behind
    kinds = {r["expected_reason"] for r in records}
    assert kinds == REASON_CODES - {"unreadable", "known-bad"}  # unreadable: chmod in the test that needs it


@pytest.mark.integration
def test_defects_leave_good_clips_unchanged(synth_corpus, synth_corpus_defects):
    good = file_hashes(synth_corpus)
    with_defects = file_hashes(synth_corpus_defects)
    assert all(with_defects[name] == digest for name, digest in good.items())


@pytest.mark.integration
def test_each_defect_has_its_fault(synth_corpus_defects):
    root = synth_corpus_defects
    by_defect = {r["defect"]: root / r["file"] for r in json.loads((root / "synth_defects.json").read_text())}

    def streams(path: Path) -> set[str]:
        with av.open(str(path)) as container:
            return {s.type for s in container.streams}

    for name in ("lfs-pointer-wav", "lfs-pointer-flv"):
        data = by_defect[name].read_bytes()
        assert data.startswith(b"version https://git-lfs.github.com/spec/v1") and 100 < len(data) < 200
    assert by_defect["empty-wav"].stat().st_size == 0 and by_defect["empty-flv"].stat().st_size == 0
    assert streams(by_defect["no-video-stream"]) == {"audio"}
    assert streams(by_defect["flv-short-no-audio"]) == {"video"}
    assert streams(by_defect["error-picture-no-audio-silent-wav"]) == {"video"}
    assert not sf.read(str(root / "AudioWAV" / "1076_MTI_SAD_XX.wav"))[0].any()
    assert not sf.read(str(by_defect["silent-wav"]))[0].any()
    assert sf.info(str(by_defect["wav-44.1kHz"])).samplerate == 44100
    assert sf.info(str(by_defect["wav-stereo"])).channels == 2
    assert sf.info(str(by_defect["wav-8bit"])).subtype == "PCM_U8"
    with av.open(str(by_defect["zero-duration-flv"])) as container:
        assert container.duration is None
    with av.open(str(by_defect["flv-60s-wav-4s"])) as container:
        assert container.duration / 1e6 > 50
    with av.open(str(by_defect["truncated-flv"])) as container:  # the header still claims the full length
        claimed = container.duration / 1e6
        decoded = sum(1 for _ in container.decode(video=0)) / 30
    assert decoded < 0.7 * claimed
    assert sf.info(str(by_defect["wav-name-_X"])).samplerate == 16000
    assert by_defect["wav-name-_X"].name.endswith("_X.wav")
    assert by_defect["duplicate-id-subfolder"].parent.name == "duplicates"
    assert (root / "AudioWAV" / by_defect["duplicate-id-subfolder"].name).exists()


@pytest.mark.integration
def test_no_face_defect_shows_no_face(synth_corpus_defects):
    from facenet_pytorch import MTCNN

    records = json.loads((synth_corpus_defects / "synth_defects.json").read_text())
    paths = [synth_corpus_defects / r["file"] for r in records if "no-face" in r["acceptable_reasons"]]
    frames = np.concatenate([video_frames(p, every=30) for p in paths])
    boxes, _ = MTCNN(device="cpu", min_face_size=40).detect(list(frames))
    assert len(paths) == 2 and all(b is None for b in boxes)
