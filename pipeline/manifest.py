"""The clip manifest (`OUT/manifest.jsonl`, docs/CONTRACTS.md): one corpus-neutral `ClipRecord` per clip,
the reason codes a clip can be rejected with, reading and writing JSON Lines, and the summary.

Every stage reads the manifest through `ClipRecord`: media by role (`video`, `audio`), the optional
segment, the group no split may straddle, the split, the status. What only one corpus knows (CREMA-D's
sentence and level, say) lives in `extra`, which no stage reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlb.common.atomic import atomic_write_bytes
from mlb.common.contract import (  # the split names and the two input paths a clip may be usable for
    INPUT_PATHS,
    SPLITS,
)


class Reason(StrEnum):
    """Why a clip is rejected (or, `no-face`, not usable for the cached path): the stable code before ": "
    in a record's `reason`. The validator, the synthetic corpora's defect tables and the tests share it."""

    MISSING_FILE = "missing-file"  # a media file is absent
    UNREADABLE = "unreadable"  # cannot be opened (permissions)
    EMPTY_FILE = "empty-file"  # 0 bytes
    LFS_POINTER = "lfs-pointer"  # a Git LFS pointer stub instead of the media
    DECODE_ERROR = "decode-error"  # truncated or corrupt stream
    NO_VIDEO_STREAM = "no-video-stream"
    NO_AUDIO_STREAM = "no-audio-stream"
    ZERO_DURATION = "zero-duration"
    DURATION_MISMATCH = "duration-mismatch"  # separate audio and video files whose durations disagree badly
    BAD_AUDIO_FORMAT = "bad-audio-format"  # an audio file not in the corpus's documented format
    SILENT_AUDIO = "silent-audio"
    SEGMENT_OUTSIDE = "segment-outside"  # the labelled segment does not lie inside the media
    BAD_NAME = "bad-name"  # a file name that does not parse
    BAD_ANNOTATION = "bad-annotation"  # a label or segment row that does not parse (file and line named)
    TOO_SHORT = "too-short"  # shorter than the corpus's protocol needs (e.g. fewer frames than it uses)
    EXCLUDED_CLASS = (
        "excluded-class"  # a class the corpus's protocol leaves out (e.g. UCF101's without audio)
    )
    DUPLICATE_ID = "duplicate-id"  # one clip id found twice
    KNOWN_BAD = "known-bad"  # on the corpus's known-bad list, and no more specific check fired
    NO_FACE = "no-face"  # cached path only: no face in any frame
    BAD_FEATURES = "bad-features"  # cached path only: features that float16 cannot hold

    def says(self, message: str) -> str:
        """The full reason: `<code>: <message>`."""
        return f"{self.value}: {message}"


def reason_code(reason: str | None) -> str | None:
    """`lfs-pointer` from `lfs-pointer: AudioWAV/x.wav is a Git LFS pointer stub; ...`."""
    return reason.split(":", 1)[0] if reason else None


@dataclass(frozen=True)
class Segment:
    """The labelled part of a clip's media, in seconds from its start."""

    start: float
    duration: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    def as_tuple(self) -> tuple[float, float]:
        return (self.start, self.duration)


