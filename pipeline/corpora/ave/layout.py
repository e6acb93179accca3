"""AVE's layout: the annotation rows, scanning a corpus root into clips, and the layout check of
`mlbpipe doctor`.

A corpus root holds `AVE/<YouTubeID>.mp4` (H.264 + AAC, 10 s) and four lists of rows
`Category&VideoID&Quality&StartTime&EndTime`: `Annotations.txt` (every video) and `trainSet.txt`,
`valSet.txt`, `testSet.txt` (the official split). Times are whole seconds; the event is [start, end).

Rules (docs/corpora/ave.md):
- a header row is recognised by its field names, wherever it is; any other line is a row;
- fields are split on `&` only (category names hold commas and parentheses) and stripped; line endings
  `\\n`, `\\r\\n` or `\\r`; blank lines are skipped;
- a malformed row that still names a usable video id rejects that video (`bad-annotation: FILE:LINE: ...`);
  a line without a usable id, and a video no row names, go to `Scan.ignored`;
- one clip per video: rows that repeat each other are one clip; rows for one video that disagree on the
  category or the segment, or that put it in two split lists, reject it as `duplicate-id` (the first row
  still gives its label and segment).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.corpora.base import ClipSource, CorpusError, LayoutCheck, Scan, sampled_lfs_stubs, synth_hint
from pipeline.manifest import Reason, Segment

NAME = "ave"
VIDEO_DIR = "AVE"
ANNOTATIONS = "Annotations.txt"
SPLIT_LISTS = {"trainSet.txt": "train", "valSet.txt": "validation", "testSet.txt": "test"}
LIST_FILES = (ANNOTATIONS, *SPLIT_LISTS)  # read in this order: "the first row" means the first in it
VIDEO_SECONDS = 10  # every AVE video lasts 10 s: an event time past this is impossible
REAL_ROWS = {ANNOTATIONS: 4143, "trainSet.txt": 3339, "valSet.txt": 402, "testSet.txt": 402}
REAL_VIDEOS = 4097  # distinct ids in the official lists (manifests/ave/README.md)
HEADER = ("Category", "VideoID", "Quality", "StartTime", "EndTime")

MANIFESTS_DIR = Path(__file__).resolve().parents[3] / "manifests" / "ave"

_ID_RE = re.compile(r"[A-Za-z0-9_-]+")  # YouTube ids: letters, digits, - and _ (never a dot or a slash)
_SECONDS_RE = re.compile(r"[0-9]+")  # ASCII digits only (\d takes any script's)
_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_HEADER_KEYS = tuple(name.lower() for name in HEADER)
REPEATED_HEADER = "a repeated header row"


def load_categories(manifests_dir: Path = MANIFESTS_DIR) -> tuple[str, ...]:
    """The 28 categories in label-index order (manifests/ave/categories.txt)."""
    names = tuple(line.strip() for line in (manifests_dir / "categories.txt").read_text().splitlines())
    return tuple(name for name in names if name)


CATEGORIES = load_categories()
_CATEGORY_INDEX = {name: index for index, name in enumerate(CATEGORIES)}


@dataclass(frozen=True)
class Row:
    """One well-formed annotation row."""

    file: str
    line: int
    category: str
    video_id: str
    quality: str
    start: int
    end: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def event(self) -> tuple[str, int, int]:
        """What two rows of one video must agree on."""
        return (self.category, self.start, self.end)

    def describe(self) -> str:
        return f"{self.where} ({self.category}, [{self.start}, {self.end}) s)"


@dataclass(frozen=True)
class BadLine:
    """A line that is not a well-formed row; `video_id` is None when no usable id can be read from it."""

    file: str
    line: int
    problem: str
    text: str
    video_id: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class ListFile:
    """What one annotation file holds."""

    name: str
    header: bool = False
    rows: list[Row] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        """Lines that are meant as rows (well-formed or not), header and blank lines excluded."""
        return len(self.rows) + sum(1 for b in self.bad if b.problem != REPEATED_HEADER)


def is_video_id(text: str) -> bool:
    """A usable video id: a YouTube id, so also a safe file name under AVE/."""
    return bool(_ID_RE.fullmatch(text))


def _is_header(fields: list[str]) -> bool:
    return tuple(f.replace(" ", "").replace("_", "").lower() for f in fields) == _HEADER_KEYS


def _seconds(text: str, what: str) -> tuple[int | None, str | None]:
    """(whole seconds, None) or (None, the problem)."""
    if not _SECONDS_RE.fullmatch(text):
        return None, f"{what} {text!r} is not a whole number of seconds"
    value = int(text)
    if value > VIDEO_SECONDS:
        return None, f"{what} {value} s is past the end of a {VIDEO_SECONDS} s AVE video"
    return value, None


def parse_row(text: str, file: str, line: int) -> Row | BadLine:
    """One line (without its line break) -> a Row, or a BadLine saying what is wrong with it."""
    fields = [f.strip() for f in text.split("&")]
    shown = text.strip()
    if len(fields) != len(HEADER):
        video_id = fields[1] if len(fields) > 1 and is_video_id(fields[1]) else None
        problem = f"{len(fields)} field(s), expected 5 ({'&'.join(HEADER)})"
        return BadLine(file, line, problem, shown, video_id)
    category, video_id, quality, start_text, end_text = fields
    if not is_video_id(video_id):
        problem = f"video id {video_id!r} is not a YouTube id (letters, digits, - and _ only)"
        return BadLine(file, line, problem, shown)
    problems = []
    if category not in _CATEGORY_INDEX:
        problems.append(f"unknown category {category!r} (not one of AVE's 28: manifests/ave/categories.txt)")
    start, start_problem = _seconds(start_text, "start time")
    end, end_problem = _seconds(end_text, "end time")
    problems += [p for p in (start_problem, end_problem) if p]
    if start is not None and end is not None and end <= start:
        problems.append(f"the event [{start}, {end}) s is empty (the end time must be after the start)")
    if problems:
        return BadLine(file, line, "; ".join(problems), shown, video_id)
    return Row(file, line, category, video_id, quality, start, end)


def read_list(path: Path) -> ListFile:
    """Parse one annotation file; never raises for its content (bad lines are returned as BadLine), only
    CorpusError for a file that cannot be read.
    A header row is recognised by its field names: skipped on the first non-blank line, reported
    elsewhere. Undecodable bytes are replaced, so such a row fails on its fields, not the whole file."""
    listing = ListFile(path.name)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"{path} cannot be read ({err.strerror or err}); check its permissions") from err
    text = data.decode("utf-8-sig", errors="replace")  # -sig: a BOM is not part of the first category
    first = True
    for number, line in enumerate(_LINE_BREAK.split(text), 1):
        if not line.strip():
            continue
        if _is_header([f.strip() for f in line.split("&")]):
            if first:
                listing.header = True
            else:
                listing.bad.append(BadLine(path.name, number, REPEATED_HEADER, line.strip()))
            first = False
            continue
        first = False
        parsed = parse_row(line, path.name, number)
        (listing.rows if isinstance(parsed, Row) else listing.bad).append(parsed)
    return listing


def read_lists(root: Path) -> dict[str, ListFile]:
    """The annotation files present under `root`, in LIST_FILES order."""
    return {name: read_list(root / name) for name in LIST_FILES if (root / name).is_file()}


def _videos(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """({stem: [AVE/... paths]}, [other files under AVE/]), recursively so a second copy of a video in a
    sub-folder is found (the validator rejects it as a duplicate)."""
    videos: dict[str, list[str]] = {}
    others: list[str] = []
    for path in sorted((root / VIDEO_DIR).rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() == ".mp4":
            videos.setdefault(path.stem, []).append(rel)
        else:
            others.append(rel)
    return videos, others


def _fix_hint(root: Path) -> str:
    return f"or {synth_hint(NAME)}"


def scan_corpus(root: str | Path) -> Scan:
    """Every video the annotation files name, as one ClipSource each (see the module docstring for the
    rules). Raises CorpusError, naming the path and the fix, for a root that is not an AVE copy."""
    root = Path(root)
    layout = f"{VIDEO_DIR}/ and {', '.join(LIST_FILES)}"
    if not root.is_dir():
        raise CorpusError(
            f"corpus root {root} does not exist or is not a folder; pass --root PATH to an AVE copy (with "
            f"{layout}), {_fix_hint(root)}"
        )
    lists = read_lists(root)
    has_videos = (root / VIDEO_DIR).is_dir()
    if not lists and not has_videos:
        raise CorpusError(
            f"{root} is not an AVE root: it has neither {VIDEO_DIR}/ nor any of {', '.join(LIST_FILES)}; "
            f"pass --root to the folder that contains them, {_fix_hint(root)}"
        )
    if not lists:
        raise CorpusError(
            f"{root} has {VIDEO_DIR}/ but none of {', '.join(LIST_FILES)}: copy the annotation files of the "
            "AVE release (github.com/YapengTian/AVE-ECCV18) beside it"
        )
    if not has_videos:
        raise CorpusError(
            f"{root} has the annotation files but no {VIDEO_DIR}/ folder of videos: unpack AVE.zip there "
            f"(docs/corpora/ave.md), {_fix_hint(root)}"
        )
    videos, ignored = _videos(root)
    if not videos:
        raise CorpusError(
            f"{root / VIDEO_DIR} holds no .mp4 files: unpack AVE.zip there (docs/corpora/ave.md), "
            f"{_fix_hint(root)}"
        )
    notes = [f"{name}: missing, so no video is in its split" for name in SPLIT_LISTS if name not in lists]

    rows: dict[str, list[Row]] = {}
    bad: dict[str, list[BadLine]] = {}
    for listing in lists.values():
        for row in listing.rows:
            rows.setdefault(row.video_id, []).append(row)
        for line in listing.bad:
            if line.video_id is None:
                notes.append(f"{line.where}: not a clip row: {line.problem}: {_shorten(line.text)}")
            else:
                bad.setdefault(line.video_id, []).append(line)
    if not rows and not bad:
        raise CorpusError(
            f"the annotation files under {root} ({', '.join(lists)}) hold no rows "
            f"({'&'.join(HEADER)}); {_fix_hint(root)}"
        )
    named = set(rows) | set(bad)
    ignored += [path for stem in sorted(set(videos) - named) for path in videos[stem]]
    clips = [_source(i, rows.get(i, []), bad.get(i, []), videos.get(i, [])) for i in sorted(named)]
    return Scan(clips, ignored, notes)


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _lists_naming(entries: Iterable[Row | BadLine]) -> list[str]:
    """The split lists among the files of `entries`, in LIST_FILES order."""
    files = {entry.file for entry in entries}
    return [name for name in SPLIT_LISTS if name in files]


def _source(video_id: str, rows: list[Row], bad: list[BadLine], files: list[str]) -> ClipSource:
    """One video's clip: label, segment and quality from its first well-formed row; its problems."""
    problems = [Reason.BAD_ANNOTATION.says(f"{line.where}: {line.problem}") for line in bad]
    distinct: dict[tuple[str, int, int], Row] = {}  # event -> the first row that gives it
    for row in rows:
        distinct.setdefault(row.event, row)
    if len(distinct) > 1:
        disagreeing = " and ".join(row.describe() for row in distinct.values())
        problems.append(
            Reason.DUPLICATE_ID.says(
                f"{video_id} has rows that disagree: {disagreeing}; "
                "one clip cannot have two labels or segments"
            )
        )
    entries = sorted([*rows, *bad], key=lambda e: (LIST_FILES.index(e.file), e.line))
    lists = _lists_naming(entries)
    if len(lists) > 1:
        first_in = [next(e for e in entries if e.file == name).where for name in lists]
        problems.append(
            Reason.DUPLICATE_ID.says(
                f"{video_id} is in {len(lists)} split lists ({', '.join(first_in)}); a video can be in one "
                "split only"
            )
        )
    first = rows[0] if rows else None
    listed_at = entries[0].where
    return ClipSource(
        id=video_id,
        files={"video": files},
        expected={"video": f"{VIDEO_DIR}/{video_id}.mp4 (listed at {listed_at})"},
        label=_CATEGORY_INDEX[first.category] if first else None,
        label_name=first.category if first else None,
        group=video_id,  # one clip per video: the video is the unit no split may straddle
        segment=Segment(float(first.start), float(first.end - first.start)) if first else None,
        extra={"quality": first.quality if first else None, "lists": lists},
        problems=problems,
    )


