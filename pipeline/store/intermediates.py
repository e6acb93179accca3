"""The HDF5 intermediates under `OUT/work/` (one file per per-clip stage, written by the per-clip engine):
whether one is complete, the config it was made with, and the readers and codecs of what `faces.h5` and
`features.h5` hold, so a later stage reads them without importing the stage that wrote them.

Layout of every file: `/<array name>/<clip id>` datasets, `/errors` attributes {clip id: message}, root
attributes `stage`, `config` (JSON), `fingerprint`, `complete`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.manifest import Reason


def is_complete(path: str | Path, fingerprint: str | None = None) -> bool:
    """True when `path` is a finished intermediate (and, if given, made from the same inputs)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            done = bool(f.attrs.get("complete", False))
            return done and (fingerprint is None or f.attrs.get("fingerprint") == fingerprint)
    except OSError:
        return False


def read_stage_config(path: str | Path) -> dict:
    """The config a complete intermediate was made with (raises if it is incomplete)."""
    import h5py

    if not is_complete(path):
        raise RuntimeError(f"{path} is missing or incomplete; rerun the stage that makes it")
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


def read_fingerprint(path: str | Path) -> str:
    """The fingerprint of a complete intermediate: changes whenever its inputs or config change."""
    import h5py

    with h5py.File(path, "r") as h5:
        return str(h5.attrs["fingerprint"])


# --- faces.h5: JPEG crops, frame indices, MTCNN probabilities, boxes, counts ---------------------------------


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


def read_clip_faces(h5, clip_id: str) -> np.ndarray:
    """The face crops of one clip from an open faces.h5: uint8 [K, S, S, 3] (K may be 0)."""
    size = json.loads(h5.attrs["config"])["crop_size"]
    return decode_crops(h5["jpeg"][clip_id][()], h5["jpeg_offsets"][clip_id][()], size)


def clip_face_counts(h5, clip_id: str) -> dict:
    """`{"frames_total", "frames_with_face"}` of one clip from an open faces.h5."""
    frames_total, frames_with_face = (int(v) for v in h5["counts"][clip_id][()])
    return {"frames_total": frames_total, "frames_with_face": frames_with_face}


def clip_cached_reason(h5, clip_id: str) -> str | None:
    """None when the clip has at least one face in an open faces.h5, else why not (`no-face: ...`)."""
    if clip_id in h5["errors"].attrs:
        return Reason.NO_FACE.says(str(h5["errors"].attrs[clip_id]))
    if clip_id not in h5.get("counts", {}):
        return Reason.NO_FACE.says(f"{clip_id} is not in the faces stage's output (rerun the faces stage)")
    counts = clip_face_counts(h5, clip_id)
    if counts["frames_with_face"] > 0:
        return None
    return Reason.NO_FACE.says(
        f"no face found in any of the {counts['frames_total']} frames of {clip_id}'s video "
        "(still usable for the raw path)"
    )


def cached_usability(h5) -> dict[str, str | None]:
    """{clip id: None when the clip has a face, else the `no-face: ...` reason} for every clip in faces.h5."""
    ids = list(h5["errors"].attrs) + list(h5.get("counts", {}))
    return {clip_id: clip_cached_reason(h5, clip_id) for clip_id in ids}


# --- features.h5: frozen EfficientNet-B2 and Wav2Vec2 features ---------------------------------------------


def read_clip_features(h5, clip_id: str) -> dict:
    """`{"effb2": float16 [T_v, 1408], "w2v2": float16 [T_a, D], "frames_total", "frames_with_face"}`
    of one clip from an open features.h5."""
    frames_total, frames_with_face = (int(v) for v in h5["counts"][clip_id][()])
    return {
        "effb2": h5["effb2"][clip_id][()],
        "w2v2": h5["w2v2"][clip_id][()],
        "frames_total": frames_total,
        "frames_with_face": frames_with_face,
    }
