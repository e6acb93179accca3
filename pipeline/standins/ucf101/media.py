"""Writing the stand-in's AVI files with PyAV: MPEG-4 Part 2 video (FFmpeg's `mpeg4` encoder, fourcc
XVID, as the real corpus's XviD files) and, optionally, MP3 audio (LAME) at the audio's own rate and
channel count.

Every file is written under a temporary name and renamed into place (mlb.common.atomic), so an interrupted run
never leaves a half-written file under its final name. Output is byte-reproducible: FFmpeg runs with
`bitexact` (no encoder version string, no time-dependent metadata) on a single thread.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_output
from pipeline.standins.common import mux_pictures, mux_sound

VIDEO_BIT_RATE = 500_000
MP3_BIT_RATE = {1: 64_000, 2: 128_000}  # by channel count
MP3_FRAME = 1152  # samples per MP3 frame: the encoder takes frames of exactly this size
LAYOUTS = {1: "mono", 2: "stereo"}


def write_avi(
    path: Path, frames: np.ndarray, fps: Fraction | int, audio: np.ndarray | None, sample_rate: int = 44100
) -> None:
    """Write an AVI atomically: video from `frames` uint8 [T, H, W, 3] RGB at `fps`, and MP3 audio from
    `audio` float32 [C, N] in [-1, 1] (C = 1 or 2) at `sample_rate`, or no audio stream when None."""
    import av

    bitexact = {"flags": "+bitexact"}
    with (
        atomic_output(path, durable=False) as tmp,
        av.open(str(tmp), "w", format="avi", options={"fflags": "+bitexact"}) as container,
    ):
        video = container.add_stream("mpeg4", rate=fps, options=bitexact)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.bit_rate = VIDEO_BIT_RATE
        video.thread_count = 1
        video.codec_context.codec_tag = "XVID"
        stream = None
        if audio is not None:
            layout = LAYOUTS[audio.shape[0]]
            stream = container.add_stream(
                "libmp3lame", rate=sample_rate, layout=layout, options={**bitexact, "compression_level": "7"}
            )  # LAME -q 7: about twice as fast as its default
            stream.bit_rate = MP3_BIT_RATE[audio.shape[0]]
        mux_pictures(container, video, frames)
        if stream is not None:
            source = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, np.float32), format="fltp", layout=layout
            )  # [C, N]
            source.sample_rate = sample_rate
            resampler = av.AudioResampler(
                format="fltp", layout=layout, rate=sample_rate, frame_size=MP3_FRAME
            )
            mux_sound(container, stream, source, resampler)
