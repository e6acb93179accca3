"""A synthetic corpus in the exact layout and naming of a real UCF101 copy.

    OUT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi   AVI: MPEG-4 Part 2 (XVID) 320x240 at 25 fps + MP3 at
                                                44.1 kHz, stereo for most clips, mono for some
    OUT/ucfTrainTestlist/classInd.txt           the 101 classes (index Class)
    OUT/ucfTrainTestlist/trainlist0N.txt        `Class/file.avi index`, N = 1-3, naming exactly the clips
    OUT/ucfTrainTestlist/testlist0N.txt         `Class/file.avi`; CRLF line ends and a trailing empty line
    OUT/synth_defects.json                      only with `with_defects`: every planted defect and the
                                                reason code the validator must give it

Classes: the first `classes` of the 51 with audio in the order HandstandPushups (its files carry the
spelling trap `v_HandStandPushups_...`), BasketballDunk, then classInd order; and the first `ucf50_classes`
of the 50 without audio, whose clips have no audio stream and run at 29.97 fps as many real ones do. Each
class has `groups` groups (g01, ...) of `clips_per_group` clips. The split files are group-disjoint as the
official ones: partition N tests the N-th band of groups (the official lists test groups 1-7, 8-14,
15-21 of 25), the rest is train.

Core: `synth_ucf101(out_dir, SynthConfig(...)) -> SynthSummary`. CLI: `mlbpipe synth ucf101 OUT`.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.corpora.ucf101.layout import (
    ALL_CLASSES,
    AUDIO_CLASSES,
    LISTS_DIR,
    OFFICIAL_INDEX,
    PARTITIONS,
    UCF50_CLASSES,
    VIDEO_DIR,
    clip_path,
    file_stem,
)
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
from pipeline.standins.ucf101 import media, render

# HandstandPushups first: its files carry the spelling trap; BasketballDunk holds real audio-less clips
CLASS_ORDER = ("HandstandPushups", "BasketballDunk") + tuple(
    c for c in AUDIO_CLASSES if c not in ("HandstandPushups", "BasketballDunk")
)
UCF50_FPS = Fraction(30000, 1001)  # many of the real audio-less clips run at 29.97 fps


@dataclass(frozen=True)
class SynthConfig:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi (MPEG-4 Part 2 video, MP3 audio in AVI, as the real files) and
    ucfTrainTestlist/ naming exactly the generated clips. Each class has a learnable signature in both
    modalities: tones of its own in the sound, a disc of its own colour and motion in the pictures.

    Cue strengths: 0 = the modality carries no class, 1 = the built-in level, > 1 = exaggerated. Noise: the
    fraction of clips whose cue in that modality shows another generated class (the file keeps the true
    one). Defaults: video easy (cue 1.0, noise 0.1), audio weaker (cue 0.6, noise 0.25), as on the real
    corpus, where the frames carry more of the action than the sound."""

    classes: int = field(
        default=3,
        metadata={
            "help": "Number of the 51 classes with audio (HandstandPushups, BasketballDunk, then classInd "
            "order)."
        },
    )
    ucf50_classes: int = field(
        default=1,
        metadata={"help": "Number of the 50 classes without audio (UCF50's) to add, no audio track."},
    )
    groups: int = field(
        default=4, metadata={"help": "Groups per class (g01, ...; 4-25, at most 24 with defects)."}
    )
    clips_per_group: int = field(default=2, metadata={"help": "Clips per group (c01, ...; real: 4-7)."})
    min_seconds: float = field(default=3.2, metadata={"help": "Shortest clip, in seconds (at least 3.2)."})
    max_seconds: float = field(default=3.6, metadata={"help": "Longest clip, in seconds."})
    mono_fraction: float = field(
        default=0.12,
        metadata={"help": "Fraction of clips with mono audio (real: 794 of 6,837); the rest stereo."},
    )
    audio_cue: float = field(
        default=0.6, metadata={"help": "Strength of the class's tones in the sound: 0 = none, 1 = built-in."}
    )
    video_cue: float = field(
        default=1.0,
        metadata={"help": "Strength of the class's disc in the pictures: 0 = none, 1 = built-in."},
    )
    audio_noise: float = field(
        default=0.25,
        metadata={"help": "Fraction of clips whose sound shows another class (audio label noise)."},
    )
    video_noise: float = field(
        default=0.1,
        metadata={"help": "Fraction of clips whose pictures show another class (video label noise)."},
    )
    seed: int = seed_field()
    workers: int = workers_field()
    with_defects: bool = field(
        default=False,
        metadata={
            "help": "Also write UCF101's kinds of broken input (a clip of an audio class without audio, empty, "
            "truncated and LFS-stub files, too-short clips, an excluded class with sound, a bad name, malformed "
            "split-file lines), each listed with the reason the validator must give in OUT/synth_defects.json."
        },
    )
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        ranges = {
            "classes": (1, len(AUDIO_CLASSES)),
            "ucf50_classes": (0, len(UCF50_CLASSES)),
            "groups": (4, 24 if self.with_defects else 25),
            "clips_per_group": (1, 25),
        }
        for key, (low, high) in ranges.items():
            value = getattr(self, key)
            if not isinstance(value, int) or not low <= value <= high:
                more = " (with defects: their clips take the next group)" if key == "groups" else ""
                raise ValueError(f"{key} must be an integer in [{low}, {high}]{more}, got {value!r}")
        if not 3.2 <= self.min_seconds <= self.max_seconds <= 60:
            raise ValueError(
                f"min_seconds and max_seconds must satisfy 3.2 <= min <= max <= 60 (every clip must give the "
                f"protocol's 4 frames at 1 fps), got {self.min_seconds!r} and {self.max_seconds!r}"
            )
        if not 0 <= self.mono_fraction <= 1:
            raise ValueError(f"mono_fraction must be in [0, 1], got {self.mono_fraction!r}")
        check_common_options(self)


