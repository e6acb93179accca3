"""Writing the synthetic media: WAV (soundfile) and FLV (PyAV: Sorenson H.263 video + MP3 audio).

Every file is written to a temporary name in the same folder and renamed into place, so an interrupted
run never leaves a half-written file under its final name. Output is byte-reproducible: FFmpeg runs with
`bitexact` (no encoder version tag, no time-dependent metadata) on a single thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_output
from pipeline.standins.common import mux_pictures, mux_sound

FLV_AUDIO_RATE = 22050  # the FLV muxer takes MP3 only at 11.025 / 22.05 / 44.1 kHz; 16 kHz is resampled
MP3_BIT_RATE = 64_000
VIDEO_BIT_RATE = 700_000


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16000, subtype: str = "PCM_16") -> None:
    """Write a WAV atomically. `samples` float in [-1, 1], [N] (mono) or [N, C]."""
    import soundfile as sf

    with atomic_output(path, durable=False) as tmp:
        sf.write(tmp, samples, sample_rate, subtype=subtype, format="WAV")


def write_flv(
    path: Path,
    frames: np.ndarray | None,
    audio: np.ndarray | None,
    fps: int = 30,
    audio_rate: int = 16000,
    n_frames: int | None = None,
    write_duration: bool = True,
) -> None:
    """Write an FLV atomically: video from `frames` uint8 [T, H, W, 3] RGB (None: no video stream) and MP3
    audio from `audio` float32 [N] mono at `audio_rate` (None: no audio stream). `n_frames` > T loops the
    frames (a long video without holding it in memory). `write_duration=False` leaves duration and file
    size out of the FLV header."""
    import av

    bitexact = {"flags": "+bitexact"}
    options = {"fflags": "+bitexact"} | ({} if write_duration else {"flvflags": "no_duration_filesize"})
    with (
        atomic_output(path, durable=False) as tmp,
        av.open(str(tmp), "w", format="flv", options=options) as container,
    ):
        video = audio_stream = None
        if frames is not None:
            video = container.add_stream("flv", rate=fps, options=bitexact)
            video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            video.bit_rate = VIDEO_BIT_RATE
            video.thread_count = 1
        if audio is not None:
            audio_stream = container.add_stream(
                "libmp3lame",
                rate=FLV_AUDIO_RATE,
                layout="mono",
                options={**bitexact, "compression_level": "7"},
            )  # LAME -q 7: 2x faster
            audio_stream.bit_rate = MP3_BIT_RATE
        if video is not None:
            count = len(frames) if n_frames is None else n_frames
            mux_pictures(container, video, (frames[i % len(frames)] for i in range(count)))
        if audio_stream is not None and len(audio):
            source = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, np.float32)[None, :], format="flt", layout="mono"
            )  # [1, N]
            source.sample_rate = audio_rate
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=FLV_AUDIO_RATE)
            mux_sound(container, audio_stream, source, resampler)


def strip_flv_duration(data: bytes) -> bytes:
    """The FLV `data` (written with `write_duration=False`) with every tag's timestamp and the header's
    data rates set to 0: a demuxer then finds no duration at all, neither stated, nor from timestamps,
    nor estimated from bit rate and size (how the real corpus's 1064_TIE_SAD_XX.flv probes)."""
    out = bytearray(data)
    for key in (b"videodatarate", b"audiodatarate"):  # AMF: name, type byte 0 (number), 8-byte double
        at = out.find(key + b"\x00")
        if at >= 0:
            start = at + len(key) + 1
            out[start : start + 8] = bytes(8)
    pos = 9 + 4  # FLV header, then PreviousTagSize0
    while pos + 11 <= len(
        out
    ):  # tag: type(1) size(3) timestamp(3) timestamp_ext(1) stream(3) data trailer(4)
        size = int.from_bytes(out[pos + 1 : pos + 4], "big")
        out[pos + 4 : pos + 8] = bytes(4)
        pos += 11 + size + 4
    return bytes(out)
