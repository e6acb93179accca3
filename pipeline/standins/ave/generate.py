"""A synthetic corpus in the exact layout and row format of a real AVE copy.

    OUT/AVE/<id>.mp4           H.264 + AAC, 10 s, WIDTH x HEIGHT at FPS; YouTube-like ids (11 characters
                               of A-Z a-z 0-9 - _, so some start with - as real ones do)
    OUT/Annotations.txt        every row, Category&VideoID&Quality&StartTime&EndTime, grouped by category
    OUT/trainSet.txt, valSet.txt, testSet.txt
                               the split: of the videos taken round-robin over the categories, every 10th
                               from the 9th goes to validation and every 10th from the 10th to test (the
                               real split is 81 / 10 / 10 %)
    OUT/synth_defects.json     only with `with_defects`: every planted defect and the reason code the
                               validator must give it (docs/CONTRACTS.md), `ok` for what must be accepted,
                               `ignored` for what must land in the scan's ignored list

Each video has one event of whole seconds, at least 2 s long (half of them the whole 10 s, as most real
rows are), during which both modalities show the category's cue (pipeline.standins.ave.scene).

Core: `synth_ave(out_dir, SynthConfig(...)) -> SynthSummary`. CLI: `mlbpipe synth ave OUT`.
"""

from __future__ import annotations

import string
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.corpora.ave.layout import ANNOTATIONS, CATEGORIES, HEADER, LIST_FILES, SPLIT_LISTS, VIDEO_DIR
from pipeline.manifest import Reason
from pipeline.standins.ave import media, scene
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

HEADERS = ("annotations", "all", "none")
SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)  # AAC rates; YouTube's is 44100
LINE_ENDINGS = {"lf": "\n", "crlf": "\r\n"}
VIDEO_SECONDS = 10
MIN_EVENT_S = 2
ID_ALPHABET = string.ascii_letters + string.digits + "-_"
ID_LENGTH = 11
SPLIT_FILE = {split: name for name, split in SPLIT_LISTS.items()}


@dataclass(frozen=True)
class SynthConfig:
    """AVE/<id>.mp4 (H.264 + AAC, 10 s), Annotations.txt, trainSet.txt, valSet.txt, testSet.txt, for AVE's
    28 categories. Each video has one event (whole seconds, at least 2 s) during which the audio carries
    the category's chord and the picture its coloured shape; outside it, only background noise and a
    drifting grey square.

    Cue strengths: 0 = the modality carries no category, 1 = the built-in level. Noise: the fraction of
    videos whose cue in that modality shows a random other category (the rows keep the true one).
    Defaults: audio the easy modality, video weaker, as on the real corpus."""

    videos_per_category: int = field(
        default=4, metadata={"help": "Videos per category (28 categories; the real corpus: 60-188)."}
    )
    audio_cue: float = field(
        default=1.0,
        metadata={"help": "Strength of the category's chord during the event: 0 = none, 1 = built-in level."},
    )
    video_cue: float = field(
        default=0.6,
        metadata={
            "help": "Strength (opacity) of the category's shape during the event: 0 = none, >= 1.1 = opaque."
        },
    )
    audio_noise: float = field(
        default=0.1,
        metadata={"help": "Fraction of videos whose chord is another category's (audio label noise)."},
    )
    video_noise: float = field(
        default=0.25,
        metadata={"help": "Fraction of videos whose shape is another category's (video label noise)."},
    )
    width: int = field(
        default=640, metadata={"help": "Frame width (YouTube 360p: 640 or 480; smaller is faster)."}
    )
    height: int = field(default=360, metadata={"help": "Frame height (YouTube 360p: 360)."})
    fps: int = field(default=25, metadata={"help": "Frame rate (YouTube: 25 or 30)."})
    sample_rate: int = field(
        default=44100, metadata={"help": "AAC sample rate in Hz (YouTube: 44100; 16000 is faster)."}
    )
    channels: int = field(default=2, metadata={"help": "Audio channels: 1 or 2 (YouTube: 2)."})
    header: str = field(
        default="annotations",
        metadata={
            "help": "Which files start with the header row Category&VideoID&...: 'annotations' "
            "(Annotations.txt only, as the AVE release), 'all' or 'none'."
        },
    )
    line_endings: str = field(
        default="lf", metadata={"help": "Line endings of the text files: 'lf' or 'crlf'."}
    )
    seed: int = seed_field()
    workers: int = workers_field()
    with_defects: bool = field(
        default=False,
        metadata={
            "help": "Also write AVE's defect kinds (missing, empty, truncated and stream-less videos, LFS "
            "stubs, silence, a segment past the end, malformed and disagreeing duplicate rows, ...), each "
            "listed with the reason the validator must give it in OUT/synth_defects.json."
        },
    )
    progress: bool = progress_field()

    def __post_init__(self) -> None:
        if not isinstance(self.videos_per_category, int) or self.videos_per_category < 1:
            raise ValueError(
                f"videos_per_category must be a positive integer, got {self.videos_per_category!r}"
            )
        check_common_options(self)
        for key in ("width", "height"):
            value = getattr(self, key)
            if not 32 <= value <= 1920 or value % 2:
                raise ValueError(f"{key} must be an even number in [32, 1920] (H.264 4:2:0), got {value!r}")
        if not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be in [1, 60], got {self.fps!r}")
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(
                f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}, got {self.sample_rate!r}"
            )
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels!r}")
        if self.header not in HEADERS:
            raise ValueError(f"header must be one of {', '.join(HEADERS)}, got {self.header!r}")
        if self.line_endings not in LINE_ENDINGS:
            raise ValueError(
                f"line_endings must be one of {', '.join(LINE_ENDINGS)}, got {self.line_endings!r}"
            )


