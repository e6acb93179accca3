"""A synthetic corpus in the exact layout and naming of a real CREMA-D copy.

    OUT/AudioWAV/<id>.wav        16 kHz, mono, 16-bit PCM; duration of the real clip (from clips.tsv)
    OUT/VideoFlash/<id>.flv      FLV: Sorenson H.263 ("flv1") video at 30 fps + MP3 audio of the same sound
    OUT/VideoDemographics.csv    ActorID,Age,Sex,Race,Ethnicity for the 91 actors (synthetic values)
    OUT/SYNTHETIC.txt            one line saying so: `doctor` and `prepare` call the root a stand-in
    OUT/synth_defects.json       only with `with_defects`: every planted defect and the reason code the
                                 validator must give it (docs/CONTRACTS.md)

Clip ids are real CREMA-D ids (actor, sentence, emotion, level), by default drawn from the 5820 clips of
the VAVL partitions, so the speaker-independent split protocol applies unchanged. Each clip shows a real
face (scikit-image's astronaut photo) talking in time with a speech-like voice; the emotion is carried by
the voice's prosody and by the face's expression, each with its own strength and label noise.

Core: `synth_cremad(out_dir, SynthConfig(...)) -> SynthSummary`. CLI: `mlbpipe synth cremad OUT`.
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.corpora.cremad.layout import EMOTIONS, MANIFESTS_DIR, REAL_CLIPS, SYNTH_MARKER, parse_clip_name
from pipeline.manifest import Reason
from pipeline.standins.base import Summary
from pipeline.standins.common import (
    check_common_options,
    clip_rng,
    defect_record,
    fresh_folder,
    lfs_stub,
    progress_field,
    run_jobs,
    seed_field,
    shown_label,
    workers_field,
    write_bytes,
    write_defects,
)
from pipeline.standins.cremad import face as face_mod
from pipeline.standins.cremad import media, voice

CLIP_LISTS = ("vavl", "all")
DEFAULT_CLIPS = 240
WAV_HEADER_BYTES = 44


@dataclass(frozen=True)
class SynthConfig:
    """AudioWAV/<id>.wav (16 kHz mono 16-bit), VideoFlash/<id>.flv (flv1 video + MP3 audio),
    VideoDemographics.csv. Real clip ids and durations; a real face (scikit-image's astronaut) talking in
    time with a speech-like voice.

    Cue strengths: 0 = the modality carries no emotion, 1 = the built-in profiles, > 1 = exaggerated. Noise:
    the fraction of clips whose cue in that modality shows a random other emotion (the file name keeps the
    true one). Defaults: audio easy (audio cue 1.0, noise 0.1), video weaker but complementary (video cue
    0.6, noise 0.25): ANG/HAP and NEU/DIS sound alike and differ mainly in the face."""

    clips: int | None = field(
        default=None,
        metadata={
            "help": "Number of good clips.",
            "default_text": f"{DEFAULT_CLIPS}, or actors x clips-per-actor",
        },
    )
    actors: int | None = field(
        default=None,
        metadata={
            "help": "Number of actors the clips spread over (drawn from every VAVL split).",
            "default_text": "all 91, or one per clip for a small corpus",
        },
    )
    clips_per_actor: int | None = field(
        default=None,
        metadata={
            "help": "Clips per actor (with --actors: clips = actors x clips-per-actor).",
            "default_text": "the clips spread evenly over the actors",
        },
    )
    clip_list: str = field(
        default="vavl",
        metadata={
            "help": f"Which real ids to draw from: 'vavl' (the 5820 clips of the VAVL partitions) or 'all' (all "
            f"{REAL_CLIPS})."
        },
    )
    audio_cue: float = field(
        default=1.0,
        metadata={
            "help": "Strength of the emotion in the voice's prosody (pitch level and range, tempo, energy, spectral "
            "tilt): 0 = none, 1 = built-in profiles, >1 = exaggerated."
        },
    )
    video_cue: float = field(
        default=0.6,
        metadata={
            "help": "Strength of the emotion in the face (brows, eyes, mouth shape, skin tint): 0 = none, 1 = "
            "built-in profiles."
        },
    )
    audio_noise: float = field(
        default=0.1,
        metadata={"help": "Fraction of clips whose voice shows a random other emotion (audio label noise)."},
    )
    video_noise: float = field(
        default=0.25,
        metadata={"help": "Fraction of clips whose face shows a random other emotion (video label noise)."},
    )
    width: int = field(
        default=480, metadata={"help": "Video frame width (the real corpus: 480; smaller is faster)."}
    )
    height: int = field(default=360, metadata={"help": "Video frame height (the real corpus: 360)."})
    fps: int = field(default=30, metadata={"help": "Video frame rate."})
    seed: int = seed_field()
    workers: int = workers_field()
    with_defects: bool = field(
        default=False,
        metadata={
            "help": "Also write the real corpus's known-bad clips and a set of broken inputs (LFS stubs, empty, "
            "truncated, stream-less and mis-formatted files, ...), each listed with the reason the validator must "
            "give it in OUT/synth_defects.json."
        },
    )
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        for key in ("clips", "actors", "clips_per_actor"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        check_common_options(self)
        if self.clip_list not in CLIP_LISTS:
            raise ValueError(f"clip_list must be one of {CLIP_LISTS}, got {self.clip_list!r}")
        for key, low in (("width", 64), ("height", 48)):
            value = getattr(self, key)
            if value < low or value % 2:
                raise ValueError(f"{key} must be an even number >= {low}, got {value!r}")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps must be in [1, 120], got {self.fps!r}")
        if (
            self.clips is not None
            and self.clips_per_actor is not None
            and self.actors is not None
            and self.clips != self.actors * self.clips_per_actor
        ):
            raise ValueError(
                f"clips={self.clips} disagrees with actors x clips_per_actor = "
                f"{self.actors} x {self.clips_per_actor}"
            )


@dataclass(kw_only=True)
class SynthSummary(Summary):
    """What `synth_cremad` made."""

    clip_ids: list[str]  # the good clips, sorted
    per_emotion: dict[str, int]
    per_actor: dict[int, int]
    clip_seconds: float = 0.0  # the good clips only (what clips/s is measured on)
    audio_seconds: float = 0.0

    def lines(self) -> list[str]:
        emotions = ", ".join(f"{e} {n}" for e, n in self.per_emotion.items())
        return [
            (
                f"wrote {len(self.clip_ids)} clips ({self.audio_seconds / 60:.1f} min of audio) from "
                f"{len(self.per_actor)} actors to {self.out_dir} in {self.seconds:.1f} s "
                f"({len(self.clip_ids) / max(self.clip_seconds, 1e-9):.2f} clips/s)"
            ),
            f"  per emotion: {emotions}",
            f"  clips per actor: {min(self.per_actor.values())}-{max(self.per_actor.values())}",
        ]


# --- the real corpus's clip list -------------------------------------------------------------------


@dataclass(frozen=True)
class ClipId:
    id: str
    actor: int
    sentence: str
    emotion: str
    level: str
    n_samples: int  # WAV samples at 16 kHz in the real corpus


def parse_id(clip_id: str) -> tuple[int, str, str, str]:
    """'1001_DFA_ANG_XX' -> (1001, 'DFA', 'ANG', 'XX') (the corpus's own parser; every listed id parses)."""
    name = parse_clip_name(clip_id)
    return name.actor, name.sentence, name.emotion, name.level


def load_clip_list(clip_list: str = "vavl") -> list[ClipId]:
    """The real clip ids with their WAV lengths, sorted by id."""
    sizes = {}
    with open(MANIFESTS_DIR / "clips.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            sizes[row["clip_id"]] = int(row["wav_bytes"])
    if clip_list == "vavl":
        ids = set()
        with open(MANIFESTS_DIR / "vavl_labels_partition_1.csv", newline="") as f:
            for row in csv.DictReader(f):
                ids.add(row["FileName"].removesuffix(".wav"))
    else:
        ids = set(sizes)
    return [ClipId(i, *parse_id(i), (sizes[i] - WAV_HEADER_BYTES) // 2) for i in sorted(ids)]


def load_actor_sex() -> dict[int, str]:
    """Actor id -> 'Male' / 'Female' from the VAVL partition file."""
    with open(MANIFESTS_DIR / "vavl_labels_partition_1.csv", newline="") as f:
        return {int(r["SpkrID"]): r["Gender"] for r in csv.DictReader(f)}


def load_actor_splits() -> dict[int, str]:
    """Actor id -> 'train' / 'validation' / 'test' in VAVL partition 1."""
    partition = json.loads((MANIFESTS_DIR / "vavl_actor_partitions.json").read_text())["partition_1"]
    return {int(actor): split for split in ("train", "validation", "test") for actor in partition[split]}


# --- choosing clips ----------------------------------------------------------------------------------

# Real clips with known problems (manifests/cremad/known_bad.tsv, reference README) and the clips that carry
# the synthetic defects: never used as good clips, so adding defects leaves the good clips unchanged.
REAL_DEFECT_IDS = (
    "1076_MTI_NEU_XX",
    "1076_MTI_SAD_XX",
    "1064_TIE_SAD_XX",
    "1064_IEO_DIS_MD",
    "1040_ITH_SAD_XX",
)
SYNTHETIC_DEFECTS = (  # (defect, expected reason, other acceptable reasons)
    ("lfs-pointer-wav", Reason.LFS_POINTER, ()),
    ("lfs-pointer-flv", Reason.LFS_POINTER, ()),
    ("empty-wav", Reason.EMPTY_FILE, ()),
    ("empty-flv", Reason.EMPTY_FILE, ()),
    ("truncated-flv", Reason.DECODE_ERROR, (Reason.DURATION_MISMATCH,)),
    ("no-video-stream", Reason.NO_VIDEO_STREAM, ()),
    ("wav-44k", Reason.BAD_AUDIO_FORMAT, ()),
    ("wav-stereo", Reason.BAD_AUDIO_FORMAT, ()),
    ("wav-8bit", Reason.BAD_AUDIO_FORMAT, ()),
    ("silent-wav", Reason.SILENT_AUDIO, ()),
    ("missing-flv", Reason.MISSING_FILE, ()),
    ("no-face", Reason.NO_FACE, ()),
    ("duplicate-id", Reason.DUPLICATE_ID, ()),
)
DEFECT_ACTORS = (1064, 1076)


def reserved_ids(pool: list[ClipId]) -> dict[str, ClipId]:
    """Clip id -> ClipId of every clip kept for defects (real ones first, then synthetic ones taken in id
    order from DEFECT_ACTORS's other clips)."""
    by_id = {c.id: c for c in pool}
    all_ids = {c.id: c for c in load_clip_list("all")}
    reserved = {i: by_id.get(i, all_ids.get(i)) for i in REAL_DEFECT_IDS}
    spare = [c for c in pool if c.actor in DEFECT_ACTORS and c.id not in reserved]
    for c in spare[: len(SYNTHETIC_DEFECTS)]:
        reserved[c.id] = c
    return reserved


def choose_actors(actors: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """`n` actors, with every VAVL split represented in proportion (at least one each when n >= 3), so a
    small corpus still has train, validation and test clips."""
    splits = load_actor_splits()
    groups = {s: [a for a in actors if splits.get(a, "train") == s] for s in ("train", "validation", "test")}
    if n >= len(actors):
        return sorted(actors)
    want = {s: round(n * len(g) / len(actors)) for s, g in groups.items()}
    if n >= 3:
        for s in ("validation", "test"):
            want[s] = max(want[s], 1)
    want["train"] = n - want["validation"] - want["test"]
    chosen = []
    for s, g in groups.items():
        chosen += rng.choice(sorted(g), size=min(want[s], len(g)), replace=False).tolist()
    return sorted(chosen)


def choose_clips(config: SynthConfig) -> list[ClipId]:
    """The good clips to generate, sorted by id: spread evenly over the chosen actors, each actor's clips
    cycling through the emotions so the corpus stays balanced."""
    pool_all = load_clip_list(config.clip_list)
    reserved = reserved_ids(pool_all)
    pool = [c for c in pool_all if c.id not in reserved]
    rng = np.random.default_rng([config.seed, 7])
    actors_available = sorted({c.actor for c in pool})
    n_actors = min(config.actors or len(actors_available), len(actors_available))
    if config.clips_per_actor is not None:
        n_clips = config.clips or n_actors * config.clips_per_actor
    else:
        n_clips = config.clips or DEFAULT_CLIPS
        if config.actors is None:
            n_actors = min(n_actors, n_clips)  # a small corpus: one clip per actor, actors drawn at random
    if n_clips > len(pool):
        raise ValueError(
            f"clips={n_clips} is more than the {len(pool)} clips in the {config.clip_list!r} list"
        )
    actors = choose_actors(actors_available, n_actors, rng)
    queues = []
    for rank, actor in enumerate(actors):
        mine = [c for c in pool if c.actor == actor]
        by_emotion = [[c for c in mine if c.emotion == e] for e in EMOTIONS]
        for group in by_emotion:
            rng.shuffle(group)
        order = [(rank + i) % len(EMOTIONS) for i in range(len(EMOTIONS))]
        queue = []
        while any(by_emotion):
            queue += [by_emotion[e].pop() for e in order if by_emotion[e]]
        queues.append(queue)
    chosen: list[ClipId] = []
    per_actor = config.clips_per_actor or max(len(q) for q in queues)
    for round_ in range(per_actor):  # one clip from every actor per round, until there are enough
        for queue in queues:
            if round_ < len(queue) and len(chosen) < n_clips:
                chosen.append(queue[round_])
    if len(chosen) < n_clips:
        raise ValueError(
            f"clips={n_clips} cannot be drawn from {len(actors)} actors "
            f"(only {len(chosen)} with at most {per_actor} clips per actor)"
        )
    return sorted(chosen, key=lambda c: c.id)


# --- one clip ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to make one clip, so a worker process needs nothing else."""

    clip: ClipId
    audio_emotion: str  # the emotion the voice shows (differs from clip.emotion under label noise)
    video_emotion: str
    voice: voice.Voice
    look: face_mod.Look
    audio_cue: float
    video_cue: float
    width: int
    height: int
    fps: int
    seed: int


def actor_voice(seed: int, actor: int, sex: str) -> voice.Voice:
    return voice.random_voice(np.random.default_rng([seed, actor, 1]), sex)


def actor_look(seed: int, actor: int) -> face_mod.Look:
    return face_mod.random_look(np.random.default_rng([seed, actor, 2]))


def plan_clip(clip: ClipId, config: SynthConfig, sex: dict[int, str]) -> ClipPlan:
    """What one clip shows: under label noise a modality's cue is a random other emotion (both draws are
    always made, so changing one noise level changes nothing else)."""
    rng = clip_rng(config.seed, clip.id, 1)
    shown = [
        shown_label(rng, clip.emotion, EMOTIONS, noise) for noise in (config.audio_noise, config.video_noise)
    ]
    return ClipPlan(
        clip,
        shown[0],
        shown[1],
        actor_voice(config.seed, clip.actor, sex.get(clip.actor, "Male")),
        actor_look(config.seed, clip.actor),
        config.audio_cue,
        config.video_cue,
        config.width,
        config.height,
        config.fps,
        config.seed,
    )


def render_clip(plan: ClipPlan) -> tuple[np.ndarray, np.ndarray]:
    """(audio float32 [N] at 16 kHz, frames uint8 [T, H, W, 3]) of one clip."""
    clip = plan.clip
    intensity = voice.LEVEL_INTENSITY.get(clip.level, 1.0)
    audio, env = voice.synthesize(
        clip.n_samples,
        clip.sentence,
        plan.voice,
        voice.blend_prosody(plan.audio_emotion, plan.audio_cue),
        intensity,
        clip_rng(plan.seed, clip.id, 2),
    )
    n_frames = max(round(clip.n_samples / voice.SAMPLE_RATE * plan.fps), 1)
    # Loudness per frame: the envelope sampled at frame centres, [T].
    centres = ((np.arange(n_frames) + 0.5) * voice.SAMPLE_RATE / plan.fps).astype(np.int64)
    loudness = env[np.minimum(centres, len(env) - 1)]
    expr = face_mod.blend_expression(plan.video_emotion, plan.video_cue * min(intensity, 1.25))
    frames = face_mod.render_frames(
        plan.look, expr, loudness, plan.width, plan.height, clip_rng(plan.seed, clip.id, 3)
    )
    return audio, frames


def make_clip(plan: ClipPlan, out_dir: Path) -> float:
    """Write one clip's WAV and FLV; returns its duration in seconds."""
    audio, frames = render_clip(plan)
    media.write_wav(out_dir / "AudioWAV" / f"{plan.clip.id}.wav", audio)
    media.write_flv(out_dir / "VideoFlash" / f"{plan.clip.id}.flv", frames, audio, plan.fps)
    return len(audio) / voice.SAMPLE_RATE


def _make_clip_job(job: tuple[ClipPlan, Path]) -> float:
    return make_clip(*job)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: no thread oversubscription


# --- demographics ------------------------------------------------------------------------------------

RACES = ("Caucasian", "African American", "Asian", "Unknown")
ETHNICITIES = ("Not Hispanic", "Hispanic")


def write_demographics(out_dir: Path, seed: int, sex: dict[int, str]) -> None:
    """VideoDemographics.csv for actors 1001-1091 with synthetic ages, races and ethnicities."""
    rows = ["ActorID,Age,Sex,Race,Ethnicity"]
    for actor in range(1001, 1092):
        rng = np.random.default_rng([seed, actor, 3])
        race = RACES[int(rng.choice(len(RACES), p=[0.6, 0.25, 0.1, 0.05]))]
        eth = ETHNICITIES[int(rng.random() < 0.1)]
        rows.append(f"{actor},{int(rng.integers(20, 75))},{sex.get(actor, 'Male')},{race},{eth}")
    write_bytes(out_dir / "VideoDemographics.csv", ("\n".join(rows) + "\n").encode())


# --- defects -----------------------------------------------------------------------------------------


def make_defects(out_dir: Path, config: SynthConfig, sex: dict[int, str]) -> list[dict]:
    """Write the known pathologies of the real corpus plus a set of bad inputs; return their records
    for synth_defects.json. Each record: id, file (relative to OUT), defect, expected_reason (a reason
    code of docs/CONTRACTS.md; "ok" for the accepted `_X.wav` misnaming), acceptable_reasons (every code
    that correctly describes it; the first is expected_reason). Unreadable permissions are not made here:
    a test should chmod a copy itself (file modes do not survive every copy or checkout)."""
    reserved = list(reserved_ids(load_clip_list(config.clip_list)).values())
    real = {c.id: c for c in reserved[: len(REAL_DEFECT_IDS)]}
    synthetic = dict(zip((d[0] for d in SYNTHETIC_DEFECTS), reserved[len(REAL_DEFECT_IDS) :]))
    records: list[dict] = []
    wav_dir, flv_dir = out_dir / "AudioWAV", out_dir / "VideoFlash"

    def plan_and_render(clip: ClipId) -> tuple[np.ndarray, np.ndarray]:
        return render_clip(plan_clip(clip, config, sex))

    def record(clip_id: str, file: str, defect: str, expected: str, also: tuple = ()) -> None:
        records.append(defect_record(clip_id, file, defect, expected, also))

    def good_pair(clip: ClipId, wav: bool = True, flv: bool = True) -> tuple[np.ndarray, np.ndarray]:
        audio, frames = plan_and_render(clip)
        if wav:
            media.write_wav(wav_dir / f"{clip.id}.wav", audio)
        if flv:
            media.write_flv(flv_dir / f"{clip.id}.flv", frames, audio, config.fps)
        return audio, frames

    # Real known-bad clips, as the real corpus has them.
    c = real["1076_MTI_NEU_XX"]  # FLV very short with no audio; the WAV is fine
    audio, frames = good_pair(c, flv=False)
    media.write_flv(flv_dir / f"{c.id}.flv", frames[: max(config.fps // 3, 1)], None, config.fps)
    record(
        c.id,
        f"VideoFlash/{c.id}.flv",
        "flv-short-no-audio",
        Reason.NO_AUDIO_STREAM,
        (Reason.DURATION_MISMATCH,),
    )

    c = real["1076_MTI_SAD_XX"]  # error picture, no audio anywhere
    n_frames = round(c.n_samples / voice.SAMPLE_RATE * config.fps)
    media.write_wav(wav_dir / f"{c.id}.wav", np.zeros(c.n_samples, np.float32))
    media.write_flv(
        flv_dir / f"{c.id}.flv",
        face_mod.error_picture(config.width, config.height, n_frames),
        None,
        config.fps,
    )
    record(
        c.id,
        f"VideoFlash/{c.id}.flv",
        "error-picture-no-audio-silent-wav",
        Reason.NO_AUDIO_STREAM,
        (Reason.SILENT_AUDIO, Reason.NO_FACE),
    )

    c = real["1064_TIE_SAD_XX"]  # FLV with no duration: none in the header, no data rates, every timestamp 0
    audio, frames = good_pair(c, flv=False)
    flv = flv_dir / f"{c.id}.flv"
    media.write_flv(flv, frames, audio, config.fps, write_duration=False)
    write_bytes(flv, media.strip_flv_duration(flv.read_bytes()))
    record(
        c.id,
        f"VideoFlash/{c.id}.flv",
        "zero-duration-flv",
        Reason.ZERO_DURATION,
        (Reason.DECODE_ERROR, Reason.DURATION_MISMATCH),
    )

    c = real["1064_IEO_DIS_MD"]  # FLV ~1 minute long while the WAV is ~4 s
    audio, frames = good_pair(c, flv=False)
    long_audio = np.tile(audio, int(np.ceil(60 * voice.SAMPLE_RATE / len(audio))))[: 60 * voice.SAMPLE_RATE]
    media.write_flv(flv_dir / f"{c.id}.flv", frames, long_audio, config.fps, n_frames=60 * config.fps)
    record(c.id, f"VideoFlash/{c.id}.flv", "flv-60s-wav-4s", Reason.DURATION_MISMATCH)

    c = real["1040_ITH_SAD_XX"]  # old mirrors name the WAV with one X: accepted and normalised
    audio, _ = good_pair(c, wav=False)
    misnamed = c.id.removesuffix("_XX") + "_X"
    media.write_wav(wav_dir / f"{misnamed}.wav", audio)
    record(c.id, f"AudioWAV/{misnamed}.wav", "wav-name-_X", "ok")

    # Synthetic defects, one clip each.
    s = synthetic
    c = s["lfs-pointer-wav"]
    good_pair(c, wav=False)
    write_bytes(
        wav_dir / f"{c.id}.wav",
        lfs_stub(zlib.crc32(f"{c.id}.wav".encode()), 2 * c.n_samples + WAV_HEADER_BYTES),
    )
    record(c.id, f"AudioWAV/{c.id}.wav", "lfs-pointer-wav", Reason.LFS_POINTER)

    c = s["lfs-pointer-flv"]
    good_pair(c, flv=False)
    write_bytes(flv_dir / f"{c.id}.flv", lfs_stub(zlib.crc32(f"{c.id}.flv".encode()), 300_000))
    record(c.id, f"VideoFlash/{c.id}.flv", "lfs-pointer-flv", Reason.LFS_POINTER)

    c = s["empty-wav"]
    good_pair(c, wav=False)
    write_bytes(wav_dir / f"{c.id}.wav", b"")
    record(c.id, f"AudioWAV/{c.id}.wav", "empty-wav", Reason.EMPTY_FILE)

    c = s["empty-flv"]
    good_pair(c, flv=False)
    write_bytes(flv_dir / f"{c.id}.flv", b"")
    record(c.id, f"VideoFlash/{c.id}.flv", "empty-flv", Reason.EMPTY_FILE)

    c = s["truncated-flv"]  # cut mid-stream, as an interrupted download leaves it
    good_pair(c)
    flv = flv_dir / f"{c.id}.flv"
    data = flv.read_bytes()
    write_bytes(flv, data[: len(data) // 2 + 7])  # +7: cut inside a tag, not on a boundary
    record(c.id, f"VideoFlash/{c.id}.flv", "truncated-flv", Reason.DECODE_ERROR, (Reason.DURATION_MISMATCH,))

    c = s["no-video-stream"]
    audio, _ = good_pair(c, flv=False)
    media.write_flv(flv_dir / f"{c.id}.flv", None, audio, config.fps)
    record(c.id, f"VideoFlash/{c.id}.flv", "no-video-stream", Reason.NO_VIDEO_STREAM)

    c = s["wav-44k"]
    audio, _ = good_pair(c, wav=False)
    t44 = np.arange(int(len(audio) * 44100 / 16000)) * 16000 / 44100
    media.write_wav(wav_dir / f"{c.id}.wav", np.interp(t44, np.arange(len(audio)), audio), 44100)
    record(c.id, f"AudioWAV/{c.id}.wav", "wav-44.1kHz", Reason.BAD_AUDIO_FORMAT)

    c = s["wav-stereo"]
    audio, _ = good_pair(c, wav=False)
    media.write_wav(wav_dir / f"{c.id}.wav", np.stack([audio, audio], axis=1))
    record(c.id, f"AudioWAV/{c.id}.wav", "wav-stereo", Reason.BAD_AUDIO_FORMAT)

    c = s["wav-8bit"]
    audio, _ = good_pair(c, wav=False)
    media.write_wav(wav_dir / f"{c.id}.wav", audio, subtype="PCM_U8")
    record(c.id, f"AudioWAV/{c.id}.wav", "wav-8bit", Reason.BAD_AUDIO_FORMAT)

    c = s["silent-wav"]
    good_pair(c, wav=False)
    media.write_wav(wav_dir / f"{c.id}.wav", np.zeros(c.n_samples, np.float32))
    record(c.id, f"AudioWAV/{c.id}.wav", "silent-wav", Reason.SILENT_AUDIO)

    c = s["missing-flv"]
    good_pair(c, flv=False)
    record(c.id, f"VideoFlash/{c.id}.flv", "missing-flv", Reason.MISSING_FILE)

    c = s["no-face"]  # good sound, but an error picture for the whole clip: usable for raw, not for cached
    audio, _ = good_pair(c, flv=False)
    n_frames = round(c.n_samples / voice.SAMPLE_RATE * config.fps)
    media.write_flv(
        flv_dir / f"{c.id}.flv",
        face_mod.error_picture(config.width, config.height, n_frames),
        audio,
        config.fps,
    )
    record(c.id, f"VideoFlash/{c.id}.flv", "no-face-error-picture", Reason.NO_FACE)

    c = s["duplicate-id"]  # a second copy of the WAV in a sub-folder
    audio, _ = good_pair(c)
    (wav_dir / "duplicates").mkdir(exist_ok=True)
    media.write_wav(wav_dir / "duplicates" / f"{c.id}.wav", audio)
    record(c.id, f"AudioWAV/duplicates/{c.id}.wav", "duplicate-id-subfolder", Reason.DUPLICATE_ID)

    # A file name that does not parse (emotion field spelled out); a WAV only, with a sound that is fine.
    bad = "1001_DFA_ANGRY_XX"
    media.write_wav(wav_dir / f"{bad}.wav", audio)
    record(bad, f"AudioWAV/{bad}.wav", "bad-name", Reason.BAD_NAME)
    return records


# --- the whole corpus --------------------------------------------------------------------------------


def synth_cremad(out_dir: Path, config: SynthConfig) -> SynthSummary:
    """Generate a synthetic CREMA-D corpus in `out_dir` (created if needed) and return what was made.

    The same config gives byte-identical files, whatever `workers` is."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    clips = choose_clips(config)
    for sub in ("AudioWAV", "VideoFlash"):
        fresh_folder(out_dir / sub)
    sex = load_actor_sex()
    write_demographics(out_dir, config.seed, sex)
    write_bytes(
        out_dir / SYNTH_MARKER,
        b"A synthetic stand-in of CREMA-D written by mlbpipe synth, not the real corpus.\n",
    )
    jobs = [(plan_clip(c, config, sex), out_dir) for c in clips]

    durations = run_jobs(
        _make_clip_job,
        jobs,
        workers=config.workers,
        desc="synth cremad",
        unit="clip",
        progress=config.progress,
        initializer=_init_worker,
    )

    clip_seconds = time.perf_counter() - start
    defects = []
    if config.with_defects:
        defects = make_defects(out_dir, config, sex)
        write_defects(out_dir, defects)
    return SynthSummary(
        out_dir=out_dir,
        clip_ids=[c.id for c in clips],
        per_emotion={e: n for e, n in sorted(Counter(c.emotion for c in clips).items())},
        per_actor=dict(sorted(Counter(c.actor for c in clips).items())),
        defects=defects,
        seconds=time.perf_counter() - start,
        clip_seconds=clip_seconds,
        audio_seconds=float(sum(durations)),
    )
