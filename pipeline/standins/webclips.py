"""What the stand-ins of the web-video presets share (VGGSound, Kinetics-Sounds): a plan of clips cut from
YouTube videos, and the MP4 of one clip (H.264 + AAC, as the public copies), whose class shows as a tone in
the sound and a flat colour in the pictures. Each stand-in writes its own annotation files and names."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.corpora.generic.layout import STAND_IN_MARKER
from pipeline.standins.base import Summary
from pipeline.standins.common import (
    defect_record,
    fresh_folder,
    mux_pictures,
    mux_sound,
    progress_field,
    run_jobs,
    seed_field,
    workers_field,
    write_bytes,
    write_defects,
)

SAMPLE_RATE = 16000
FPS = 10
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


@dataclass
class WebClipsConfig:
    """Clips of `classes` classes, `videos_per_class` YouTube videos each (one clip per video), a quarter of
    the videos in the test list; the sound is a tone of the class's own pitch, the pictures a flat colour of
    its own. As every real copy, the copy lacks some listed clips. With defects: a malformed annotation row
    and a clip without an audio stream, listed in synth_defects.json with the reason each must get."""

    classes: int = field(default=3, metadata={"help": "Number of classes (2-20)."})
    videos_per_class: int = field(
        default=4, metadata={"help": "YouTube videos per class, one clip each (>= 4)."}
    )
    seconds: float = field(default=10.0, metadata={"help": "Length of each clip in seconds (real: 10)."})
    width: int = field(default=64, metadata={"help": "Frame width in pixels."})
    height: int = field(default=48, metadata={"help": "Frame height in pixels."})
    lacking: int = field(default=1, metadata={"help": "Listed clips the copy lacks (as on YouTube, gone)."})
    with_defects: bool = field(
        default=True, metadata={"help": "Add a malformed row and a clip without an audio stream."}
    )
    seed: int = seed_field()
    workers: int = workers_field()
    progress: bool = progress_field()


def check(config: WebClipsConfig) -> None:
    """Options a stand-in cannot satisfy (ValueError naming the option)."""
    if not 2 <= config.classes <= 20:
        raise ValueError(f"classes must be in 2-20, got {config.classes!r}")
    if config.videos_per_class < 4:
        raise ValueError(f"videos_per_class must be at least 4, got {config.videos_per_class!r}")
    if not 1 <= config.seconds <= 30:
        raise ValueError(f"seconds must be in 1-30, got {config.seconds!r}")
    if config.lacking < 0 or config.lacking >= config.classes * config.videos_per_class:
        raise ValueError(f"lacking must be in 0-{config.classes * config.videos_per_class - 1}")
    if config.seed < 0 or config.workers < 1:
        raise ValueError("seed must be >= 0 and workers >= 1")


@dataclass(frozen=True)
class Clip:
    youtube_id: str
    start: int
    label: int
    split: str  # train | test
    audio: bool = True
    written: bool = True  # False: listed, but the copy lacks it


def plan(config: WebClipsConfig, validation: bool = False) -> list[Clip]:
    """Every listed clip, the same for the same options: YouTube-like ids of 11 characters, a quarter of each
    class's videos in test (and, with `validation`, a quarter in val), the last `lacking` clips unwritten and, with defects, the first clip of the last
    class without an audio stream."""
    rng = random.Random(config.seed)
    clips = []
    for label in range(config.classes):
        for video in range(config.videos_per_class):
            youtube_id = "".join(rng.choice(_ID_CHARS) for _ in range(11))
            split = {3: "test", 2: "val" if validation else "train"}.get(video % 4, "train")
            clips.append(Clip(youtube_id, rng.randrange(0, 300), label, split))
    if config.with_defects:
        mute = config.classes * config.videos_per_class - config.videos_per_class
        clips[mute] = Clip(clips[mute].youtube_id, clips[mute].start, clips[mute].label, "train", audio=False)
    for i in range(len(clips) - config.lacking, len(clips)):
        c = clips[i]
        clips[i] = Clip(c.youtube_id, c.start, c.label, c.split, written=False)
    return clips


def write_clip(job: tuple[str, int, int, float, tuple[int, int], bool]) -> float:
    """Write one MP4: (path, label, classes, seconds, (width, height), with audio); returns its seconds."""
    import av

    path, label, classes, seconds, (width, height), audio = job
    colour = np.array([255 * label // max(classes - 1, 1), 128, 255 - 255 * label // max(classes - 1, 1)])
    pictures = [np.broadcast_to(colour.astype(np.uint8), (height, width, 3)).copy()] * round(seconds * FPS)
    tmp = Path(path).with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": "10"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        mux_pictures(container, video, pictures)
        if sound is not None:
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            tone = (0.3 * np.sin(2 * np.pi * (300 + 150 * label) * t)).astype(np.float32)
            source = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
            source.sample_rate = SAMPLE_RATE
            mux_sound(
                container, sound, source, av.AudioResampler(format="fltp", layout="mono", rate=SAMPLE_RATE)
            )
    tmp.replace(path)
    return seconds


@dataclass(kw_only=True)
class WebClipsSummary(Summary):
    title: str
    listed: int
    written: int

    def lines(self) -> list[str]:
        where = f"wrote a {self.title} stand-in to {self.out_dir} in {self.seconds:.1f} s"
        return [f"{where}: {self.written} of the {self.listed} listed clips (a real copy lacks some too)"]


def write_copy(
    out: Path,
    config: WebClipsConfig,
    clips: list[Clip],
    files: list[str],
    annotations: dict[str, str],
    defects: list[dict],
    title: str,
) -> WebClipsSummary:
    """Write `annotations` ({relative path: text}), the MP4 of every written clip at `files` (relative
    paths, one per clip), the stand-in marker and the defects."""
    import time

    began = time.monotonic()
    fresh_folder(out)
    for relative, text in annotations.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(out / relative, text.encode())
    jobs = []
    for clip, relative in zip(clips, files, strict=True):
        if clip.written:
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            size = (config.width, config.height)
            jobs.append((str(out / relative), clip.label, config.classes, config.seconds, size, clip.audio))
    run_jobs(write_clip, jobs, workers=config.workers, desc=title, unit="clip", progress=config.progress)
    write_bytes(out / STAND_IN_MARKER, (json.dumps({"stand_in": title, "seed": config.seed}) + "\n").encode())
    if defects:
        write_defects(out, defects)
    return WebClipsSummary(
        out_dir=out, defects=defects, seconds=time.monotonic() - began, title=title, listed=len(clips),
        written=len(jobs),
    )  # fmt: skip


__all__ = ["Clip", "WebClipsConfig", "check", "defect_record", "plan", "write_copy"]
