"""Stage `faces`: decode every video frame, find the most confident face with MTCNN, crop it square with a
margin and resize it for EfficientNet-B2.

Inputs: `OUT/manifest.jsonl` and the corpus root. Outputs:
- `OUT/work/faces.h5`, made by pipeline.stages.run_per_clip (parallel, resumable, atomic), keyed by clip
  id: `/jpeg/<id>` uint8 [bytes] (the K crops, JPEG-encoded back to back), `/jpeg_offsets/<id>` int64
  [K + 1], `/frame_index/<id>` int32 [K], `/prob/<id>` float32 [K], `/box/<id>` float32 [K, 4] and
  `/counts/<id>` int32 [2] = (frames_total, frames_with_face); a clip whose video cannot be decoded is
  in the `errors` group instead. The features stage reads the crops back with `read_clip_faces`.
- the manifest, updated in place (unless `update_manifest=False`): a clip with no face in any frame gets
  `usable.cached = false` and `reasons.cached = "no-face: ..."`; it stays usable for the raw path.
  faces.h5 itself says the same (`clip_cached_reason`), so later stages do not depend on that update.

Frames without a face are dropped (the paper keeps faces "from every video frame"; there is nothing to
crop in the others) and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.stages import ClipJob, exit_on, run_per_clip

NO_FACE = "no-face"


class FacesConfigError(ValueError):
    """A faces stage parameter has a value we cannot use."""


@dataclass(frozen=True)
class FacesConfig:
    """Parameters of the faces stage (params.yaml: `faces`).

    fps: frames per second to keep; None keeps every decoded frame (what the paper does).
    crop_size: side of the square face crop in pixels; the EfficientNet-B2 input size (260).
    margin: added on every side of the detected box, as a fraction of the box's longer side.
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
        if not isinstance(self.min_prob, (int, float)) or not 0 <= self.min_prob < 1:
            raise FacesConfigError(f"faces.min_prob={self.min_prob!r}: expected a probability in [0, 1)")
        if not isinstance(self.min_face_size, int) or self.min_face_size < 12:
            raise FacesConfigError(f"faces.min_face_size={self.min_face_size!r}: expected an int >= 12")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise FacesConfigError(f"faces.batch_size={self.batch_size!r}: expected an int >= 1")
        if not isinstance(self.jpeg_quality, int) or not 50 <= self.jpeg_quality <= 100:
            raise FacesConfigError(f"faces.jpeg_quality={self.jpeg_quality!r}: expected an int in [50, 100]")


@dataclass
class ClipFaces:
    """The faces of one clip. K = frames with a face."""

    crops: np.ndarray  # uint8 [K, S, S, 3] RGB
    frame_index: np.ndarray  # int32 [K], index among the kept (decoded, fps-subsampled) frames
    prob: np.ndarray  # float32 [K], MTCNN confidence
    box: np.ndarray  # float32 [K, 4], x1 y1 x2 y2 in frame pixels
    frames_total: int

    @property
    def frames_with_face(self) -> int:
        return len(self.crops)


# --- decoding -----------------------------------------------------------------------------------------


def decode_frames(path: str | Path, fps: float | None = None) -> np.ndarray:
    """Decode a video with PyAV: every frame (fps=None) or the first frame at or after each k / fps
    seconds. Returns uint8 [N, H, W, 3] RGB (N may be 0 for a stream that decodes to nothing)."""
    import av

    frames: list[np.ndarray] = []
    next_time = 0.0
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = (
            "SLICE"  # one core per worker: frame threads only add latency (as pipeline.media)
        )
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for frame in container.decode(stream):
            if fps is not None:
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base) - start
                if t + 1e-6 < next_time:
                    continue
                next_time += 1.0 / fps
            frames.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)  # [N, H, W, 3]


# --- detection and cropping ---------------------------------------------------------------------------


