"""UCF101's own per-clip rules, applied after the shared probe (pipeline.corpora.base.validate_clip), which
probes every clip's streams whatever its class (a clip without an audio stream gets `no-audio-stream`):

- `excluded-class` for a clip of the 50 classes without audio (UCF50's): the audio-visual protocol has
  the other 51; the clip stays in the manifest, label None, so a real copy's 6,475 such clips are counted;
- `too-short` for a clip that gives fewer than four frames at 1 fps by the authors' rule
  (`frames_at_one_fps`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.corpora.base import ClipSource, Corpus, ValidationConfig, validate_clip
from pipeline.corpora.ucf101.layout import AUDIO_CLASSES, NAME, UCF50_CLASSES
from pipeline.manifest import ClipRecord, Reason, reason_code

MIN_FRAMES = 4  # the authors' `dataset.num_frame` (configs/UCF101): a clip must give 4 frames at 1 fps
# what the shared checks find after the video probed fine, which a cut-off file or an excluded class explains
_AFTER_PROBE = {Reason.NO_AUDIO_STREAM, Reason.ZERO_DURATION, Reason.SILENT_AUDIO}


def frames_at_one_fps(video: dict) -> int:
    """The frames the authors' reader keeps of a video probed as `video` (VideoInfo.as_dict()): it reads
    every frame and keeps frame n when n % int(fps) == 0, i.e. ceil(frames / int(fps)) with frames =
    duration x fps. At 25 fps, 4 frames need at least 76 frames: 3.04 s."""
    frames = round(video["duration"] * video["fps"])
    step = max(int(video["fps"]), 1)
    return -(-frames // step)


def validate_ucf101_clip(
    root: Path, clip: ClipSource, corpus: Corpus, config: ValidationConfig, known_bad: dict[str, str]
) -> ClipRecord:
    """The shared checks, then UCF101's rules in this order: excluded class, too short. A rule
    replaces a reason that only follows from what it finds (no audio stream, an audio stream without
    samples, silence) and never a structural one (missing, stub, empty, undecodable, bad name, ...)."""
    record = validate_clip(root, clip, corpus, config, known_bad)
    video = record.probe["video"]
    replaceable = record.ok or reason_code(record.reason) in _AFTER_PROBE
    if video is None or not replaceable:
        return record
    relative = record.media["video"]
    class_name = clip.extra.get("class")
    if class_name in UCF50_CLASSES:
        streams = "" if video["has_audio"] else "; it has no audio stream either"
        record.reject(
            Reason.EXCLUDED_CLASS.says(
                f"{class_name} is one of the 50 {NAME} classes without audio (UCF50's); the audio-visual "
                f"protocol uses the {len(AUDIO_CLASSES)} with audio (manifests/{NAME}/audio_classes.txt){streams}"
            )
        )
        return record
    kept = frames_at_one_fps(video)
    if record.ok and kept < MIN_FRAMES:
        record.reject(
            Reason.TOO_SHORT.says(
                f"{relative} lasts {video['duration']:.2f} s at {video['fps']:g} fps: {kept} frame(s) at 1 fps, "
                f"the protocol takes {MIN_FRAMES}"
            )
        )
    return record
