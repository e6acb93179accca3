"""Tiny media files made with PyAV and soundfile, whose content a test can read back: a tone (WAV), an MP4
and an FLV whose frame i is a flat grey of level 8 * i. And a Git LFS pointer, what a clone without
`git lfs pull` leaves in place of a media file."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf

LFS_STUB = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 12345\n"


def make_wav(
    path: Path,
    seconds: float = 1.0,
    sample_rate: int = 16000,
    channels: int = 1,
    subtype: str = "PCM_16",
    amplitude: float = 0.3,
) -> Path:
    """A 440 Hz tone."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path


def make_mp4(
    path: Path,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
    tone_hz: float = 440.0,
    sample_rate: int = 16000,
) -> Path:
    """An MP4 (H.264 + AAC, as AVE's) whose frame i is a flat grey of level 8 * i and whose audio is a tone
    whose loudness rises linearly with time (so a test can tell which part of the clip it got)."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": "5"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        stream_a = container.add_stream("aac", rate=sample_rate, layout="mono") if audio else None
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(
                np.full((height, width, 3), min(8 * i, 255), np.uint8), format="rgb24"
            )
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if stream_a is not None:
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            tone = (0.8 * t / seconds * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            source = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
            source.sample_rate = sample_rate
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
            for chunk in resampler.resample(source) + resampler.resample(None):
                container.mux(stream_a.encode(chunk))
            container.mux(stream_a.encode(None))
    return path


def make_flv(
    path: Path,
    seconds: float = 1.0,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
    audio_seconds: float | None = None,
) -> Path:
    """An FLV (flv1 video + MP3 audio, as CREMA-D's) whose frame i is a flat grey of level 8 * i, so a
    test can tell from the pixels which frame it got. The audio lasts `audio_seconds` (default: as long
    as the video)."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="flv") as container:
        video = container.add_stream("flv", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        stream_a = container.add_stream("mp3", rate=22050, layout="mono") if audio else None
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(
                np.full((height, width, 3), min(8 * i, 255), np.uint8), format="rgb24"
            )
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if stream_a is not None:
            n_samples = int((seconds if audio_seconds is None else audio_seconds) * 22050)
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n_samples) / 22050)).astype(np.float32)
            step = stream_a.codec_context.frame_size or 1152
            for start in range(0, len(samples), step):
                chunk = av.AudioFrame.from_ndarray(
                    samples[None, start : start + step], format="flt", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 22050, start
                container.mux(stream_a.encode(chunk))
            container.mux(stream_a.encode())
    return path


# --- paths --------------------------------------------------------------------------------------------