def make_detector(config: FacesConfig):
    """facenet-pytorch MTCNN (its weights ship inside the wheel: works offline), one per process."""
    return _detector(config.min_face_size, config.device)


@lru_cache(maxsize=2)
def _detector(min_face_size: int, device: str):
    from facenet_pytorch import MTCNN

    from pipeline.extractors import resolve_device

    return MTCNN(
        keep_all=True, select_largest=False, min_face_size=min_face_size, device=resolve_device(device)
    )


def detect_best_faces(
    detector, frames: np.ndarray, batch_size: int, min_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """The most confident face of every frame, in batches.

    frames: uint8 [N, H, W, 3]. Returns boxes float32 [N, 4] (x1, y1, x2, y2; NaN where no face) and
    probs float32 [N] (0 where no face or below `min_prob`).
    """
    boxes = np.full((len(frames), 4), np.nan, np.float32)
    probs = np.zeros(len(frames), np.float32)
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size]  # [B, H, W, 3]
        batch_boxes, batch_probs = detector.detect(batch)
        for i, (frame_boxes, frame_probs) in enumerate(zip(batch_boxes, batch_probs)):
            if frame_boxes is None:
                continue
            frame_probs = np.asarray(frame_probs, np.float32)  # [F]
            best = int(np.argmax(frame_probs))
            if frame_probs[best] >= min_prob:
                boxes[start + i] = frame_boxes[best]
                probs[start + i] = frame_probs[best]
    return boxes, probs


def crop_face(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """A square crop centred on `box`, its side the box's longer side plus `margin` of it on each side,
    resized to size x size. Parts outside the frame are black (the face stays centred and unstretched).

    frame: uint8 [H, W, 3]; box: (x1, y1, x2, y2). Returns uint8 [size, size, 3].
    """
    import cv2

    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    side_px = max(round(side), 1)
    height, width = frame.shape[:2]
    canvas = np.zeros((side_px, side_px, 3), np.uint8)
    # The part of the square inside the frame, in frame and in canvas coordinates.
    fx1, fy1 = max(left, 0), max(top, 0)
    fx2, fy2 = min(left + side_px, width), min(top + side_px, height)
    if fx2 > fx1 and fy2 > fy1:
        canvas[fy1 - top : fy2 - top, fx1 - left : fx2 - left] = frame[fy1:fy2, fx1:fx2]
    interpolation = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interpolation)


def faces_of_frames(detector, frames: np.ndarray, config: FacesConfig) -> ClipFaces:
    """Detect, pick and crop the faces of one clip's frames (uint8 [N, H, W, 3])."""
    size = config.crop_size
    if len(frames) == 0:
        return ClipFaces(
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros((0, 4), np.float32),
            0,
        )
    boxes, probs = detect_best_faces(detector, frames, config.batch_size, config.min_prob)
    keep = np.flatnonzero(probs > 0)  # [K]
    crops = np.zeros((len(keep), size, size, 3), np.uint8)  # [K, S, S, 3]
    for j, i in enumerate(keep):
        crops[j] = crop_face(frames[i], boxes[i], config.margin, size)
    return ClipFaces(crops, keep.astype(np.int32), probs[keep], boxes[keep], len(frames))


# --- storage in faces.h5 --------------------------------------------------------------------------------


