"""The synthetic stand-in of tones: `mlbpipe synth tones OUT` writes a copy in its layout."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from mlbpipe_tones import CLASSES
from pipeline.standins.base import StandIn, Summary

SAMPLE_RATE, FPS, SIZE = 16000, 10, 32


@dataclass(frozen=True)
class TonesConfig:
    """<class>/<class>_gNN.wav (16 kHz) and .avi (MJPEG, 32 x 32 at 10 fps) for the classes low and high:
    a 300 Hz or 700 Hz tone beside a dark or bright picture."""

    groups: int = field(default=4, metadata={"help": "Groups gNN (at least 3), one clip of each class each."})
    seconds: float = field(default=2.0, metadata={"help": "Length of every clip, in seconds."})


def check(config: TonesConfig) -> None:
    if config.groups < 3:
        raise ValueError(f"groups must be at least 3 (train, validation, test), got {config.groups}")


def synthesize(out: Path, config: TonesConfig) -> Summary:
    start = time.perf_counter()
    for index, name in enumerate(CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for group in range(1, config.groups + 1):
            write_clip(out / name / f"{name}_g{group:02d}", index, config.seconds)
    return Summary(out_dir=out, seconds=time.perf_counter() - start)


def write_clip(stem: Path, index: int, seconds: float) -> None:
    """The WAV and AVI of one clip of class `index` (0: low and dark, 1: high and bright)."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(stem.with_suffix(".wav"), 0.3 * np.sin(2 * np.pi * (300 + 400 * index) * t), SAMPLE_RATE)
    video = cv2.VideoWriter(str(stem.with_suffix(".avi")), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIZE, SIZE))
    for _ in range(round(seconds * FPS)):
        video.write(np.full((SIZE, SIZE, 3), 60 + 120 * index, np.uint8))
    video.release()


STAND_IN = StandIn("tones", TonesConfig, synthesize, check)
