"""Stage `faces`: decode every video frame, find the most confident face with MTCNN, crop it square with a
margin and resize it for EfficientNet-B2.

Reads the manifest and each clip's `video` (inside its segment, when it has one). Writes
- `OUT/work/faces.h5`, through the per-clip engine (parallel, resumable, atomic), keyed by clip id:
  `/jpeg/<id>` uint8 [bytes] (the K crops, JPEG-encoded back to back), `/jpeg_offsets/<id>` int64 [K + 1],
  `/frame_index/<id>` int32 [K], `/prob/<id>` float32 [K], `/box/<id>` float32 [K, 4] and `/counts/<id>`
  int32 [2] = (frames_total, frames_with_face); a clip whose video cannot be decoded is in the `errors`
  group instead. pipeline.store.intermediates reads it back.
- the manifest, updated in place (unless `update_manifest=False`): a clip with no face in any frame gets
  `usable.cached = false` and `reasons.cached = "no-face: ..."`; it stays usable for the raw path.
  faces.h5 itself says the same (`clip_cached_reason`), so later stages do not depend on that update.

Frames without a face are dropped (the paper keeps faces "from every video frame"; there is nothing to
crop in the others) and counted. Detection and cropping are in pipeline.compute.faces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.compute.faces import BOX_SIDES, faces_of_frames, make_detector
from pipeline.engine import ClipJob, Executor, run_per_clip
from pipeline.manifest import ClipRecord, Reason, read_manifest, write_manifest
from pipeline.media import decode_frames, resolve_inside
from pipeline.store.intermediates import cached_usability, clip_face_counts, encode_crops


class FacesConfigError(ValueError):
    """A faces stage parameter has a value we cannot use."""


@dataclass(frozen=True)
class FacesConfig:
    """Parameters of the faces stage (params.yaml: `faces`).

    fps: frames per second to keep; None keeps every decoded frame (what the paper does).
    crop_size: side of the square face crop in pixels; the EfficientNet-B2 input size (260).
    margin: added on every side of the detected box, as a fraction of the box's side (see box_side).
    box_side: how the box's side is measured: "max" (its longer side) or "mean" (the mean of its width and
        height, as VAVL's crops; with margin 0.1875 the crop's side is 1.375 times it, VAVL's 1.1 x 1.25:
        docs/paper-inputs.md).
    min_prob: least MTCNN confidence for a detection to count as a face.
    min_face_size: MTCNN's smallest face in pixels.
    batch_size: frames per MTCNN call.
    jpeg_quality: quality of the JPEG-encoded crops in faces.h5 (raw 260 px crops of every frame of
        CREMA-D would take ~110 GB).
    device: "auto", "cpu" or "cuda[:N]" for MTCNN.
    All keys are part of the stage's fingerprint: changing any recomputes the faces.
    """

    fps: float | None = None
    crop_size: int = 260
    margin: float = 0.2
    box_side: str = "max"
    min_prob: float = 0.9
    min_face_size: int = 40
    batch_size: int = 32
    jpeg_quality: int = 95
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise FacesConfigError(
                f"faces.fps={self.fps!r}: expected a positive number or null (every frame)"
            )
        if not isinstance(self.crop_size, int) or self.crop_size < 16:
            raise FacesConfigError(f"faces.crop_size={self.crop_size!r}: expected an int >= 16")
        if not isinstance(self.margin, (int, float)) or not 0 <= self.margin <= 1:
            raise FacesConfigError(f"faces.margin={self.margin!r}: expected a fraction in [0, 1]")
        if self.box_side not in BOX_SIDES:
            raise FacesConfigError(
                f"faces.box_side={self.box_side!r}: expected one of {', '.join(BOX_SIDES)}"
            )
        if not isinstance(self.min_prob, (int, float)) or not 0 <= self.min_prob < 1:
            raise FacesConfigError(f"faces.min_prob={self.min_prob!r}: expected a probability in [0, 1)")
        if not isinstance(self.min_face_size, int) or self.min_face_size < 12:
            raise FacesConfigError(f"faces.min_face_size={self.min_face_size!r}: expected an int >= 12")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise FacesConfigError(f"faces.batch_size={self.batch_size!r}: expected an int >= 1")
        if not isinstance(self.jpeg_quality, int) or not 50 <= self.jpeg_quality <= 100:
            raise FacesConfigError(f"faces.jpeg_quality={self.jpeg_quality!r}: expected an int in [50, 100]")


def compute_faces(jobs: Sequence[ClipJob], config: dict) -> dict:
    """run_per_clip's compute: {clip id: arrays of its faces} or a `decode-error: ...` message."""
    import av

    faces_config = FacesConfig(**config)
    detector = make_detector(faces_config.min_face_size, faces_config.device)
    results: dict = {}
    for job in jobs:
        try:
            frames = decode_frames(job.path, faces_config.fps, job.segment)  # [N, H, W, 3]
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:  # IndexError: no video stream
            results[job.id] = Reason.DECODE_ERROR.says(
                f"the video of {job.id} could not be decoded for faces ({err})"
            )
            continue
        faces = faces_of_frames(
            detector,
            frames,
            crop_size=faces_config.crop_size,
            margin=faces_config.margin,
            box_side=faces_config.box_side,
            min_prob=faces_config.min_prob,
            batch_size=faces_config.batch_size,
        )
        jpeg, offsets = encode_crops(faces.crops, faces_config.jpeg_quality)
        results[job.id] = {
            "jpeg": jpeg,
            "jpeg_offsets": offsets,
            "frame_index": faces.frame_index,
            "prob": faces.prob,
            "box": faces.box,
            "counts": np.array([faces.frames_total, faces.frames_with_face], np.int32),
        }
    return results