@dataclass
class ClipRecord:
    """One clip of a corpus (docs/CONTRACTS.md, "Manifest"). Field order is the JSON key order.

    media: role -> path relative to the corpus root (POSIX). `audio` may name the same file as `video`:
        then the audio is that file's audio stream.
    group: the unit no split may straddle (a CREMA-D actor, a UCF101 group, an AVE video).
    probe: role -> facts probed from that file (None when it could not be probed).
    usable: per input path, whether a later stage may use the clip; `reasons` says why not.
    extra: corpus-specific facts (CREMA-D: actor, sentence, level); no stage reads them.
    """

    id: str
    corpus: str
    label: int | None = None
    label_name: str | None = None
    group: str | None = None
    media: dict[str, str | None] = field(default_factory=dict)
    segment: Segment | None = None
    probe: dict[str, dict | None] = field(default_factory=dict)
    protocol: str | None = None
    split: str | None = None
    status: str = "ok"
    reason: str | None = None
    usable: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(INPUT_PATHS, True))
    reasons: dict[str, str] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def in_split(self) -> bool:
        """Kept and assigned to a split: a clip that goes into the shards."""
        return self.ok and self.split in SPLITS

    def usable_for(self, input_path: str) -> bool:
        """In a split and usable for `input_path` (a corpus without that path has no `usable` entry for it)."""
        return self.in_split() and self.usable.get(input_path, False)

    def cached_candidate(self) -> bool:
        """A clip the cached path's stages (faces, features) take up: in a split, and not ruled out for
        `cached` by anything but the faces stage itself (its `no-face` reason is recomputed each run)."""
        if not self.in_split():
            return False
        return self.usable.get("cached", False) or (self.reasons.get("cached") or "").startswith(
            f"{Reason.NO_FACE}:"
        )

    def reject(self, reason: str) -> None:
        """Mark the clip rejected; it stays in the manifest, unusable for every input path."""
        self.status, self.reason = "rejected", reason
        self.usable = dict.fromkeys(INPUT_PATHS, False)

    def to_json(self) -> dict:
        out = asdict(self)
        out["segment"] = None if self.segment is None else asdict(self.segment)
        return out

    @classmethod
    def from_json(cls, obj: dict, where: str = "record") -> ClipRecord:
        if not isinstance(obj, dict) or not all(
            isinstance(obj.get(key), str) for key in ("id", "corpus", "status")
        ):
            raise ValueError(
                f"{where}: a manifest record needs at least 'id', 'corpus' and 'status' (strings)"
            )
        unknown = sorted(set(obj) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {', '.join(unknown)} in the record of {obj['id']!r}; was the manifest "
                "written by another version of mlbpipe? Rerun the index stage"
            )
        fields = dict(obj)
        segment = fields.get("segment")
        if segment is not None:
            try:
                fields["segment"] = Segment(float(segment["start"]), float(segment["duration"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{where}: segment of {obj['id']!r} is {segment!r}, not {{start, duration}}"
                ) from err
        return cls(**fields)


def corpus_description_path(manifest_path: str | Path) -> Path:
    """`corpus.json` beside the manifest: what later stages need to know of the corpus without importing
    its plug-in (its name, label names, split protocol, the authors' per-method settings)."""
    return Path(manifest_path).with_name("corpus.json")


def read_corpus_description(manifest_path: str | Path) -> dict:
    """The `corpus.json` beside a manifest (raises with the fix when the index stage has not written it)."""
    path = corpus_description_path(manifest_path)
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing; rerun the index stage (mlbpipe prepare CORPUS --stages index)"
        )
    return json.loads(path.read_text())


def write_manifest(records: Iterable[ClipRecord], path: str | Path) -> None:
    """Write JSON Lines sorted by id, atomically."""
    lines = [json.dumps(r.to_json(), ensure_ascii=False) for r in sorted(records, key=lambda r: r.id)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode() if lines else b"")


def read_manifest(path: str | Path) -> list[ClipRecord]:
    """The records of a manifest file, naming the file and line of any bad line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            records.append(ClipRecord.from_json(obj, f"{path}:{number}"))
    return records


def summarize(records: list[ClipRecord]) -> dict:
    """Counts of kept / rejected (by reason code) / per split, and the rejected ids per reason."""
    kept = [r for r in records if r.ok]
    rejected = [r for r in records if not r.ok]
    by_reason: dict[str, list[str]] = {}
    for r in rejected:
        by_reason.setdefault(reason_code(r.reason) or "unknown", []).append(r.id)
    splits = Counter(r.split or "none" for r in kept)
    return {
        "clips": len(records),
        "kept": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": {k: len(v) for k, v in sorted(by_reason.items())},
        "rejected_ids": {k: sorted(v) for k, v in sorted(by_reason.items())},
        "kept_by_split": dict(sorted(splits.items())),
    }


def format_summary(summary: dict, *, max_ids: int = 5) -> str:
    """The on-screen summary: kept, rejected by reason (with a few ids), clips per split."""
    lines = [f"{summary['clips']} clips: {summary['kept']} kept, {summary['rejected']} rejected"]
    for code, count in summary["rejected_by_reason"].items():
        ids = summary["rejected_ids"][code]
        shown = ", ".join(ids[:max_ids]) + (f", ... (+{len(ids) - max_ids})" if len(ids) > max_ids else "")
        lines.append(f"  rejected {code}: {count}  [{shown}]")
    splits = summary["kept_by_split"]
    lines.append("  kept per split: " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    if "none" in splits:
        lines.append(
            f"  note: {splits['none']} kept clips are outside the split protocol (e.g. not in its clip list) "
            "and go to no shard"
        )
    return "\n".join(lines)