@dataclass(kw_only=True)
class SynthSummary(Summary):
    """What `synth_ave` made."""

    video_ids: list[str]  # the good videos, sorted
    per_category: dict[str, int]
    per_split: dict[str, int]
    media_seconds: float = 0.0  # of video written, good videos only

    def lines(self) -> list[str]:
        counts = sorted(set(self.per_category.values()))
        per_category = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        splits = ", ".join(f"{split} {n}" for split, n in self.per_split.items())
        return [
            (
                f"wrote {len(self.video_ids)} videos ({self.media_seconds / 60:.1f} min) in "
                f"{len(self.per_category)} categories to {self.out_dir} in {self.seconds:.1f} s"
            ),
            f"  videos per category: {per_category}; per split: {splits}",
        ]


# --- planning ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to make one MP4, so a worker process needs nothing else."""

    id: str
    category: int  # the true category (the rows')
    start: int  # the event, whole seconds
    end: int
    audio_category: int | None  # the category whose cue the audio carries (another one under label noise)
    video_category: int | None
    width: int
    height: int
    fps: int
    sample_rate: int
    channels: int
    audio_cue: float
    video_cue: float
    seed: int
    seconds: float = VIDEO_SECONDS
    streams: str = "av"  # av | video (no audio stream) | audio (no video stream)
    silent: bool = False  # an audio stream of digital silence

    def row(self, category: int | None = None) -> str:
        name = CATEGORIES[self.category if category is None else category]
        return f"{name}&{self.id}&good&{self.start}&{self.end}"


@dataclass(frozen=True)
class DefectPlan:
    """One planted defect: the video it needs (None: no file), what is done to the file afterwards, the
    rows it adds as (file, text), and what the validator must say."""

    defect: str
    video_id: str
    expected: str  # a Reason code, "ok" or "ignored"
    media: VideoPlan | None
    rows: tuple[tuple[str, str], ...]
    damage: str | None = None  # empty | lfs | truncate
    acceptable: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorpusPlan:
    videos: list[VideoPlan]  # the good videos, in row order (category, then index)
    splits: dict[str, str]  # video id -> split
    defects: list[DefectPlan]


def youtube_id(rng: np.random.Generator) -> str:
    return "".join(ID_ALPHABET[i] for i in rng.integers(0, len(ID_ALPHABET), ID_LENGTH))


