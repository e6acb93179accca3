"""What a corpus provides to the pipeline (`Corpus`), and the checks every clip goes through
(`validate_clip`).

A corpus is a plug-in: a package under `pipeline/corpora/<name>/`, or an installed package that names its
`Corpus` object in the entry-point group `mlbpipe.corpora` (pipeline.corpora), whose `Corpus` object knows its
layout and nothing else. The stages know only this interface:

- `scan(root) -> Scan`: every clip found under a corpus root, its files by role, label, group, segment,
  and the problems the scan itself found (a file name that does not parse, a malformed annotation row);
- `validate(root, clip, config) -> ClipRecord`: probe the clip's media and decide kept or rejected, with a
  reason (the default runs `validate_clip` with the corpus's `MediaSpec` and known-bad list);
- `assign_splits(records, config) -> str`: put every clip into train / validation / test (or no split)
  by the corpus's protocols, never splitting a group; returns the protocol's name (e.g. `vavl-1`);
- `label_names`, `method_defaults` (the authors' hyper-parameters per method, written beside the shards),
  and `check_layout(root)` for `mlbpipe doctor`;
- optionally what the whole corpus holds (`corpus_clips`, `protocol_clips`, `stand_in`, `source`), so that
  `coverage(...)` can say how much of it a copy has (`doctor` and `prepare` print it).

A synthetic stand-in that writes a copy in the corpus's layout is not part of this interface: it lives beside
the corpus (pipeline.standins), so that the code which reads a real copy never depends on a generator.

Modelled on Lhotse's recipes: one recipe per corpus, `prepare_<corpus>(corpus_dir, output_dir)` becoming
`mlbpipe prepare <corpus> --root DIR --out DIR`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.manifest import ClipRecord, Reason, Segment
from pipeline.media import LFS_POINTER_PREFIX, MediaError, probe_audio, probe_video, resolve_inside

SEGMENT_TOLERANCE_S = 0.5  # a labelled segment may end this far past the media's measured end


class CorpusError(ValueError):
    """The corpus root itself is unusable (wrong folder, no clips) or a protocol cannot be built. The
    message names the path or the setting, and the fix."""


def synth_hint(name: str) -> str:
    """The fix that offers a synthetic stand-in: into a folder of its own, never into the root the user
    believes holds the real corpus (where the stand-in would pass for it)."""
    return (
        f"to try mlbpipe without the real corpus, write a synthetic stand-in into a new folder: "
        f"mlbpipe synth {name} data/{name}-synthetic"
    )


@dataclass(frozen=True)
class MediaSpec:
    """What the validator expects of a corpus's media.

    audio_in_video: the audio is the video file's own audio stream (mp4, avi); otherwise a separate file.
    audio_format: {"sample_rate", "channels", "sample_width"} a separate audio file must have (None: any).
    video_needs_audio_stream: reject a video file without an audio stream even when the audio comes from a
        separate file (CREMA-D: such FLVs are the corpus's broken recordings).
    """

    audio_in_video: bool = False
    audio_format: dict[str, int] | None = None
    video_needs_audio_stream: bool = False

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles that have files of their own, in the order their checks run."""
        return ("video",) if self.audio_in_video else ("audio", "video")


@dataclass
class ClipSource:
    """What a scan found for one clip id.

    files: role -> every file found for it (paths relative to the root, POSIX); [] when absent, more than
        one when the id is found twice.
    expected: role -> where that file should be (for the message when it is missing).
    problems: full reasons (`Reason.X.says(...)`) the scan found; the first one found rejects the clip.
    """

    id: str
    files: dict[str, list[str]]
    expected: dict[str, str] = field(default_factory=dict)
    label: int | None = None
    label_name: str | None = None
    group: str | None = None
    segment: Segment | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fixes: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)


