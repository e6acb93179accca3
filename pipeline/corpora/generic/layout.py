"""The generic corpus's layout: its settings (params.yaml `corpora.<name>.layout`) and the two ways a copy
describes its clips.

- An annotation file, CSV (`,`) or TSV (`\\t`, by its suffix), with a header row naming its columns:
  `path` (or `video`: the video file, relative to the root), `label`, and optionally `audio` (a separate
  audio file, with `audio: file`), `split` (train | validation | test; `val` and `dev` read as
  validation; empty: no split), `group` (clips of one group never straddle splits; default: the clip
  alone), `start` and `end` (the labelled segment, in seconds; both or neither) and `id` (default: the
  video's file stem). `columns` renames any of them.
- Class folders: `ROOT/<label>/<clip>.<ext>`, or `ROOT/<split>/<label>/<clip>.<ext>` when every top
  folder is a split name; with `audio: file`, the audio is the file of the same stem beside the video.

A row that does not parse is still a clip, rejected as `bad-annotation` naming the file and line, so that
the manifest counts it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.corpora.base import (
    ClipSource,
    CorpusError,
    LayoutCheck,
    Scan,
    read_text_lines,
    sampled_lfs_stubs,
)
from pipeline.manifest import Reason, Segment

STAND_IN_MARKER = "synth_stand_in.json"  # what `mlbpipe synth` writes into a stand-in of a preset
ANNOTATION_NAMES = ("annotations.csv", "annotations.tsv")  # found at the root when `annotations` is unset
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".flv", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg")
AUDIO_MODES = ("stream", "file")
COLUMNS = ("id", "path", "video", "audio", "label", "split", "group", "start", "end")
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "dev": "validation",
               "test": "test"}  # fmt: skip


@dataclass(frozen=True)
class LayoutSettings:
    """How a copy of a generic corpus is laid out (params.yaml: `corpora.<name>.layout`).

    annotations: the CSV or TSV that lists the clips, relative to the root (or absolute); None: the root's
        annotations.csv or annotations.tsv when it has one, else class folders.
    classes: the labels in label order: a list, or a text file with one per line (a relative path is taken
        from the working directory: the repository under DVC); None: every label the copy names, sorted.
        A clip whose label is outside a given list is rejected as `excluded-class`.
    audio: stream (the video file's own audio stream) | file (a separate audio file per clip).
    faces: also prepare the cached path (MTCNN faces, frozen features) for this corpus.
    validation, test: the fractions of the groups that the `random` protocol draws for them (validation:
        also of the train groups, where the copy gives train and test only).
    columns: {column: the name the annotation file gives it}, e.g. {path: filename, label: class}.
    method_defaults: per-method settings the trainer takes where a run sets none, in the plug-ins' form
        {method: {input path: {fusion or "*": {param: value}}}}; {}: every method's own defaults.
    title: the corpus's name in messages (default: its name in params.yaml).
    """

    annotations: str | None = None
    classes: list[str] | str | None = None
    audio: str = "stream"
    faces: bool = False
    validation: float = 0.1
    test: float = 0.1
    columns: dict[str, str] = field(default_factory=dict)
    method_defaults: dict = field(default_factory=dict)
    title: str = ""

    def __post_init__(self):
        if self.audio not in AUDIO_MODES:
            raise ValueError(f"layout.audio={self.audio!r}: choose one of {', '.join(AUDIO_MODES)}")
        for key in ("validation", "test"):
            if not 0 < getattr(self, key) < 0.5:
                raise ValueError(f"layout.{key}={getattr(self, key)!r}: must be between 0 and 0.5")
        unknown = sorted(set(self.columns) - set(COLUMNS))
        if unknown:
            raise ValueError(
                f"layout.columns.{unknown[0]}: not a column; the columns are {', '.join(COLUMNS)}"
            )
        if isinstance(self.classes, list) and len(set(self.classes)) != len(self.classes):
            raise ValueError("layout.classes names a label twice")


def read_class_list(classes: list[str] | str | None) -> tuple[str, ...] | None:
    """The configured label list (None: none configured). Raises CorpusError for a list file that is absent."""
    if classes is None or isinstance(classes, list):
        return None if classes is None else tuple(str(c) for c in classes)
    path = Path(classes)
    if not path.is_file():
        raise CorpusError(f"layout.classes={classes!r}: {path} is not a file (one label per line)")
    return tuple(line.strip() for line in read_text_lines(path) if line.strip())


def annotation_file(root: Path, settings: LayoutSettings) -> Path | None:
    """The annotation file a root uses (None: class folders)."""
    if settings.annotations is not None:
        return root / settings.annotations
    found = [root / name for name in ANNOTATION_NAMES if (root / name).is_file()]
    return found[0] if found else None


def safe_id(text: str) -> str:
    """A clip id a shard key can hold: no dots, no slashes."""
    return text.replace(".", "_").replace("/", "_").replace("\\", "_")


@dataclass
class Row:
    """One clip as its annotation gives it, before labels become numbers."""

    id: str
    line: str  # `annotations.csv:7`, for messages
    video: str | None
    audio: str | None = None
    label: str | None = None
    split: str | None = None
    group: str | None = None
    segment: Segment | None = None
    problem: str | None = None  # why the row does not parse


def _number(text: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number of seconds") from None


def _parse_row(values: dict[str, str], line: str, settings: LayoutSettings) -> Row:
    video = values.get("path") or values.get("video") or None
    row = Row(
        id=values.get("id") or (safe_id(Path(video).stem) if video else line.replace(":", "-line")),
        line=line,
        video=video,
        audio=values.get("audio") or None,
        label=values.get("label") or None,
        group=values.get("group") or None,
    )
    try:
        if None in values.values() or "\0" in values:  # fewer or more fields than the header
            raise ValueError("its number of fields differs from the header's")
        if video is None:
            raise ValueError("it names no video file (column path)")
        if settings.audio == "file" and row.audio is None:
            raise ValueError("it names no audio file (column audio), and layout.audio is file")
        if row.label is None:
            raise ValueError("it has no label")
        if "." in row.id or "/" in row.id:
            raise ValueError(f"the id {row.id!r} has a dot or a slash (shard keys cannot)")
        split = values.get("split") or ""
        if split and split.lower() not in SPLIT_NAMES:
            raise ValueError(f"the split {split!r} is not train, validation or test")
        row.split = SPLIT_NAMES.get(split.lower())
        start, end = values.get("start") or "", values.get("end") or ""
        if bool(start) != bool(end):
            raise ValueError("a segment needs both start and end")
        if start:
            begin, stop = _number(start, "start"), _number(end, "end")
            if stop <= begin:
                raise ValueError(f"the segment ends ({stop:g} s) before it starts ({begin:g} s)")
            row.segment = Segment(begin, stop - begin)
    except ValueError as err:
        row.problem = str(err)
    return row


def read_annotations(path: Path, shown: str, settings: LayoutSettings) -> list[Row]:
    """Every data row of a CSV / TSV annotation file, malformed ones included (with their problem). Raises
    CorpusError for a file that is absent or whose header lacks the path or label column."""
    if not path.is_file():
        raise CorpusError(
            f"layout.annotations: {path} is not a file; give the CSV or TSV that lists the clips"
        )
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(read_text_lines(path), delimiter=delimiter)
    header = [name.strip() for name in next(reader, [])]
    rename = {given: column for column, given in settings.columns.items()}
    names = [rename.get(name, name) for name in header]
    needed = ["path or video", "label"] + (["audio"] if settings.audio == "file" else [])
    lacking = [n for n in needed if not any(part in names for part in n.split(" or "))]
    if lacking:
        raise CorpusError(
            f"{shown}: its header ({', '.join(header) or 'empty'}) has no column {lacking[0]}; name the "
            f"columns in the first row, or map yours with layout.columns (e.g. {{path: filename}})"
        )
    rows = []
    for number, fields in enumerate(reader, 2):
        if not any(f.strip() for f in fields):
            continue
        values: dict[str, str] = {n: f.strip() for n, f in zip(names, fields, strict=False)}
        if len(fields) < len(names):
            values |= dict.fromkeys(names[len(fields) :], None)  # marks the row as short
        elif len(fields) > len(names):
            values["\0"] = ""
        rows.append(_parse_row(values, f"{shown}:{number}", settings))
    return rows


def folder_rows(root: Path, settings: LayoutSettings) -> tuple[list[Row], list[str]]:
    """(a row per video of `ROOT/[<split>/]<label>/`, the files that are not a clip's media)."""
    tops = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    by_split = bool(tops) and all(p.name.lower() in SPLIT_NAMES for p in tops)
    rows, ignored, audio_of = [], [], {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue
        rel = path.relative_to(root)
        depth = 3 if by_split else 2
        suffix = path.suffix.lower()
        if len(rel.parts) != depth or suffix not in VIDEO_SUFFIXES + AUDIO_SUFFIXES:
            ignored.append(rel.as_posix())
        elif suffix in AUDIO_SUFFIXES and settings.audio == "file":
            audio_of[rel.with_suffix("").as_posix()] = rel.as_posix()
        elif suffix in VIDEO_SUFFIXES:
            rows.append(
                Row(
                    id=safe_id(path.stem),
                    line=rel.as_posix(),
                    video=rel.as_posix(),
                    label=rel.parts[-2],
                    split=SPLIT_NAMES[rel.parts[0].lower()] if by_split else None,
                )
            )
        else:
            ignored.append(rel.as_posix())
    for row in rows:
        row.audio = audio_of.pop(Path(row.video).with_suffix("").as_posix(), None)
    ignored += sorted(audio_of.values())  # audio files with no video beside them
    return rows, sorted(ignored)


@dataclass
class Labels:
    """The label list of a scan, and which labels it leaves out."""

    names: tuple[str, ...]
    configured: bool  # from layout.classes (else: every label found, sorted)


def labels_of(rows: list[Row], configured: tuple[str, ...] | None) -> Labels:
    if configured is not None:
        return Labels(configured, True)
    return Labels(tuple(sorted({r.label for r in rows if r.label is not None and r.problem is None})), False)


def to_sources(root: Path, rows: list[Row], labels: Labels, settings: LayoutSettings) -> list[ClipSource]:
    """A ClipSource per clip id (rows that name one id twice make one clip, rejected as a duplicate)."""
    index = {name: i for i, name in enumerate(labels.names)}
    by_id: dict[str, list[Row]] = {}
    for row in rows:
        by_id.setdefault(row.id, []).append(row)
    sources = []
    for clip_id, same in sorted(by_id.items()):
        row = same[0]
        files = {"video": _present(root, row.video)}
        expected = {"video": row.video or clip_id}
        if settings.audio == "file":
            files["audio"] = _present(root, row.audio)
            expected["audio"] = row.audio or f"the audio file of {row.video}"
        problems = []
        if row.problem is not None:
            problems.append(Reason.BAD_ANNOTATION.says(f"{row.line}: {row.problem}"))
        if len(same) > 1:
            problems.append(
                Reason.DUPLICATE_ID.says(f"{clip_id} is named by {', '.join(r.line for r in same)}")
            )
        label = index.get(row.label) if row.problem is None else None
        if row.problem is None and label is None:
            problems.append(
                Reason.EXCLUDED_CLASS.says(f"{row.line}: the label {row.label!r} is not in layout.classes")
            )
        sources.append(
            ClipSource(
                id=clip_id,
                files=files,
                expected=expected,
                label=label,
                label_name=row.label if label is not None else None,
                group=row.group or clip_id,
                segment=row.segment,
                extra={"given_split": row.split, "row": row.line},
                problems=problems,
            )
        )
    return sources


def _present(root: Path, relative: str | None) -> list[str]:
    if relative is None:
        return []
    return [relative] if (root / relative).is_file() else []


@dataclass
class Listing:
    """What a copy lists: its rows, the files that are no clip's, where the rows come from (for messages)
    and notes on the copy as a whole."""

    rows: list[Row]
    ignored: list[str]
    where: str
    notes: list[str] = field(default_factory=list)


def generic_rows(root: Path, settings: LayoutSettings, name: str) -> Listing:
    """The rows of a generic copy's annotation file or class folders. Raises CorpusError for a copy that
    names no clip."""
    annotations = annotation_file(root, settings)
    if annotations is not None:
        shown = annotations.name if annotations.parent == root else str(annotations)
        rows, ignored, where = read_annotations(annotations, shown, settings), [], shown
    else:
        (rows, ignored), where = folder_rows(root, settings), "class folders"
    if not rows:
        raise CorpusError(
            f"{root} lists no clips ({where}); corpus {name} reads an annotation file (layout.annotations, "
            f"default annotations.csv or .tsv) or class folders ROOT/<label>/<clip>{{{','.join(VIDEO_SUFFIXES)}}} "
            "(docs/corpora/adding.md)"
        )
    return Listing(rows, ignored, where)


def scan_rows(
    root: Path, listing: Listing, settings: LayoutSettings, classes: tuple[str, ...] | None
) -> tuple[Scan, Labels]:
    """The scan of a copy's rows, and its labels."""
    rows = listing.rows
    labels = labels_of(rows, classes)
    notes = list(listing.notes)
    if labels.configured:
        unused = [c for c in labels.names if c not in {r.label for r in rows}]
        if unused:
            notes.append(
                f"{len(unused)} of the {len(labels.names)} classes have no clip: {', '.join(unused[:5])}"
            )
    return Scan(to_sources(root, rows, labels, settings), listing.ignored, notes), labels


def check_layout(root: Path, scan: Scan, labels: tuple[str, ...], where: str) -> list[LayoutCheck]:
    """Does the copy at `root` (its `scan`, whose rows come from `where`) parse, and do its media exist (and
    are they not Git LFS stubs)?"""
    bad = [c for c in scan.clips if any(p.startswith(Reason.BAD_ANNOTATION) for p in c.problems)]
    checks = [
        LayoutCheck(
            "corpus annotations" if where != "class folders" else "corpus class folders",
            not bad,
            f"{len(scan.clips)} clips of {len(labels)} classes from {where}"
            + (f"; {len(bad)} row(s) do not parse, first: {bad[0].problems[0]}" if bad else ""),
            warn_only=True,
        )
    ]
    found = [root / p for c in scan.clips for paths in c.files.values() for p in paths]
    absent = [c.id for c in scan.clips if not all(c.files.values())]
    detail = f"{len(found)} media files present" + (
        f", {len(absent)} clip(s) lack one (e.g. {absent[0]})" if absent else ""
    )
    stubs, sampled = sampled_lfs_stubs(found) if found else (0, 0)
    if stubs:
        detail += f"; {stubs} of {sampled} sampled are Git LFS pointer stubs: run git lfs pull"
    checks.append(LayoutCheck("corpus media", bool(found) and not stubs, detail))
    checks += [LayoutCheck("corpus copy", False, note, warn_only=True) for note in scan.notes]
    return checks


def videos_by_stem(root: Path) -> dict[str, list[str]]:
    """{file stem: its paths relative to the root} of every video under the root, at any depth (the public
    copies of web corpora unpack into folders of their own)."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".") and path.is_file():
            found.setdefault(path.stem, []).append(path.relative_to(root).as_posix())
    return found


def listed_rows(
    rows: list[Row], files: dict[str, list[str]], names: dict[str, tuple[str, ...]], title: str, where: str
) -> Listing:
    """The rows whose video the copy has (a malformed row too), the videos no row names, and a note counting
    the rows whose video the copy lacks. `names` gives each row id the file stems it may have. Web corpora
    are never complete (their videos leave YouTube): a listed clip the copy lacks is counted, not a
    rejected record."""
    kept, named, lacking = [], set(), []
    for row in rows:
        stems = [stem for stem in names.get(row.id, (row.id,)) if stem in files]
        if not stems and row.problem is None:
            lacking.append(row.id)
            continue
        row.video = files[stems[0]][0] if stems else row.video
        named.update(stems)
        kept.append(row)
    ignored = sorted(p for stem, paths in files.items() if stem not in named for p in paths)
    notes = []
    if lacking:
        notes.append(
            f"{len(lacking)} of the {len(rows)} clips {where} lists are not in this copy of {title} (e.g. "
            f"{', '.join(lacking[:3])}): they take no part"
        )
    return Listing(kept, ignored, where, notes)
