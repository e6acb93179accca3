"""Stage `frames`: decode each kept clip's FLV once and keep 3 frames at 1 fps, resized for the ResNet.

Output: `OUT/work/frames.h5`, dataset `/frames/<clip id>` uint8 [count, size, size, 3] (RGB), made by
pipeline.stages.run_per_clip (parallel, resumable, atomic). Frame k is the first decoded frame at or
after k / fps seconds; a clip too short for `count` frames repeats its last frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from pipeline.manifest import read_manifest
from pipeline.media import MediaError, frames_at_fps, resolve_inside
from pipeline.stages import ClipJob, exit_on, report_skipped, run_per_clip


@dataclass(frozen=True)
class FramesConfig:
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
                    Path(job.path), count=config["count"], fps=config["fps"], size=config["size"]
                )
            }
        except (MediaError, OSError, ValueError) as err:  # PyAV errors derive from OSError/ValueError
            results[job.id] = f"decode-error: frames of {job.id} could not be decoded ({err})"
    return results


def clips_to_process(manifest: list[dict], root: str | Path, media: str) -> list[ClipJob]:
    """Jobs for the kept clips that belong to a split, reading the manifest field `media` (wav or flv)."""
    return [
        ClipJob(r["id"], str(resolve_inside(root, r[media])))
        for r in manifest
        if r["status"] == "ok" and r.get("split") and r.get("usable", {}).get("raw", True)
    ]


def run_frames(
    manifest_path: str | Path,
    root: str | Path,
    out_path: str | Path,
    config: FramesConfig,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, str]:
    """Write the frames intermediate; returns per-clip errors {clip id: message}."""
    jobs = clips_to_process(read_manifest(manifest_path), root, "flv")
    return run_per_clip(
        "frames", jobs, compute_frames, asdict(config), out_path, workers=workers, progress=progress
    )


def cli(
    manifest: Annotated[Path, typer.Option(help="OUT/manifest.jsonl from the index stage.")],
    root: Annotated[Path, typer.Option("--root", help="Corpus root the manifest's paths are relative to.")],
    out: Annotated[Path, typer.Option("--out", help="The HDF5 file to write, e.g. OUT/work/frames.h5.")],
    fps: float = typer.Option(1.0, help="Frames kept per second."),
    count: int = typer.Option(3, help="Frames per clip."),
    size: int = typer.Option(224, help="Output height and width in pixels."),
    workers: int = typer.Option(1, help="Processes decoding in parallel (output does not depend on it)."),
) -> None:
    """Decode every kept clip's FLV once and store `count` frames at `fps`, resized to size x size."""
    with exit_on(ValueError):
        config = FramesConfig(fps, count, size)
    report_skipped("frames", run_frames(manifest, root, out, config, workers=workers))


if __name__ == "__main__":
    typer.run(cli)