@dataclass(kw_only=True)
class SynthSummary(Summary):
    """What `synth_ucf101` made."""

    clip_ids: list[str]  # the good clips of the audio classes, sorted
    ucf50_ids: list[str]  # the clips of the classes without audio, sorted
    per_class: dict[str, int]
    mono: int  # good clips with mono audio
    clip_seconds: float = 0.0  # the good and UCF50 clips only (what clips/s is measured on)
    video_seconds: float = 0.0

    def lines(self) -> list[str]:
        classes = ", ".join(f"{c} {n}" for c, n in self.per_class.items())
        n = len(self.clip_ids) + len(self.ucf50_ids)
        return [
            (
                f"wrote {len(self.clip_ids)} clips of {len(self.per_class)} audio classes and {len(self.ucf50_ids)} "
                f"of classes without audio ({self.video_seconds / 60:.1f} min of video) to {self.out_dir} in "
                f"{self.seconds:.1f} s ({n / max(self.clip_seconds, 1e-9):.2f} clips/s)"
            ),
            f"  per class: {classes}; {self.mono} with mono audio, the rest stereo",
            f"  split files: {self.out_dir / LISTS_DIR} (partitions 1-3)",
        ]


# --- the plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to make one clip, so a worker process needs nothing else."""

    class_name: str
    group: int
    clip: int
    n_frames: int
    fps: Fraction
    channels: int  # 0: no audio stream
    audio_index: int  # classInd index of the class the sound shows (another one under label noise)
    video_index: int
    audio_cue: float
    video_cue: float
    seed: int

    @property
    def path(self) -> str:
        return clip_path(self.class_name, self.group, self.clip)

    @property
    def id(self) -> str:
        return file_stem(self.class_name, self.group, self.clip)


@dataclass(frozen=True)
class CorpusPlan:
    classes: tuple[str, ...]  # the audio classes, in CLASS_ORDER
    ucf50: tuple[str, ...]
    clips: list[ClipPlan]  # good audio-class clips, then UCF50 clips, each sorted by path


def plan_clip(
    config: SynthConfig, class_name: str, group: int, clip: int, classes: tuple[str, ...]
) -> ClipPlan:
    """One clip: its length, channels and the class each modality shows (both label-noise draws are always
    made, so changing one noise level changes nothing else)."""
    rng = clip_rng(config.seed, file_stem(class_name, group, clip), 0)
    audio_class = class_name in AUDIO_CLASSES
    fps = Fraction(25) if audio_class else UCF50_FPS
    n_frames = round(rng.uniform(config.min_seconds, config.max_seconds) * fps)
    mono = rng.random() < config.mono_fraction
    choices = classes if audio_class else ()  # a class without audio shows itself
    shown = [
        OFFICIAL_INDEX[shown_label(rng, class_name, choices, noise)]
        for noise in (config.audio_noise, config.video_noise)
    ]
    return ClipPlan(
        class_name,
        group,
        clip,
        n_frames,
        fps,
        (1 if mono else 2) if audio_class else 0,
        shown[0],
        shown[1],
        config.audio_cue,
        config.video_cue,
        config.seed,
    )


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    """The classes and good clips to generate (ValueError for sizes the real layout cannot hold)."""
    if config.with_defects and config.groups > 24:
        raise ValueError("groups must be at most 24 with defects: their clips take the next group")
    classes = CLASS_ORDER[: config.classes]
    ucf50 = UCF50_CLASSES[: config.ucf50_classes]
    clips = [
        plan_clip(config, c, g, k, classes)
        for c in (*sorted(classes, key=ALL_CLASSES.index), *ucf50)
        for g in range(1, config.groups + 1)
        for k in range(1, config.clips_per_group + 1)
    ]
    return CorpusPlan(classes, ucf50, clips)


