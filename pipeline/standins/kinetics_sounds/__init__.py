"""A synthetic Kinetics-Sounds in the layout of the CVD Foundation's Kinetics copies:
`annotations/{train,val,test}.csv` (label,youtube_id,time_start,time_end,split) and
`<split>/<youtube_id>_<start:06d>_<end:06d>.mp4` (H.264 + AAC), lacking some listed clips as every real copy
does (pipeline.standins.webclips)."""

from __future__ import annotations

from pathlib import Path

from pipeline.corpora.kinetics_sounds import ANNOTATIONS, clip_id
from pipeline.manifest import Reason
from pipeline.standins.base import StandIn
from pipeline.standins.webclips import WebClipsConfig, WebClipsSummary, check, defect_record, plan, write_copy

HEADER = "label,youtube_id,time_start,time_end,split"


class KineticsSoundsConfig(WebClipsConfig):
    __doc__ = "annotations/{train,val,test}.csv and <split>/<id>_<start:06d>_<end:06d>.mp4, as the CVD " + (
        "Foundation's copies. " + (WebClipsConfig.__doc__ or "")
    )


def label_name(label: int) -> str:
    return f"synthetic action {label}"


def synth_kinetics_sounds(out: Path, config: WebClipsConfig) -> WebClipsSummary:
    clips = plan(config, validation=True)
    end = round(config.seconds)
    lists: dict[str, list[str]] = {split: [HEADER] for split in ("train", "val", "test")}
    files, defects = [], []
    for c in clips:
        stem = clip_id(c.youtube_id, c.start, c.start + end)
        lists[c.split].append(f"{label_name(c.label)},{c.youtube_id},{c.start},{c.start + end},{c.split}")
        files.append(f"{c.split}/{stem}.mp4")
        if not c.audio:
            defects.append(defect_record(stem, files[-1], "no audio stream", Reason.NO_AUDIO_STREAM))
    if config.with_defects:  # a row without its end second
        c = clips[0]
        lists["train"].append(f"{label_name(c.label)},{c.youtube_id}x,{c.start},,train")
        where = f"{ANNOTATIONS}/train.csv:{len(lists['train'])}"
        defects.append(defect_record(f"{c.youtube_id}x", where, "bad row", Reason.BAD_ANNOTATION))
    annotations = {f"{ANNOTATIONS}/{split}.csv": "\n".join(rows) + "\n" for split, rows in lists.items()}
    return write_copy(out, config, clips, files, annotations, defects, "Kinetics-Sounds")


STAND_IN = StandIn("kinetics_sounds", KineticsSoundsConfig, synth_kinetics_sounds, check=check)