@dataclass
class Scan:
    clips: list[ClipSource]  # sorted by id
    ignored: list[str] = field(default_factory=list)  # files under the root that are not media of a clip
    # what concerns the copy rather than one clip (a list line that names no clip, listed clips the copy
    # lacks, rows that name one video twice), naming the file and line: printed with the index summary
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the per-clip checks (params.yaml: `index`)."""

    max_duration_mismatch_s: float = 1.0  # separate audio and video files whose durations differ by more
    silence_peak: float = 1e-4  # audio whose peak |sample| is below this (about -80 dBFS) is silent


@dataclass(frozen=True)
class Coverage:
    """How much of its corpus a copy holds (`Corpus.coverage`), for `doctor` and `prepare`."""

    corpus: str  # the corpus's title, e.g. "CREMA-D"
    total: int  # clips of the whole corpus
    found: int  # of those, clips this copy has (whatever state their files are in)
    protocol: str | None = None  # the protocol whose clip list is counted too, e.g. "VAVL"
    protocol_total: int = 0
    protocol_found: int = 0
    stand_in: str | None = None  # why the copy is a synthetic stand-in, where the corpus can tell

    @property
    def complete(self) -> bool:
        return self.found >= self.total

    @property
    def ok(self) -> bool:
        """The whole real corpus: anything else is worth a warning (results on it say little)."""
        return self.complete and not self.stand_in

    def describe(self) -> str:
        """`24 of CREMA-D's 7442 clips (0.3%), 20 of VAVL's 5820: a partial copy ...`"""
        text = f"{self.found} of {self.corpus}'s {self.total} clips ({100 * self.found / self.total:.1f}%)"
        if self.protocol is not None:
            text += f", {self.protocol_found} of {self.protocol}'s {self.protocol_total}"
        if self.stand_in:
            text += f": a synthetic stand-in ({self.stand_in}), not the real corpus"
        elif not self.complete:
            text += f": a partial copy, on which results say little about {self.corpus}"
        return text


@dataclass(frozen=True)
class LayoutCheck:
    """One line of `mlbpipe doctor`'s corpus report."""

    name: str
    ok: bool
    detail: str
    warn_only: bool = False  # not ok, yet the corpus can still be prepared (a warning, not a failure)


class Corpus(ABC):
    """A corpus plug-in (see the module docstring)."""

    name: ClassVar[str]
    label_names: ClassVar[tuple[str, ...]]
    media: ClassVar[MediaSpec]
    protocols: ClassVar[tuple[str, ...]]  # accepted values of index.protocol; the first is the default
    manifests_dir: ClassVar[Path]  # checked-in lists: manifests/<name>/
    method_defaults: ClassVar[dict] = {}  # {method: {input path: {fusion or "*": {param: value}}}}
    layout_hint: ClassVar[str] = ""  # what a root holds, for error messages: "AudioWAV/ and VideoFlash/"
    # the preparation settings the corpus's authors used, under params.yaml: {section: {key: value}}
    stage_defaults: ClassVar[dict] = {}
    input_paths: ClassVar[tuple[str, ...]] = ("raw", "cached")  # the input paths it can be prepared for
    input_paths_note: ClassVar[str] = ""  # why an input path is missing, for the refusal
    title: ClassVar[str] = ""  # the corpus's usual name in messages ("CREMA-D"); default: `name`
    source: ClassVar[str] = ""  # where to get a real copy today, for the errors that say a copy is unusable

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def default_protocol(self) -> str:
        return self.protocols[0]

    @abstractmethod
    def scan(self, root: Path) -> Scan:
        """Every clip under `root`. Raises CorpusError for a wrong root or an empty corpus."""

    def known_bad(self) -> dict[str, str]:
        """{clip id: problem} of clips the corpus is known to have broken (rejected as `known-bad`)."""
        return {}

    def validate(
        self, root: Path, clip: ClipSource, config: ValidationConfig, known_bad: dict[str, str]
    ) -> ClipRecord:
        """Probe one clip's media and return its record (without protocol and split)."""
        return validate_clip(root, clip, self, config, known_bad)

    def check_protocol(self, protocol: str, partition: int) -> None:
        """Raise ValueError naming the key and the value when the corpus has no such protocol."""
        if protocol not in self.protocols:
            raise ValueError(
                f"index.protocol={protocol!r}: {self.name} has the protocols {', '.join(self.protocols)}"
            )

    def fold_setting(self, protocol: str) -> str | None:
        """The index setting that numbers `protocol`'s folds, for `mlbpipe prepare --folds`: "partition" (fixed
        partitions, e.g. CREMA-D's VAVL 1-3), "seed" (a random protocol: fold k is the draw with seed k), or
        None (one split: its folds are training seeds on one folder)."""
        return "partition"

    @abstractmethod
    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        """Set `split` on every record (None: outside the protocol) and return the protocol's name."""

    def configured(self, name: str, settings: dict, where: str) -> Corpus:
        """This corpus under another name, with the layout settings of params.yaml's `corpora.<name>.layout`
        (the generic corpus and its presets take them). Raises CorpusError for a corpus that takes none."""
        raise CorpusError(
            f"{where}: corpora.{name}: the corpus {self.name} takes no layout settings and no other name; "
            "only the generic corpus and its presets do (docs/corpora/adding.md)"
        )

    def check_layout(self, root: Path) -> list[LayoutCheck]:
        """Does `root` look like a copy of this corpus? (`mlbpipe doctor --corpus NAME --root PATH`)"""
        return [
            LayoutCheck(
                "corpus root", root.is_dir(), f"{root} {'found' if root.is_dir() else 'is not a folder'}"
            )
        ]

    def corpus_clips(self) -> set[str] | None:
        """Every clip id of the whole corpus (None: the plug-in does not know them)."""
        return None

    def protocol_clips(self, protocol: str, partition: int) -> tuple[str, set[str]] | None:
        """(its name, its clip ids) for a protocol that takes a fixed list of clips (None: it takes any)."""
        return None

    def stand_in(self, root: Path) -> str | None:
        """Why `root` is a synthetic stand-in (the file that says so), or None."""
        return None

    def coverage(
        self, root: Path, clip_ids: set[str], protocol: str | None = None, partition: int = 1
    ) -> Coverage | None:
        """How many of the corpus's clips, and of the protocol's list, are among `clip_ids` (a scan of
        `root`); None where the plug-in does not know its corpus's clips."""
        everything = self.corpus_clips()
        if not everything:
            return None
        listed = self.protocol_clips(protocol or self.default_protocol, partition)
        name, protocol_ids = listed if listed is not None else (None, set())
        return Coverage(
            self.title or self.name,
            len(everything),
            len(clip_ids & everything),
            name,
            len(protocol_ids),
            len(clip_ids & protocol_ids),
            self.stand_in(root),
        )