def partition_band(groups: int) -> int:
    """Groups each partition tests: 7 of the real 25, scaled, at least 1; three bands always leave train
    at least one group."""
    return max(1, 7 * (groups - 1) // 24)


def split_of(group: int, partition: int, groups: int) -> str:
    """'test' when `group` is in partition `partition`'s band (groups 1..b, b+1..2b, 2b+1..3b), else 'train'."""
    band = partition_band(groups)
    return "test" if (partition - 1) * band < group <= partition * band else "train"


def list_texts(plan: CorpusPlan, groups: int, extra: dict[str, list[tuple[int, str]]]) -> dict[str, str]:
    """{file name: text} of the stand-in's ucfTrainTestlist/: classInd.txt and the train / test lists of
    partitions 1-3 naming every planned clip; `extra` inserts lines (file -> [(0-based position, line)]).
    Windows line endings and a trailing empty line, which the official files may have."""
    files = {"classInd.txt": [f"{i} {c}" for c, i in OFFICIAL_INDEX.items()]}
    for partition in PARTITIONS:
        train, test = [], []
        for clip in plan.clips:
            rel = clip.path.removeprefix(f"{VIDEO_DIR}/")
            if split_of(clip.group, partition, groups) == "train":
                train.append(f"{rel} {OFFICIAL_INDEX[clip.class_name]}")
            else:
                test.append(rel)
        files[f"trainlist0{partition}.txt"], files[f"testlist0{partition}.txt"] = train, test
    for name, lines in extra.items():
        for position, line in sorted(lines):
            files[name].insert(position, line)
    return {name: "\r\n".join(lines) + "\r\n\r\n" for name, lines in files.items()}


# --- one clip ----------------------------------------------------------------------------------------------


def render_clip(plan: ClipPlan, width: int = 320, height: int = 240) -> tuple[np.ndarray, np.ndarray | None]:
    """(frames uint8 [T, H, W, 3], audio float32 [C, N] at 44.1 kHz or None) of one clip."""
    group_key = f"{plan.class_name}_g{plan.group:02d}"
    background = render.scene(width, height, clip_rng(plan.seed, group_key, 1))
    frames = render.render_frames(
        background,
        plan.n_frames,
        float(plan.fps),
        plan.video_index,
        plan.video_cue,
        clip_rng(plan.seed, plan.id, 2),
    )
    if not plan.channels:
        return frames, None
    room = clip_rng(plan.seed, group_key, 3).uniform(0.3, 0.95)  # the group's room: its noise colour
    n_samples = round(plan.n_frames / plan.fps * render.SAMPLE_RATE)
    audio = render.render_audio(
        n_samples, plan.audio_index, plan.audio_cue, plan.channels, room, clip_rng(plan.seed, plan.id, 4)
    )
    return frames, audio


def make_clip(plan: ClipPlan, out_dir: Path) -> float:
    """Write one clip's AVI; returns its duration in seconds."""
    frames, audio = render_clip(plan)
    media.write_avi(out_dir / plan.path, frames, plan.fps, audio)
    return float(plan.n_frames / plan.fps)


def _make_clip_job(job: tuple[ClipPlan, Path]) -> float:
    return make_clip(*job)


# --- defects -----------------------------------------------------------------------------------------------


def make_defects(out_dir: Path, config: SynthConfig, plan: CorpusPlan) -> tuple[list[dict], dict]:
    """Write UCF101's kinds of bad input into group `groups + 1` (outside the split files unless the defect is
    a list line); returns (the records of synth_defects.json, the lines to add to the split files). Each
    record: id (None for a list line that names no clip), file (relative to OUT), defect, expected_reason (a
    Reason code; "ok" for the clip that just passes), acceptable_reasons (every code that describes it, the
    first is expected_reason), and `line` for a list line."""
    records: list[dict] = []
    group = config.groups + 1
    first = plan.classes[0]  # HandstandPushups

    def record(clip_id, file, defect, expected, also=(), **more):
        records.append(defect_record(clip_id, file, defect, expected, also, **more))

    def clip(number: int, class_name: str = first, **changes) -> ClipPlan:
        return replace(plan_clip(config, class_name, group, number, plan.classes), **changes)

    def write(c: ClipPlan) -> Path:
        make_clip(c, out_dir)
        return out_dir / c.path

    # as the real corpus's 8 (HandStandPushups g14, BasketballDunk g15 c04-c07): an audio class, no sound
    c = clip(1, channels=0)
    write(c)
    record(c.id, c.path, "audio-class-without-audio", Reason.NO_AUDIO_STREAM)

    c = clip(2)
    write_bytes(out_dir / c.path, b"")
    record(c.id, c.path, "empty-avi", Reason.EMPTY_FILE)

    c = clip(3, n_frames=100)  # cut mid-stream, as an interrupted download leaves it
    data = write(c).read_bytes()
    write_bytes(out_dir / c.path, data[: len(data) // 2 + 7])  # +7: inside a chunk, not on a boundary
    record(c.id, c.path, "truncated-avi", Reason.DECODE_ERROR, (Reason.TOO_SHORT,))

    c = clip(4)
    write_bytes(out_dir / c.path, lfs_stub(zlib.crc32(c.id.encode()), 600_000))
    record(c.id, c.path, "lfs-pointer-avi", Reason.LFS_POINTER)

    for number, frames, defect, expected in (
        (5, 50, "too-short-2s", Reason.TOO_SHORT),
        (6, 75, "too-short-75-frames", Reason.TOO_SHORT),  # 3 frames at 1 fps: frames 0, 25, 50
        (7, 76, "just-long-enough-76-frames", "ok"),  # frame 75 (3.0 s) is the fourth
    ):
        c = clip(number, n_frames=frames)
        write(c)
        record(c.id, c.path, defect, expected)

    c = clip(1, UCF50_CLASSES[0], channels=2, fps=Fraction(25))  # excluded by class even with a sound track
    write(c)
    record(c.id, c.path, "excluded-class-with-audio", Reason.EXCLUDED_CLASS)

    c = clip(8)  # fine media, but its split-file line gives the wrong class index
    write(c)
    rel = c.path.removeprefix(f"{VIDEO_DIR}/")
    wrong = OFFICIAL_INDEX[first] % len(ALL_CLASSES) + 1
    train_lines = sum(1 for p in plan.clips if split_of(p.group, 1, config.groups) == "train")
    lines = {"trainlist01.txt": [(train_lines, f"{rel} {wrong}")]}
    file = f"{LISTS_DIR}/trainlist01.txt"
    record(c.id, file, "malformed-list-line-wrong-index", Reason.BAD_ANNOTATION, line=train_lines + 1)

    lines["testlist01.txt"] = [(1, "not a clip path")]  # names no clip: reported with file and line only
    record(None, f"{LISTS_DIR}/testlist01.txt", "malformed-list-line-no-clip", Reason.BAD_ANNOTATION, line=2)

    c = clip(9)  # a browser's second download of a file
    stem = f"{c.id} (1)"
    path = f"{VIDEO_DIR}/{first}/{stem}.avi"
    frames, audio = render_clip(c)
    media.write_avi(out_dir / path, frames, c.fps, audio)
    record(stem, path, "bad-name-download-copy", Reason.BAD_NAME)
    return records, lines


# --- the whole corpus ----------------------------------------------------------------------------------


def synth_ucf101(out_dir: Path, config: SynthConfig) -> SynthSummary:
    """Generate a synthetic UCF101 corpus in `out_dir` (created if needed) and return what was made.

    The same config gives byte-identical files, whatever `workers` is."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    plan = plan_corpus(config)
    for class_name in (*plan.classes, *plan.ucf50, *((UCF50_CLASSES[0],) if config.with_defects else ())):
        fresh_folder(out_dir / VIDEO_DIR / class_name)
    fresh_folder(out_dir / LISTS_DIR)
    jobs = [(c, out_dir) for c in plan.clips]

    durations = run_jobs(
        _make_clip_job,
        jobs,
        workers=config.workers,
        desc="synth ucf101",
        unit="clip",
        progress=config.progress,
    )
    clip_seconds = time.perf_counter() - start

    defects, extra_lines = make_defects(out_dir, config, plan) if config.with_defects else ([], {})
    for name, text in list_texts(plan, config.groups, extra_lines).items():
        write_bytes(out_dir / LISTS_DIR / name, text.encode())
    if defects:
        write_defects(out_dir, defects)
    good = [c for c in plan.clips if c.channels]
    return SynthSummary(
        out_dir=out_dir,
        clip_ids=sorted(c.id for c in good),
        ucf50_ids=sorted(c.id for c in plan.clips if not c.channels),
        per_class=dict(sorted(Counter(c.class_name for c in good).items())),
        mono=sum(c.channels == 1 for c in good),
        defects=defects,
        seconds=time.perf_counter() - start,
        clip_seconds=clip_seconds,
        video_seconds=float(sum(durations)),
    )
