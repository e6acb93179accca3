"""A synthetic VGGSound in the layout of the public copies: `vggsound.csv` (no header: YouTube id, start
second, label, split) and `video/<YouTube id>_<start:06d>.mp4` (H.264 + AAC), lacking some listed clips
as every real copy does (pipeline.standins.webclips)."""

from __future__ import annotations

from pathlib import Path

from pipeline.corpora.vggsound import ANNOTATIONS, clip_id
from pipeline.manifest import Reason
from pipeline.standins.base import StandIn
from pipeline.standins.webclips import WebClipsConfig, WebClipsSummary, check, defect_record, plan, write_copy


class VGGSoundConfig(WebClipsConfig):
    __doc__ = "vggsound.csv and video/<YouTube id>_<start:06d>.mp4, as the public copies. " + (
        WebClipsConfig.__doc__ or ""
    )


def label_name(label: int) -> str:
    return f"synthetic sound {label}"


def synth_vggsound(out: Path, config: WebClipsConfig) -> WebClipsSummary:
    clips = plan(config)
    rows = [f"{c.youtube_id},{c.start},{label_name(c.label)},{c.split}" for c in clips]
    files = [f"video/{clip_id(c.youtube_id, c.start)}.mp4" for c in clips]
    defects = [
        defect_record(clip_id(c.youtube_id, c.start), f, "no audio stream", Reason.NO_AUDIO_STREAM)
        for c, f in zip(clips, files, strict=True)
        if not c.audio
    ]
    if config.with_defects:  # a row whose start is not a number (the clip's video is written all the same)
        c = clips[0]
        rows.append(f"{c.youtube_id}x,soon,{label_name(c.label)},train")
        defects.append(
            defect_record(f"{c.youtube_id}x", f"{ANNOTATIONS}:{len(rows)}", "bad row", Reason.BAD_ANNOTATION)
        )
    return write_copy(out, config, clips, files, {ANNOTATIONS: "\n".join(rows) + "\n"}, defects, "VGGSound")


STAND_IN = StandIn("vggsound", VGGSoundConfig, synth_vggsound, check=check)