def _event(rng: np.random.Generator) -> tuple[int, int]:
    """Half the videos: the whole 10 s (as two thirds of the real rows); else a random whole-second event
    of at least MIN_EVENT_S. Every draw is always made."""
    whole, duration = rng.random() < 0.5, int(rng.integers(MIN_EVENT_S, VIDEO_SECONDS + 1))
    start = int(rng.integers(0, VIDEO_SECONDS - duration + 1))
    return (0, VIDEO_SECONDS) if whole else (start, start + duration)


def plan_video(video_id: str, category: int, config: SynthConfig) -> VideoPlan:
    rng = clip_rng(config.seed, video_id, 1)
    start, end = _event(rng)
    return VideoPlan(
        id=video_id,
        category=category,
        start=start,
        end=end,
        audio_category=shown_label(rng, category, range(len(CATEGORIES)), config.audio_noise),
        video_category=shown_label(rng, category, range(len(CATEGORIES)), config.video_noise),
        width=config.width,
        height=config.height,
        fps=config.fps,
        sample_rate=config.sample_rate,
        channels=config.channels,
        audio_cue=config.audio_cue,
        video_cue=config.video_cue,
        seed=config.seed,
    )


class _Ids:
    """YouTube-like ids, unique within the corpus; an id depends only on the seed and its key."""

    def __init__(self, seed: int):
        self.seed, self.taken = seed, set()

    def __call__(self, *key: int) -> str:
        for attempt in range(100):
            video_id = youtube_id(np.random.default_rng([self.seed, *key, attempt]))
            if video_id not in self.taken:
                self.taken.add(video_id)
                return video_id
        raise RuntimeError(f"no free video id for {key}")  # 64^11 ids: never in practice


# (defect, expected reason, other acceptable reasons). The first four are seen in the real lists.
DEFECTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("duplicate-disagrees", Reason.DUPLICATE_ID, ()),  # one video, two categories, one list
    ("duplicate-across-lists", Reason.DUPLICATE_ID, ()),  # one video, two categories, train and test
    ("empty-event", Reason.BAD_ANNOTATION, ()),  # `...&0&0`, as trainSet.txt line 64
    ("identical-repeat", "ok", ()),  # the same row twice: one clip
    ("missing-video", Reason.MISSING_FILE, ()),
    ("empty-mp4", Reason.EMPTY_FILE, ()),
    ("lfs-pointer", Reason.LFS_POINTER, ()),
    ("truncated-mp4", Reason.DECODE_ERROR, ()),
    ("no-audio-stream", Reason.NO_AUDIO_STREAM, ()),
    ("no-video-stream", Reason.NO_VIDEO_STREAM, ()),
    ("silent-audio", Reason.SILENT_AUDIO, ()),
    ("segment-past-end", Reason.SEGMENT_OUTSIDE, ()),  # a 6 s video whose row says [0, 10)
    ("unknown-category", Reason.BAD_ANNOTATION, ()),
    ("wrong-field-count", Reason.BAD_ANNOTATION, ()),
    ("row-without-id", "ignored", ()),  # the file name where the id should be: no clip can be made
    ("unlisted-video", "ignored", ()),  # a video no row names
)


