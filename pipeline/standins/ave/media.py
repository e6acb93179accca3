"""Writing the synthetic media: MP4 files of H.264 video and AAC audio (PyAV), as AVE's YouTube downloads.

Every file is written to a temporary name in the same folder and renamed into place, so an interrupted
run never leaves a half-written file under its final name. Output is byte-reproducible: the muxer and the
encoders run with `bitexact` (no version tag or time-dependent metadata from FFmpeg) and x264 on a single
thread (its output then depends only on the input pictures).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_output
from pipeline.standins.common import mux_pictures, mux_sound

AAC_FRAME = 1024  # samples per AAC frame
AAC_BIT_RATE_PER_CHANNEL = 64_000
# the index (moov) before the media data, as YouTube serves its progressive MP4s (a cut file then keeps its
# full index and ends early, rather than losing the index)
MUXER_OPTIONS = {"fflags": "+bitexact", "movflags": "+faststart"}


def write_mp4(
    path: Path,
    frame: Callable[[int], np.ndarray] | None,
    n_frames: int,
    fps: int,
    audio: np.ndarray | None,
    sample_rate: int,
) -> None:
    """Write an MP4 atomically: `n_frames` pictures `frame(i)` (uint8 [H, W, 3] RGB, even H and W) as
    H.264 at `fps` (None: no video stream), and `audio` float32 [C, N] in [-1, 1] at `sample_rate`, C 1
    or 2, as AAC (None: no audio stream). Pictures are made one at a time, so a long video never sits in
    memory."""
    import av

    bitexact = {"flags": "+bitexact"}
    with (
        atomic_output(path, durable=False) as tmp,
        av.open(str(tmp), "w", format="mp4", options=MUXER_OPTIONS) as container,
    ):
        video = audio_stream = None
        if frame is not None:
            first = frame(0)
            video = container.add_stream(
                "libx264",
                rate=fps,
                options={**bitexact, "preset": "ultrafast", "threads": "1", "g": str(2 * fps)},
            )
            video.width, video.height, video.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
            video.thread_count = 1
        if audio is not None:
            layout = "stereo" if audio.shape[0] == 2 else "mono"
            audio_stream = container.add_stream(
                "aac", rate=sample_rate, layout=layout, options={**bitexact, "aac_coder": "fast"}
            )  # the fast coder: 2-3x quicker than the default two-loop search, for a stand-in's sound
            audio_stream.bit_rate = AAC_BIT_RATE_PER_CHANNEL * audio.shape[0]
        if video is not None:
            mux_pictures(container, video, (first if i == 0 else frame(i) for i in range(n_frames)))
        if audio_stream is not None and audio.shape[1]:
            source = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, np.float32), format="fltp", layout=layout
            )
            source.sample_rate = sample_rate
            chunker = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate, frame_size=AAC_FRAME)
            mux_sound(container, audio_stream, source, chunker)
