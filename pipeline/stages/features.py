"""Stage `features`: frozen EfficientNet-B2 on the face crops and Wav2Vec2 on the 16 kHz audio of every clip
usable for the cached path.

Inputs: `OUT/manifest.jsonl`, `OUT/work/faces.h5` (faces stage), each clip's `audio` (a sound file or the
video file's audio stream, inside its segment). Output: `OUT/work/features.h5`, through the per-clip engine
(parallel, resumable, atomic), keyed by clip id: `/effb2/<id>` float16 [T_v, 1408] (T_v = frames with a face), `/w2v2/<id>` float16 [T_a, D] and
`/counts/<id>` int32 [2] = (frames_total, frames_with_face). Its stage config (`read_stage_config`)
holds the extractor identities under `extractors`, which the shards stage copies into `meta.json`.

Batched: Wav2Vec2 sees `audio_batch_size` clips at once (padded, with an attention mask), EfficientNet
`frame_batch_size` crops at once, under `torch.inference_mode`, with fp16/bf16 autocast on CUDA. The
models are built once per process, so the batches belong on few long-lived processes that own their device:
`prepare` runs them on its executor's `for_models()`: with a GPU, this process for the local engine and one
Ray actor per GPU for the Ray engine; on a CPU, `workers` single-threaded processes of either engine, each
with its own copy of the models (wav2vec2-large-robust: about 1.3 GB each).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.compute.extractors import (
    WAV2VEC2_SAMPLE_RATE,
    EffNetB2Config,
    EffNetB2Extractor,
    Wav2Vec2Config,
    Wav2Vec2Extractor,
    WeightsUnavailableError,
)
from pipeline.engine import ClipJob, Executor, run_per_clip
from pipeline.engine.executors import as_executor
from pipeline.manifest import Reason, read_manifest
from pipeline.media import read_audio, resample, resolve_inside
from pipeline.store.intermediates import (
    clip_cached_reason,
    clip_face_counts,
    read_clip_faces,
    read_fingerprint,
    read_stage_config,
)

FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeaturesConfigError(ValueError):
    """A features stage parameter has a value we cannot use."""


@dataclass(frozen=True)
class FeaturesConfig:
    """Parameters of the features stage (params.yaml: `features`).

    effb2 / w2v2: the extractor configs (see pipeline.compute.extractors).
    audio_batch_size: clips per Wav2Vec2 call. frame_batch_size: face crops per EfficientNet call.
    device: "auto" (CUDA when present), "cpu" or "cuda[:N]".
    """

    effb2: EffNetB2Config = field(default_factory=EffNetB2Config)
    w2v2: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)
    audio_batch_size: int = 8
    frame_batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("audio_batch_size", "frame_batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise FeaturesConfigError(f"features.{key}={value!r}: expected an int >= 1")


def load_wave_16k(path: Path, segment: tuple[float, float] | None = None) -> np.ndarray:
    """Mono float32 samples at 16 kHz ([S]) of a clip's audio (inside `segment` when given); other rates go
    through the pipeline's one resampler (pipeline.media.resample)."""
    samples, sample_rate = read_audio(path, segment)  # [S]
    return resample(samples, sample_rate, WAV2VEC2_SAMPLE_RATE).astype(np.float32, copy=False)


def effb2_features(extractor: EffNetB2Extractor, crops: np.ndarray, frame_batch_size: int) -> np.ndarray:
    """uint8 [K, S, S, 3] → float32 [K, 1408], `frame_batch_size` crops at a time."""
    parts = [
        extractor.extract(crops[i : i + frame_batch_size]) for i in range(0, len(crops), frame_batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, extractor.dim), np.float32)


def to_float16(clip_id: str, name: str, features: np.ndarray) -> np.ndarray:
    """float16 for storage; refuse values that float16 cannot hold rather than store inf."""
    if not np.isfinite(features).all():
        raise ValueError(f"{clip_id}: {name} features contain NaN or inf")
    peak = float(np.abs(features).max()) if features.size else 0.0
    if peak > FLOAT16_MAX:
        raise ValueError(f"{clip_id}: {name} features reach {peak:.3g}, beyond float16's {FLOAT16_MAX:.0f}")
    return features.astype(np.float16)


@lru_cache(maxsize=2)
def _extractors(config_json: str) -> tuple[EffNetB2Extractor, Wav2Vec2Extractor]:
    """Both extractors of a config, built once per process (run_per_clip calls compute once per batch)."""
    config = json.loads(config_json)
    builders = (
        lambda: EffNetB2Extractor(EffNetB2Config(**config["effb2"]), config["device"]),
        lambda: Wav2Vec2Extractor(Wav2Vec2Config(**config["w2v2"]), config["device"]),
    )
    built, missing = [], []
    for build in builders:  # both, so that a user missing both weights learns it from one run
        try:
            built.append(build())
        except WeightsUnavailableError as err:
            missing.append(str(err))
    if len(missing) == 2:
        raise WeightsUnavailableError(
            f"both extractors lack their weights:\n1. {missing[0]}\n2. {missing[1]}"
        )
    if missing:
        raise WeightsUnavailableError(missing[0])
    return built[0], built[1]