def encode_crops(crops: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [K, S, S, 3] RGB → (JPEG bytes back to back, uint8 [bytes]; offsets, int64 [K + 1])."""
    import cv2

    encoded = []
    for crop in crops:
        ok, buffer = cv2.imencode(
            ".jpg", np.ascontiguousarray(crop[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a face crop")
        encoded.append(buffer.reshape(-1))
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    data = np.concatenate(encoded) if encoded else np.zeros(0, np.uint8)
    return data, offsets


def decode_crops(data: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """The inverse of encode_crops: uint8 [K, S, S, 3] RGB (K = len(offsets) - 1, may be 0)."""
    import cv2

    crops = np.zeros((len(offsets) - 1, size, size, 3), np.uint8)
    for k in range(len(crops)):
        crops[k] = cv2.imdecode(data[offsets[k] : offsets[k + 1]], cv2.IMREAD_COLOR)[:, :, ::-1]  # BGR → RGB
    return crops


def compute_faces(jobs: Sequence[ClipJob], config: dict) -> dict:
    """run_per_clip's compute: {clip id: arrays of its faces} or a `decode-error: ...` message."""
    import av

    faces_config = FacesConfig(**config)
    detector = make_detector(faces_config)
    results: dict = {}
    for job in jobs:
        try:
            frames = decode_frames(job.path, faces_config.fps)  # [N, H, W, 3]
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:  # IndexError: no video stream
            results[job.id] = f"decode-error: the video of {job.id} could not be decoded for faces ({err})"
            continue
        faces = faces_of_frames(detector, frames, faces_config)
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


def read_clip_faces(h5, clip_id: str) -> np.ndarray:
    """The face crops of one clip from an open faces.h5: uint8 [K, S, S, 3] (K may be 0)."""
    import json

    size = json.loads(h5.attrs["config"])["crop_size"]
    return decode_crops(h5["jpeg"][clip_id][()], h5["jpeg_offsets"][clip_id][()], size)


def clip_face_counts(h5, clip_id: str) -> dict:
    """`{"frames_total", "frames_with_face"}` of one clip from an open faces.h5."""
    frames_total, frames_with_face = (int(v) for v in h5["counts"][clip_id][()])
    return {"frames_total": frames_total, "frames_with_face": frames_with_face}


def clip_cached_reason(h5, clip_id: str) -> str | None:
    """None when the clip has at least one face in an open faces.h5, else why not (`no-face: ...`)."""
    if clip_id in h5["errors"].attrs:
        return f"{NO_FACE}: {h5['errors'].attrs[clip_id]}"
    if clip_id not in h5.get("counts", {}):
        return f"{NO_FACE}: {clip_id} is not in the faces stage's output (rerun the faces stage)"
    counts = clip_face_counts(h5, clip_id)
    if counts["frames_with_face"] > 0:
        return None
    return (
        f"{NO_FACE}: no face found in any of the {counts['frames_total']} frames of {clip_id}'s video "
        "(still usable for the raw path)"
    )


def cached_usability(h5) -> dict[str, str | None]:
    """{clip id: None when the clip has a face, else the `no-face: ...` reason} for every clip in faces.h5."""
    ids = list(h5["errors"].attrs) + list(h5.get("counts", {}))
    return {clip_id: clip_cached_reason(h5, clip_id) for clip_id in ids}


def clips_with_faces(faces_path: str | Path) -> list[str]:
    """Ids of the clips that have at least one face crop in a complete faces.h5, sorted."""
    import h5py

    with h5py.File(faces_path, "r") as h5:
        return sorted(clip_id for clip_id, reason in cached_usability(h5).items() if reason is None)


# --- manifest -----------------------------------------------------------------------------------------


def is_candidate(record: dict) -> bool:
    """A clip the cached path may use: accepted, in a split, and not ruled out for `cached` by anything
    but this stage."""
    if record.get("status") != "ok" or not record.get("split"):
        return False
    if (record.get("usable") or {}).get("cached", True):
        return True
    return ((record.get("reasons") or {}).get("cached") or "").startswith(f"{NO_FACE}:")


def mark_cached_usability(record: dict, reason: str | None) -> dict:
    """The record with `usable.cached` / `reasons.cached` set from this clip's faces (None: has a face)."""
    record = {
        **record,
        "usable": dict(record.get("usable") or {}),
        "reasons": dict(record.get("reasons") or {}),
    }
    record["usable"]["cached"] = reason is None
    if reason is None:
        record["reasons"].pop("cached", None)
    else:
        record["reasons"]["cached"] = reason
    if not record["reasons"]:
        del record["reasons"]
    return record


# --- the stage ----------------------------------------------------------------------------------------


def run_faces(
    manifest_path: str | Path,
    corpus_root: str | Path,
    out_path: str | Path,
    config: FacesConfig = FacesConfig(),
    *,
    workers: int = 1,
    progress: bool = True,
    update_manifest: bool = True,
) -> dict:
    """Find, crop and store the faces of every candidate clip into `out_path` (OUT/work/faces.h5); with
    `update_manifest`, mark the clips without a face in the manifest (rewritten only if that changes it).

    Returns {"clips", "frames_total", "frames_with_face", "no_face": {clip id: reason}}.
    """
    import h5py

    from pipeline.manifest import read_manifest, write_manifest
    from pipeline.media import resolve_inside

    records = read_manifest(manifest_path)
    jobs = [ClipJob(r["id"], str(resolve_inside(corpus_root, r["flv"]))) for r in records if is_candidate(r)]
    run_per_clip("faces", jobs, compute_faces, asdict(config), out_path, workers=workers, progress=progress)
    with h5py.File(out_path, "r") as h5:
        usability = cached_usability(h5)
        counts = [clip_face_counts(h5, clip_id) for clip_id in h5.get("counts", {})]
    if update_manifest:
        updated = [
            mark_cached_usability(r, usability[r["id"]]) if r["id"] in usability else r for r in records
        ]
        if updated != records:
            write_manifest(updated, manifest_path)
    return {
        "clips": len(jobs),
        "frames_total": sum(c["frames_total"] for c in counts),
        "frames_with_face": sum(c["frames_with_face"] for c in counts),
        "no_face": {clip_id: reason for clip_id, reason in sorted(usability.items()) if reason},
    }


def cli(
    manifest: Annotated[Path, typer.Option(help="OUT/manifest.jsonl from the index stage.")],
    root: Annotated[Path, typer.Option("--root", help="Corpus root the manifest's paths are relative to.")],
    out: Annotated[Path, typer.Option("--out", help="The HDF5 file to write, e.g. OUT/work/faces.h5.")],
    fps: float = typer.Option(0.0, help="Frames per second to keep; 0 keeps every frame (the paper)."),
    crop_size: int = typer.Option(260, help="Side of the square face crop (EfficientNet-B2 input size)."),
    margin: float = typer.Option(0.2, help="Margin around the face box, as a fraction of its longer side."),
    min_prob: float = typer.Option(0.9, help="Least MTCNN confidence that counts as a face."),
    min_face_size: int = typer.Option(40, help="MTCNN's smallest face, in pixels."),
    batch_size: int = typer.Option(32, help="Frames per MTCNN call."),
    jpeg_quality: int = typer.Option(95, help="JPEG quality of the stored crops."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    workers: int = typer.Option(1, help="Processes in parallel (output does not depend on it)."),
    update_manifest: bool = typer.Option(True, help="Mark clips without a face in the manifest."),
) -> None:
    """MTCNN face crops of every frame of every kept clip; clips with no face at all are marked
    `usable.cached=false` (reason `no-face`) in the manifest."""
    with exit_on(ValueError):
        config = FacesConfig(
            fps=fps or None,
            crop_size=crop_size,
            margin=margin,
            min_prob=min_prob,
            min_face_size=min_face_size,
            batch_size=batch_size,
            jpeg_quality=jpeg_quality,
            device=device,
        )
    print_faces_summary(
        run_faces(manifest, root, out, config, workers=workers, update_manifest=update_manifest)
    )


def print_faces_summary(summary: dict) -> None:
    typer.echo(
        f"faces: {summary['clips']} clips, {summary['frames_with_face']} of {summary['frames_total']} "
        f"frames with a face, {len(summary['no_face'])} clip(s) not usable for the cached path"
    )
    for clip_id, reason in summary["no_face"].items():
        typer.echo(f"  {clip_id}: {reason}", err=True)


if __name__ == "__main__":
    typer.run(cli)
