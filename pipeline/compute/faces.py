"""Faces: MTCNN detection of the most confident face per frame, and square crops around it. Pure
computation on decoded frames; the faces stage decodes the video and stores the crops."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


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


@lru_cache(maxsize=2)
def make_detector(min_face_size: int, device: str = "auto"):
    """facenet-pytorch MTCNN (its weights ship inside the wheel: works offline), one per process and
    setting."""
    from facenet_pytorch import MTCNN

    from mlb.common.device import resolve_device

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


BOX_SIDES = ("max", "mean")


def crop_face(
    frame: np.ndarray, box: np.ndarray, margin: float, size: int, box_side: str = "max"
) -> np.ndarray:
    """A square crop centred on `box`, its side the box's side plus `margin` of it on each side, resized to
    size x size. The box's side is its longer one (`box_side="max"`) or the mean of its width and height
    ("mean", as VAVL's face crops: docs/paper-inputs.md). Parts outside the frame are black (the face stays
    centred and unstretched).

    frame: uint8 [H, W, 3]; box: (x1, y1, x2, y2). Returns uint8 [size, size, 3].
    """
    import cv2

    x1, y1, x2, y2 = (float(v) for v in box)
    if box_side not in BOX_SIDES:
        raise ValueError(f"box_side={box_side!r}: expected one of {', '.join(BOX_SIDES)}")
    width, height = x2 - x1, y2 - y1
    box_length = max(width, height) if box_side == "max" else (width + height) / 2
    side = box_length * (1 + 2 * margin)
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


def faces_of_frames(
    detector,
    frames: np.ndarray,
    *,
    crop_size: int,
    margin: float,
    min_prob: float,
    batch_size: int,
    box_side: str = "max",
) -> ClipFaces:
    """Detect, pick and crop the faces of one clip's frames (uint8 [N, H, W, 3]): the most confident face
    of each frame (at least `min_prob`), cropped square with `margin` (of the box's `box_side`) and resized
    to `crop_size`."""
    size = crop_size
    if len(frames) == 0:
        return ClipFaces(
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros((0, 4), np.float32),
            0,
        )
    boxes, probs = detect_best_faces(detector, frames, batch_size, min_prob)
    keep = np.flatnonzero(probs > 0)  # [K]
    crops = np.zeros((len(keep), size, size, 3), np.uint8)  # [K, S, S, 3]
    for j, i in enumerate(keep):
        crops[j] = crop_face(frames[i], boxes[i], margin, size, box_side)
    return ClipFaces(crops, keep.astype(np.int32), probs[keep], boxes[keep], len(frames))