def _extractors_key(config: FeaturesConfig) -> str:
    """`_extractors`'s argument: the same string compute_features makes of the stage config. The device
    stays as configured ("auto"), to be resolved in the process that builds the models."""
    keys = {"effb2": asdict(config.effb2), "w2v2": asdict(config.w2v2), "device": config.device}
    return json.dumps(keys, sort_keys=True)


def extractors_for(config: FeaturesConfig) -> tuple[EffNetB2Extractor, Wav2Vec2Extractor]:
    return _extractors(_extractors_key(config))


def _identities(config_json: str) -> dict:
    """What produces the features, told by the process that computes them (its device sets the compute
    dtype)."""
    effb2, w2v2 = _extractors(config_json)
    return {"audio": w2v2.identity(), "video": effb2.identity()}


def compute_features(jobs: Sequence[ClipJob], config: dict) -> dict:
    """run_per_clip's compute: {clip id: {"effb2", "w2v2", "counts"}} or why the clip has no features
    (`no-face: ...` from the faces stage, `decode-error: ...`). `job.path` is the clip's WAV; its face
    crops come from the faces.h5 named in the config."""
    import h5py

    effb2, w2v2 = _extractors(json.dumps({k: config[k] for k in ("effb2", "w2v2", "device")}, sort_keys=True))
    results: dict = {}
    with h5py.File(config["faces_path"], "r") as faces_h5:
        waves: dict[str, np.ndarray] = {}
        for job in jobs:
            reason = clip_cached_reason(faces_h5, job.id)
            if reason:  # kept in features.h5's errors, so the shards stage can say why it skips the clip
                results[job.id] = reason
                continue
            try:
                waves[job.id] = load_wave_16k(Path(job.path), job.segment)  # [S]
            except (OSError, RuntimeError, ValueError) as err:  # soundfile raises RuntimeError subclasses
                results[job.id] = Reason.DECODE_ERROR.says(f"the audio of {job.id} could not be read ({err})")
        ids = list(waves)
        audio: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), config["audio_batch_size"]):
            batch = ids[start : start + config["audio_batch_size"]]
            audio |= dict(zip(batch, w2v2.extract([waves[i] for i in batch]), strict=True))  # [T_a, D] each
        for clip_id in ids:
            crops = read_clip_faces(faces_h5, clip_id)  # [K, S, S, 3]
            counts = clip_face_counts(faces_h5, clip_id)
            try:
                results[clip_id] = {
                    "effb2": to_float16(
                        clip_id, "effb2", effb2_features(effb2, crops, config["frame_batch_size"])
                    ),
                    "w2v2": to_float16(clip_id, "w2v2", audio[clip_id]),
                    "counts": np.array([counts["frames_total"], counts["frames_with_face"]], np.int32),
                }
            except ValueError as err:  # features beyond float16
                results[clip_id] = Reason.BAD_FEATURES.says(str(err))
    return results


def run_features(
    manifest_path: str | Path,
    corpus_root: str | Path,
    faces_path: str | Path,
    out_path: str | Path,
    config: FeaturesConfig = FeaturesConfig(),
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict:
    """Compute and store both feature sets of every clip usable for the cached path (kept, in a split,
    with at least one face in `faces_path`) into `out_path` (OUT/work/features.h5); the other clips of
    the faces stage get their reason in the file's `errors`.

    The stage config stored in the file holds the extractor identities under `extractors` (read it with
    pipeline.store.intermediates.read_stage_config). Returns {"clips", "errors": {clip id: message},
    "extractors"}.
    """
    faces_path = Path(faces_path)
    read_stage_config(faces_path)  # raises unless the faces stage finished
    # Every candidate of the faces stage: clips without a face get their reason in features.h5's errors.
    jobs = [
        ClipJob(
            r.id,
            str(resolve_inside(corpus_root, r.media["audio"])),
            None if r.segment is None else r.segment.as_tuple(),
        )
        for r in read_manifest(manifest_path)
        if r.cached_candidate()
    ]
    executor = as_executor(executor)
    # Asked of the executor's workers, where the batches run (a GPU actor computes in effb2/w2v2.dtype,
    # whatever this process has), once per worker: each builds its models now, all at once rather than at
    # their first batches, and unusable weights fail before any clip.
    key = _extractors_key(config)
    identities = [found for _, found in executor.map_unordered(_identities, [key] * executor.workers)]
    identity = identities[0]
    if any(found != identity for found in identities):
        raise RuntimeError(f"the workers of the features stage disagree on the extractors: {identities}")
    stage_config = {
        "effb2": asdict(config.effb2),
        "w2v2": asdict(config.w2v2),
        "device": config.device,
        "audio_batch_size": config.audio_batch_size,
        "frame_batch_size": config.frame_batch_size,
        "faces_path": str(faces_path.resolve()),
        "faces_fingerprint": read_fingerprint(faces_path),
        "extractors": identity,
    }
    errors = run_per_clip(
        "features", jobs, compute_features, stage_config, out_path, executor=executor, progress=progress
    )
    return {"clips": len(jobs) - len(errors), "errors": errors, "extractors": identity}