def plan_defects(config: SynthConfig, new_id: _Ids) -> list[DefectPlan]:
    plans = []
    train = "trainSet.txt"
    for number, (defect, expected, acceptable) in enumerate(DEFECTS):
        video_id = new_id(2, number)
        category = number % len(CATEGORIES)
        video = replace(plan_video(video_id, category, config), start=0, end=VIDEO_SECONDS)
        row = video.row()
        rows: tuple[tuple[str, str], ...] = ((ANNOTATIONS, row), (train, row))
        media_plan: VideoPlan | None = video
        damage = None
        if defect == "duplicate-disagrees":
            second = video.row((category + 1) % len(CATEGORIES))
            rows = ((ANNOTATIONS, row), (ANNOTATIONS, second), (train, row), (train, second))
        elif defect == "duplicate-across-lists":
            second = video.row((category + 1) % len(CATEGORIES))
            rows = ((ANNOTATIONS, row), (ANNOTATIONS, second), (train, row), ("testSet.txt", second))
        elif defect == "empty-event":
            row = f"{CATEGORIES[category]}&{video_id}&good&0&0"
            rows = ((ANNOTATIONS, row), (train, row))
        elif defect == "identical-repeat":
            rows = ((ANNOTATIONS, row), (train, row), (train, row))
        elif defect == "missing-video":
            media_plan, rows = None, ((ANNOTATIONS, row), ("testSet.txt", row))
        elif defect in ("empty-mp4", "lfs-pointer", "truncated-mp4"):
            damage = {"empty-mp4": "empty", "lfs-pointer": "lfs", "truncated-mp4": "truncate"}[defect]
        elif defect == "no-audio-stream":
            media_plan = replace(video, streams="video")
        elif defect == "no-video-stream":
            media_plan = replace(video, streams="audio")
        elif defect == "silent-audio":
            media_plan = replace(video, silent=True)
        elif defect == "segment-past-end":
            media_plan = replace(video, seconds=6.0)
        elif defect == "unknown-category":
            row = f"{CATEGORIES[category]}s&{video_id}&good&0&10"
            rows = ((ANNOTATIONS, row), (train, row))
        elif defect == "wrong-field-count":
            row = f"{CATEGORIES[category]}&{video_id}&good&0"
            rows = ((ANNOTATIONS, row), (train, row))
        elif defect == "row-without-id":
            video_id = f"{video_id}.mp4"
            media_plan, rows = None, (("valSet.txt", f"{CATEGORIES[category]}&{video_id}&good&0&10"),)
        elif defect == "unlisted-video":
            rows = ()
        plans.append(DefectPlan(defect, video_id, expected, media_plan, rows, damage, acceptable))
    return plans


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    """The videos, their splits and the defects of `config`, before anything is written. A good video's
    id, event and cues depend only on the seed, its category and its index, so adding videos or defects
    leaves the others unchanged."""
    new_id = _Ids(config.seed)
    per_category = [
        [
            plan_video(new_id(1, category, index), category, config)
            for index in range(config.videos_per_category)
        ]
        for category in range(len(CATEGORIES))
    ]
    splits = {}
    round_robin = [videos[index] for index in range(config.videos_per_category) for videos in per_category]
    for position, video in enumerate(round_robin):
        splits[video.id] = {8: "validation", 9: "test"}.get(position % 10, "train")
    videos = [video for videos in per_category for video in videos]
    defects = plan_defects(config, new_id) if config.with_defects else []
    return CorpusPlan(videos, splits, defects)


# --- writing -----------------------------------------------------------------------------------------


def make_video(plan: VideoPlan, out_dir: Path) -> float:
    """Write one MP4; returns its duration in seconds."""
    n_frames, n_samples = round(plan.seconds * plan.fps), round(plan.seconds * plan.sample_rate)
    event = (float(plan.start), float(plan.end))
    audio = frame = None
    if plan.streams != "video":
        if plan.silent:
            audio = np.zeros((plan.channels, n_samples), np.float32)  # [C, N]
        else:
            audio = scene.render_audio(
                n_samples,
                plan.sample_rate,
                plan.channels,
                plan.audio_category,
                plan.audio_cue,
                event,
                clip_rng(plan.seed, plan.id, 2),
            )  # [C, N]
    if plan.streams != "audio":
        look = scene.random_look(clip_rng(plan.seed, plan.id, 3))
        frame = scene.frame_maker(
            look, plan.width, plan.height, plan.fps, plan.video_category, plan.video_cue, event
        )
    media.write_mp4(
        out_dir / VIDEO_DIR / f"{plan.id}.mp4", frame, n_frames, plan.fps, audio, plan.sample_rate
    )
    return plan.seconds


def _make_video_job(job: tuple[VideoPlan, Path]) -> float:
    return make_video(*job)