def check_layout(root: Path) -> list[LayoutCheck]:
    """Does `root` look like an AVE copy: the four annotation files (rows counted), AVE/*.mp4 (counted,
    sampled for Git LFS pointer stubs)?"""
    if not root.is_dir():
        return [LayoutCheck("corpus root", False, f"{root} is not a folder")]
    checks = []
    named: set[str] = set()
    for name in LIST_FILES:
        path = root / name
        if not path.is_file():
            checks.append(LayoutCheck(f"corpus {name}", False, f"{path} missing: is {root} an AVE copy?"))
            continue
        try:
            listing = read_list(path)
        except CorpusError as err:
            checks.append(LayoutCheck(f"corpus {name}", False, str(err)))
            continue
        named |= {row.video_id for row in listing.rows}
        detail = f"{listing.row_count} rows (real AVE: {REAL_ROWS[name]})"
        detail += ", with a header row" if listing.header else ""
        if listing.bad:
            detail += (
                f"; {len(listing.bad)} malformed (first: {listing.bad[0].where}: {listing.bad[0].problem})"
            )
        checks.append(LayoutCheck(f"corpus {name}", True, detail))
    folder = root / VIDEO_DIR
    found = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    if not found:
        checks.append(
            LayoutCheck(f"corpus {VIDEO_DIR}/", False, f"no {folder}/*.mp4: is {root} an AVE copy?")
        )
        return checks
    stubs, sampled = sampled_lfs_stubs(found)
    detail = f"{len(found)} .mp4 files (real AVE: {REAL_VIDEOS} distinct videos in its lists)"
    absent = len(named - {f.stem for f in found})
    if absent:
        detail += f"; {absent} video(s) the lists name are absent (rejected as missing-file)"
    if stubs:
        detail += f"; {stubs} of {sampled} sampled are Git LFS pointer stubs: run git lfs pull"
    checks.append(LayoutCheck(f"corpus {VIDEO_DIR}/", stubs == 0, detail))
    return checks
