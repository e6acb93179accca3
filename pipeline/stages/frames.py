"""Stage `frames`: decode each clip's video once and keep `count` frames at `fps`, resized for the ResNet.

Reads the manifest and each clip's `video` (inside its segment, when it has one). Writes
`OUT/work/frames.h5`, dataset `/frames/<clip id>` uint8 [count, size, size, 3] (RGB), through the
per-clip engine (parallel, resumable, atomic). Frame k is the first decoded frame at or after
start + k / fps seconds; a clip too short for `count` frames repeats its last frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.engine import ClipJob, Executor, run_per_clip
from pipeline.engine.per_clip import clip_jobs
from pipeline.manifest import Reason, read_manifest
from pipeline.media import MediaError, frames_at_fps


@dataclass(frozen=True)
class FramesConfig:
    """Parameters of the frames stage (params.yaml: `frames`)."""

    fps: float = 1.0  # frames kept per second of video
    count: int = 3  # frames per clip (the paper: 3)
    size: int = 224  # output height = width (ResNet-18 input)

    def __post_init__(self):
        if self.fps <= 0:
            raise ValueError(f"frames.fps={self.fps!r}: must be > 0")
        if self.count < 1:
            raise ValueError(f"frames.count={self.count!r}: must be at least 1")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"frames.size={self.size!r}: must be between 8 and 1024 pixels")


def compute_frames(jobs: Sequence[ClipJob], config: dict) -> dict:
    """{clip id: {"frames": uint8 [count, size, size, 3]}}, or an error message for a clip that fails."""
    results: dict = {}
    for job in jobs:
        try:
            results[job.id] = {
                "frames": frames_at_fps(
                    Path(job.path),
                    count=config["count"],
                    fps=config["fps"],
                    size=config["size"],
                    segment=job.segment,
                )
            }
        except (MediaError, OSError, ValueError) as err:  # PyAV errors derive from OSError/ValueError
            results[job.id] = Reason.DECODE_ERROR.says(f"frames of {job.id} could not be decoded ({err})")
    return results


def run_frames(
    manifest_path: str | Path,
    root: str | Path,
    out_path: str | Path,
    config: FramesConfig,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Write the frames intermediate; returns per-clip errors {clip id: message}."""
    jobs = clip_jobs(read_manifest(manifest_path), root, "video", "raw")
    return run_per_clip(
        "frames", jobs, compute_frames, asdict(config), out_path, executor=executor, progress=progress
    )