def sampled_lfs_stubs(found: list[Path]) -> tuple[int, int]:
    """(stubs, sampled): how many of a sample of a corpus's media files (about 50, evenly spread) are Git
    LFS pointer stubs, for a layout check: a clone without `git lfs pull` holds only those."""
    sample = found[:: max(1, len(found) // 50)]
    stubs = 0
    for path in sample:
        if path.stat().st_size < 1024:
            with open(path, "rb") as f:
                stubs += f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    return stubs, len(sample)


def _format_text(audio_format: dict[str, int]) -> str:
    channels = "mono" if audio_format["channels"] == 1 else f"{audio_format['channels']}-channel"
    return f"{audio_format['sample_rate']} Hz {channels} {8 * audio_format['sample_width']}-bit"


def validate_clip(
    root: str | Path, clip: ClipSource, corpus: Corpus, config: ValidationConfig, known_bad: dict[str, str]
) -> ClipRecord:
    """Probe one clip's files and return its manifest record (without protocol and split).

    Checks run from structure to content, and the first that fails gives the reason: the scan's own
    problems, a duplicate id, a missing file, what probing finds (stub, empty, unreadable, undecodable,
    no stream), the audio format, zero durations, a video without audio, separate audio and video whose
    durations disagree, silence, a segment outside the media, the known-bad list. Facts that could be
    probed are kept either way.
    """
    spec = corpus.media
    video_file = clip.files.get("video") or []
    audio_file = video_file if spec.audio_in_video else (clip.files.get("audio") or [])
    record = ClipRecord(
        id=clip.id,
        corpus=corpus.name,
        label=clip.label,
        label_name=clip.label_name,
        group=clip.group,
        media={
            "audio": audio_file[0] if audio_file else None,
            "video": video_file[0] if video_file else None,
        },
        segment=clip.segment,
        probe={"audio": None, "video": None},
        usable=dict.fromkeys(corpus.input_paths, True),  # only the input paths the corpus has
        fixes=list(clip.fixes),
        extra=dict(clip.extra),
    )
    reasons = list(clip.problems)
    everything = [path for role in spec.roles for path in clip.files.get(role) or []]
    if any(len(clip.files.get(role) or []) > 1 for role in spec.roles):
        reasons.append(
            Reason.DUPLICATE_ID.says(f"{clip.id} is found more than once: {', '.join(everything)}")
        )
    for role in spec.roles:
        if not clip.files.get(role):
            others = [p for other in spec.roles if other != role for p in clip.files.get(other) or []]
            exists = f" (its {Path(others[0]).suffix[1:].upper()} exists)" if others else ""
            reasons.append(Reason.MISSING_FILE.says(f"{clip.expected.get(role, clip.id)} is absent{exists}"))

    audio = video = None
    for role in spec.roles:
        if not clip.files.get(role):
            continue
        relative = clip.files[role][0]
        try:
            path = resolve_inside(root, relative)
            if role == "video":
                video = probe_video(path, relative)
                record.probe["video"] = video.as_dict()
            else:
                audio = probe_audio(path, relative)
                record.probe["audio"] = audio.as_dict()
        except MediaError as err:
            reasons.append(err.reason)
    if spec.audio_in_video and video is not None and video.has_audio:
        try:
            audio = probe_audio(resolve_inside(root, video_file[0]), video_file[0])
            record.probe["audio"] = audio.as_dict()
        except MediaError as err:
            reasons.append(err.reason)

    audio_name = record.media["audio"]
    if audio is not None and not spec.audio_in_video:
        if spec.audio_format is not None:
            facts = {key: record.probe["audio"][key] for key in spec.audio_format}
            if facts != spec.audio_format:
                reasons.append(
                    Reason.BAD_AUDIO_FORMAT.says(
                        f"{audio_name} is {facts['sample_rate']} Hz, {facts['channels']} channel(s), "
                        f"{8 * facts['sample_width']}-bit; expected {_format_text(spec.audio_format)}"
                    )
                )
        if audio.duration <= 0:
            reasons.append(Reason.ZERO_DURATION.says(f"{audio_name} has no samples"))
    if video is not None:
        if video.duration <= 0:
            reasons.append(Reason.ZERO_DURATION.says(f"{video_file[0]} has no video duration"))
        if (spec.audio_in_video or spec.video_needs_audio_stream) and not video.has_audio:
            reasons.append(Reason.NO_AUDIO_STREAM.says(f"{video_file[0]} has no audio stream"))
        if spec.audio_in_video and audio is not None and audio.duration <= 0:
            reasons.append(Reason.ZERO_DURATION.says(f"{video_file[0]} has an audio stream with no samples"))
    if (
        not spec.audio_in_video
        and audio is not None
        and video is not None
        and audio.duration > 0
        and video.duration > 0
    ):
        gap = abs(video.duration - audio.duration)
        if gap > config.max_duration_mismatch_s:
            reasons.append(
                Reason.DURATION_MISMATCH.says(
                    f"{video_file[0]} lasts {video.duration:.2f} s but {audio_name} {audio.duration:.2f} s "
                    f"(limit {config.max_duration_mismatch_s} s)"
                )
            )
    if audio is not None and audio.duration > 0 and audio.peak < config.silence_peak:
        where = audio_name if not spec.audio_in_video else f"the audio of {audio_name}"
        reasons.append(Reason.SILENT_AUDIO.says(f"{where} is silent (peak {audio.peak:.2g})"))
    segment = clip.segment
    measured = segment is not None and video is not None and video.duration > 0
    if measured and (
        segment.start < 0 or segment.duration <= 0 or segment.end > video.duration + SEGMENT_TOLERANCE_S
    ):
        reasons.append(
            Reason.SEGMENT_OUTSIDE.says(
                f"the segment [{segment.start:g}, {segment.end:g}) s of {video_file[0]} is not inside its "
                f"{video.duration:.2f} s"
            )
        )
    if clip.id in known_bad:
        reasons.append(Reason.KNOWN_BAD.says(known_bad[clip.id]))

    if reasons:
        record.reject(reasons[0])
    return record


def read_text_lines(path: Path) -> list[str]:
    """The lines of a text file, whatever its line endings (LF, CRLF, CR), without a byte-order mark;
    bytes that are not UTF-8 become U+FFFD (the line then fails to parse instead of the run)."""
    return path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff").splitlines()