def list_texts(plan: CorpusPlan, config: SynthConfig) -> tuple[dict[str, bytes], dict[tuple[str, str], int]]:
    """({file name: its bytes}, {(defect, file name): line number of its first row there})."""
    lines: dict[str, list[tuple[str, str | None]]] = {name: [] for name in LIST_FILES}  # (row, defect)
    for video in plan.videos:
        lines[ANNOTATIONS].append((video.row(), None))
        lines[SPLIT_FILE[plan.splits[video.id]]].append((video.row(), None))
    for defect in plan.defects:
        for name, row in defect.rows:
            lines[name].append((row, defect.defect))
    texts, where = {}, {}
    end = LINE_ENDINGS[config.line_endings]
    for name, rows in lines.items():
        header = config.header == "all" or (config.header == "annotations" and name == ANNOTATIONS)
        offset = 2 if header else 1
        for index, (_, defect) in enumerate(rows):
            if defect is not None:
                where.setdefault((defect, name), index + offset)
        body = [*(["&".join(HEADER)] if header else []), *(row for row, _ in rows)]
        texts[name] = "".join(line + end for line in body).encode()
    return texts, where


def _defect_record(defect: DefectPlan, where: dict[tuple[str, str], int]) -> dict:
    """The synth_defects.json record: where to look is the video, or for a bad row its first place in
    LIST_FILES order (the one the validator names)."""
    row_level = defect.expected == Reason.BAD_ANNOTATION or defect.defect == "row-without-id"
    if row_level:
        name = min((name for name, _ in defect.rows), key=LIST_FILES.index)
        file = f"{name}:{where[(defect.defect, name)]}"
    else:
        file = f"{VIDEO_DIR}/{defect.video_id}.mp4"
    return defect_record(defect.video_id, file, defect.defect, defect.expected, defect.acceptable)


def damage_video(defect: DefectPlan, out_dir: Path) -> None:
    """Empty, replace by an LFS stub, or cut in the middle (as an interrupted download leaves it) the
    video `defect.media` was written to."""
    path = out_dir / VIDEO_DIR / f"{defect.video_id}.mp4"
    data = path.read_bytes()
    if defect.damage == "empty":
        write_bytes(path, b"")
    elif defect.damage == "lfs":
        write_bytes(path, lfs_stub(zlib.crc32(defect.video_id.encode()), len(data)))
    elif defect.damage == "truncate":
        write_bytes(path, data[: len(data) // 2 + 7])  # +7: inside a box, not on a boundary


def synth_ave(out_dir: Path, config: SynthConfig) -> SynthSummary:
    """Generate a synthetic AVE corpus in `out_dir` (created if needed) and return what was made.

    The same config gives byte-identical files, whatever `workers` is."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    plan = plan_corpus(config)
    fresh_folder(out_dir / VIDEO_DIR)
    fresh_folder(out_dir)  # the list files
    jobs = [(video, out_dir) for video in plan.videos]
    jobs += [(defect.media, out_dir) for defect in plan.defects if defect.media is not None]

    durations = run_jobs(
        _make_video_job,
        jobs,
        workers=config.workers,
        desc="synth ave",
        unit="video",
        progress=config.progress,
    )
    for defect in plan.defects:
        if defect.damage is not None:
            damage_video(defect, out_dir)

    texts, where = list_texts(plan, config)
    for name, data in texts.items():
        write_bytes(out_dir / name, data)
    records = [_defect_record(defect, where) for defect in plan.defects]
    if config.with_defects:
        write_defects(out_dir, records)
    split_counts = Counter(plan.splits.values())
    return SynthSummary(
        out_dir=out_dir,
        video_ids=sorted(video.id for video in plan.videos),
        per_category={name: config.videos_per_category for name in CATEGORIES},
        per_split={split: split_counts.get(split, 0) for split in ("train", "validation", "test")},
        defects=records,
        seconds=time.perf_counter() - start,
        media_seconds=float(sum(durations[: len(plan.videos)])),
    )