# --- manifest -----------------------------------------------------------------------------------------


def mark_cached_usability(record: ClipRecord, reason: str | None) -> ClipRecord:
    """A copy of the record with `usable.cached` / `reasons.cached` set from this clip's faces (None: it has
    a face)."""
    usable, reasons = dict(record.usable), dict(record.reasons)
    usable["cached"] = reason is None
    if reason is None:
        reasons.pop("cached", None)
    else:
        reasons["cached"] = reason
    return dataclasses.replace(record, usable=usable, reasons=reasons)


# --- the stage ----------------------------------------------------------------------------------------


def candidate_jobs(records: list[ClipRecord], root: str | Path) -> list[ClipJob]:
    """The faces stage's jobs: every candidate clip's video, with its segment (the features stage reads the
    same clips)."""
    return [
        ClipJob(
            r.id,
            str(resolve_inside(root, r.media["video"])),
            None if r.segment is None else r.segment.as_tuple(),
        )
        for r in records
        if r.cached_candidate()
    ]


def run_faces(
    manifest_path: str | Path,
    corpus_root: str | Path,
    out_path: str | Path,
    config: FacesConfig = FacesConfig(),
    *,
    executor: Executor | None = None,
    progress: bool = True,
    update_manifest: bool = True,
) -> dict:
    """Find, crop and store the faces of every candidate clip into `out_path` (OUT/work/faces.h5); with
    `update_manifest`, mark the clips without a face in the manifest (rewritten only if that changes it).

    Returns {"clips", "frames_total", "frames_with_face", "no_face": {clip id: reason}}.
    """
    import h5py

    records = read_manifest(manifest_path)
    jobs = candidate_jobs(records, corpus_root)
    run_per_clip("faces", jobs, compute_faces, asdict(config), out_path, executor=executor, progress=progress)
    with h5py.File(out_path, "r") as h5:
        usability = cached_usability(h5)
        counts = [clip_face_counts(h5, clip_id) for clip_id in h5.get("counts", {})]
    if update_manifest:
        updated = [mark_cached_usability(r, usability[r.id]) if r.id in usability else r for r in records]
        if updated != records:
            write_manifest(updated, manifest_path)
    return {
        "clips": len(jobs),
        "frames_total": sum(c["frames_total"] for c in counts),
        "frames_with_face": sum(c["frames_with_face"] for c in counts),
        "no_face": {clip_id: reason for clip_id, reason in sorted(usability.items()) if reason},
    }
