"""UCF101's layout: class lists, file naming, the official split files, scanning a corpus root, and the
layout check of `mlbpipe doctor`.

A corpus root holds `UCF-101/<Class>/v_<Class>_gXX_cYY.avi` (XX the group 01-25: clips cut from one long
video; YY the clip) and, optionally, `ucfTrainTestlist/` (classInd.txt, trainlist0N.txt, testlist0N.txt):
a copy's own split files win over the ones shipped in `manifests/ucf101/ucfTrainTestlist/`.

One spelling trap: the class `HandstandPushups` (classInd.txt, folder) has files `v_HandStandPushups_...`.
So a file's class is its folder's, and the class part of its name only has to match it case-insensitively;
split-list paths are matched to files case-insensitively too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.corpora.base import (
    ClipSource,
    CorpusError,
    LayoutCheck,
    Scan,
    read_text_lines,
    sampled_lfs_stubs,
    synth_hint,
)
from pipeline.manifest import Reason

NAME = "ucf101"
VIDEO_DIR = "UCF-101"
LISTS_DIR = "ucfTrainTestlist"
MANIFESTS_DIR = Path(__file__).resolve().parents[3] / "manifests" / "ucf101"
SHIPPED_LISTS = MANIFESTS_DIR / LISTS_DIR
PARTITIONS = (1, 2, 3)
GROUPS = range(1, 26)
REAL_CLIPS = 13_320  # clips of the real corpus (the official lists of any partition, train + test)
REAL_AUDIO_CLIPS = 6_837  # of them, the clips with an audio track (all in the 51 audio classes)
# class -> the class part of its file names in the real corpus, where the two differ
FILE_SPELLING = {"HandstandPushups": "HandStandPushups"}

_STEM_RE = re.compile(r"^v_([A-Za-z]+)_g(\d{2})_c(\d{2,3})$")
_LIST_PATH_RE = re.compile(r"^([A-Za-z]+)/(v_[A-Za-z]+_g\d{2}_c\d{2,3})\.avi$", re.IGNORECASE)


def _read_class_ind(path: Path) -> tuple[str, ...]:
    """The 101 classes of a well-formed classInd.txt (`index Class`, 1-based, in index order)."""
    rows = [line.split() for line in read_text_lines(path) if line.strip()]
    classes = tuple(name for _, name in rows)
    if [int(index) for index, _ in rows] != list(range(1, len(rows) + 1)):
        raise ValueError(f"{path}: indices are not 1..{len(rows)} in order")
    return classes


def _load_class_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the 101 classes in classInd.txt order, the 51 with audio in the same order) from manifests/."""
    classes = _read_class_ind(SHIPPED_LISTS / "classInd.txt")
    audio = tuple(
        line.strip() for line in read_text_lines(MANIFESTS_DIR / "audio_classes.txt") if line.strip()
    )
    if [c for c in classes if c in audio] != list(audio):  # labels are positions: the order must hold
        raise ValueError(
            f"{MANIFESTS_DIR / 'audio_classes.txt'} is not a sub-list of classInd.txt in its order"
        )
    return classes, audio


ALL_CLASSES, AUDIO_CLASSES = _load_class_lists()  # 101 and 51; label = position in AUDIO_CLASSES
UCF50_CLASSES = tuple(c for c in ALL_CLASSES if c not in AUDIO_CLASSES)  # the 50 without audio
OFFICIAL_INDEX = {c: i for i, c in enumerate(ALL_CLASSES, 1)}  # classInd.txt's 1-based index
_BY_LOWER = {c.lower(): c for c in ALL_CLASSES}


def file_stem(class_name: str, group: int, clip: int) -> str:
    """The stem of a clip's file in the real corpus: `v_HandStandPushups_g08_c01`."""
    return f"v_{FILE_SPELLING.get(class_name, class_name)}_g{group:02d}_c{clip:02d}"


def clip_path(class_name: str, group: int, clip: int) -> str:
    """`UCF-101/<Class>/<stem>.avi`, relative to the corpus root."""
    return f"{VIDEO_DIR}/{class_name}/{file_stem(class_name, group, clip)}.avi"


def known_class(name: str) -> str | None:
    """The classInd.txt spelling of a class name matched case-insensitively (None: not a UCF101 class)."""
    return _BY_LOWER.get(name.lower())


@dataclass(frozen=True)
class ClipName:
    stem: str  # as on disk
    class_name: str  # classInd.txt spelling
    group: int
    clip: int


def parse_clip_name(folder: str, stem: str) -> ClipName | str:
    """Parse `v_<Class>_gXX_cYY` found in folder `<Class>`: a ClipName, or why it does not parse (the class
    part must match the folder case-insensitively; the group must be 01-25, the clip 01 or more)."""
    m = _STEM_RE.match(stem)
    if not m:
        return "is not named v_<Class>_gXX_cYY.avi (e.g. v_ApplyEyeMakeup_g08_c01.avi)"
    class_name = known_class(folder)
    if class_name is None:
        return f"is in folder {folder}/, which is not one of the 101 UCF101 classes of classInd.txt"
    if m[1].lower() != class_name.lower():
        return f"names the class {m[1]} but lies in the folder of {class_name}"
    group, clip = int(m[2]), int(m[3])
    if group not in GROUPS or clip < 1:
        return f"has group {m[2]} and clip {m[3]}: groups are 01-25, clips 01 and up"
    return ClipName(stem, class_name, group, clip)


# --- the split files -------------------------------------------------------------------------------------


@dataclass
class SplitLists:
    """What the split files say. Clips are keyed by their lower-case file stem (ids are unique that way).

    membership: partition -> {clip key: "train" | "test"} from trainlist0N / testlist0N.
    bad_lines: clip key -> the `bad-annotation` reason of a malformed line that names that clip.
    problems: "file:line: what" for every malformed line (and every missing file), in file order.
    """

    folder: Path
    shown: str  # the folder as messages name it
    membership: dict[int, dict[str, str]] = field(default_factory=dict)
    bad_lines: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def named(self) -> set[str]:
        """Every clip key any list names."""
        return {key for members in self.membership.values() for key in members}

    def has_partition(self, partition: int) -> bool:
        return partition in self.membership


def lists_folder(root: Path) -> Path:
    """The split files a root uses: its own `ucfTrainTestlist/` when it has one, else the shipped copy."""
    own = root / LISTS_DIR
    return own if own.is_dir() else SHIPPED_LISTS


def read_split_lists(folder: Path, shown: str | None = None) -> SplitLists:
    """Parse classInd.txt, trainlist0{1,2,3}.txt (`Class/file.avi index`) and testlist0{1,2,3}.txt
    (`Class/file.avi`; an index column as some mirrors keep is accepted when right). Blank lines are
    skipped; a malformed line never raises: it is recorded in `problems` (file and line) and, when it
    still names a clip, in `bad_lines`. A missing file is a problem, and its partition is left out."""
    lists = SplitLists(folder, shown or str(folder))

    def where(name: str, number: int | None = None) -> str:
        return f"{lists.shown}/{name}" + (f":{number}" if number is not None else "")

    index_of = _parse_class_ind(folder / "classInd.txt", where("classInd.txt"), lists)
    for partition in PARTITIONS:
        members: dict[str, str] = {}
        complete = True
        for split, name in (("train", f"trainlist0{partition}.txt"), ("test", f"testlist0{partition}.txt")):
            path = folder / name
            if not path.is_file():
                lists.problems.append(f"{where(name)} is missing: partition {partition} cannot be used")
                complete = False
                continue
            for number, line in enumerate(read_text_lines(path), 1):
                if line.strip():
                    _parse_list_line(line, split, where(name, number), index_of, members, lists)
        if complete:
            lists.membership[partition] = members
    return lists


def _parse_class_ind(path: Path, shown: str, lists: SplitLists) -> dict[int, str]:
    """{1-based index: class} of a classInd.txt; its malformed lines become problems."""
    index_of: dict[int, str] = {}
    if not path.is_file():
        lists.problems.append(f"{shown} is missing: the index column of the train lists cannot be checked")
        return index_of
    for number, line in enumerate(read_text_lines(path), 1):
        fields = line.split()
        if not fields:
            continue
        name = known_class(fields[-1]) if len(fields) == 2 and fields[0].isdigit() else None
        if name is None:
            lists.problems.append(
                f"{shown}:{number}: not `index Class` with a UCF101 class: {line.strip()!r}"
            )
            continue
        index_of[int(fields[0])] = name
    return index_of


def _parse_list_line(
    line: str, split: str, where: str, index_of: dict[int, str], members: dict[str, str], lists: SplitLists
) -> None:
    fields = line.split()
    m = _LIST_PATH_RE.match(fields[0])
    stem = m[2] if m else None
    problem = None
    if m is None or known_class(m[1]) is None or not m[2][2:].lower().startswith(m[1].lower() + "_"):
        problem = "not a path Class/v_Class_gXX_cYY.avi of a UCF101 class"
    elif len(fields) > 2 or (split == "train" and len(fields) != 2):
        problem = "expected `Class/file.avi index`" if split == "train" else "expected `Class/file.avi`"
    elif len(fields) == 2:
        index = int(fields[1]) if fields[1].isdigit() else None
        if index is None or (index_of and index_of.get(index, "").lower() != m[1].lower()):
            problem = f"the class index {fields[1]!r} is not that of {known_class(m[1])} in classInd.txt"
    if problem is None:
        key = stem.lower()
        if members.get(key, split) != split:
            problem = f"{stem} is in both the train and the test list of this partition"
        else:
            members[key] = split
            return
    lists.problems.append(f"{where}: {problem}: {line.strip()!r}")
    if stem is not None:
        lists.bad_lines.setdefault(stem.lower(), Reason.BAD_ANNOTATION.says(f"{where}: {problem}"))
        members.setdefault(stem.lower(), split)  # the line still says which list the clip is in


# --- scanning ----------------------------------------------------------------------------------------------


@dataclass
class UCF101Scan(Scan):
    """A scan plus what the split files say: `lists`, and `missing`: the clip paths they name that the
    root lacks (counted and reported, not records)."""

    lists: SplitLists | None = None
    missing: list[str] = field(default_factory=list)


def _root_error(root: Path) -> str | None:
    if not root.is_dir():
        return f"corpus root {root} does not exist or is not a folder"
    if not (root / VIDEO_DIR).is_dir():
        return f"{root} is not a UCF101 root: it has no {VIDEO_DIR}/ folder"
    return None


def scan_corpus(root: str | Path) -> UCF101Scan:
    """Every `.avi` under `UCF-101/<Class>/`, one clip per file stem (case-insensitive), with its label,
    group and list membership; other files are ignored. Raises CorpusError for a wrong or empty root. The scan's
    notes name malformed list lines and count the listed clips the root lacks."""
    root = Path(root)
    fix = f"pass --root PATH to the folder that holds {VIDEO_DIR}/, or {synth_hint(NAME)}"
    error = _root_error(root)
    if error:
        raise CorpusError(f"{error}; {fix}")
    folder = lists_folder(root)
    shown = LISTS_DIR if folder != SHIPPED_LISTS else f"manifests/{NAME}/{LISTS_DIR}"
    lists = read_split_lists(folder, shown)
    files: dict[str, list[str]] = {}
    names: dict[str, ClipName | str] = {}
    ignored: list[str] = []
    for path in sorted((root / VIDEO_DIR).rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() != ".avi" or len(path.relative_to(root / VIDEO_DIR).parts) != 2:
            ignored.append(rel)
            continue
        key = path.stem.lower()
        files.setdefault(key, []).append(rel)
        names.setdefault(key, parse_clip_name(path.parent.name, path.stem))
    if not files:
        raise CorpusError(
            f"corpus root {root} holds no .avi files under {VIDEO_DIR}/<Class>/; if this is a Git clone, run "
            f"git lfs pull there; or {fix}"
        )
    clips = [_source(files[key], names[key], lists) for key in files]
    clips.sort(key=lambda c: c.id)
    missing = sorted(lists.named() - set(files))
    return UCF101Scan(clips, ignored, _notes(root, lists, missing, len(files)), lists=lists, missing=missing)


def _notes(root: Path, lists: SplitLists, missing: list[str], on_disk: int) -> list[str]:
    """The scan's notes: malformed list lines, and listed clips the root lacks (counted, a few named)."""
    notes = [f"{NAME} split files: {problem}" for problem in lists.problems]
    if missing:
        notes.append(
            f"{len(missing)} clips that {lists.shown} names are not under {root / VIDEO_DIR} ({on_disk} .avi "
            f"found; e.g. {', '.join(missing[:3])}): they take no part"
        )
    return notes


def _source(paths: list[str], name: ClipName | str, lists: SplitLists) -> ClipSource:
    first = Path(paths[0])
    if isinstance(name, str):
        return ClipSource(
            id=first.stem,
            files={"video": paths},
            expected={"video": paths[0]},
            problems=[Reason.BAD_NAME.says(f"{paths[0]} {name}")],
        )
    key = name.stem.lower()
    problems = [lists.bad_lines[key]] if key in lists.bad_lines else []
    audio = name.class_name in AUDIO_CLASSES
    return ClipSource(
        id=name.stem,
        files={"video": paths},
        expected={"video": clip_path(name.class_name, name.group, name.clip)},
        label=AUDIO_CLASSES.index(name.class_name) if audio else None,
        label_name=name.class_name if audio else None,
        group=f"{name.class_name}_g{name.group:02d}",
        extra={
            "class": name.class_name,
            "group": name.group,
            "clip": name.clip,
            "official_index": OFFICIAL_INDEX[name.class_name],
            # where each partition's split files put the clip (None: not listed), for the protocol
            "lists": {str(p): members.get(key) for p, members in sorted(lists.membership.items())},
        },
        problems=problems,
    )


# --- mlbpipe doctor ----------------------------------------------------------------------------------------


def check_layout(root: Path) -> list[LayoutCheck]:
    """Does `root` look like a UCF101 copy: `UCF-101/` with the class folders and their .avi files (not
    Git LFS stubs), and split files (the copy's or the shipped ones) that parse and name clips present?"""
    error = _root_error(root)
    if error:
        return [LayoutCheck("corpus root", False, error)]
    base = root / VIDEO_DIR
    folders = sorted(p.name for p in base.iterdir() if p.is_dir())
    known = [f for f in folders if known_class(f)]
    audio = [f for f in known if known_class(f) in AUDIO_CLASSES]
    checks = [
        LayoutCheck(
            f"corpus {VIDEO_DIR}/ classes",
            bool(known),
            f"{len(folders)} class folders, {len(known)} of them UCF101 classes ({len(audio)} of the 51 with "
            f"audio; real UCF101: 101)",
        )
    ]
    found = sorted(base.glob("*/*.avi"))
    if not found:
        checks.append(LayoutCheck(f"corpus {VIDEO_DIR}/*/*.avi", False, f"no .avi under {base}/<Class>/"))
    else:
        stubs, sampled = sampled_lfs_stubs(found)
        detail = f"{len(found)} files (real UCF101: {REAL_CLIPS})"
        if stubs:
            detail += f"; {stubs} of {sampled} sampled are Git LFS pointer stubs: run git lfs pull"
        checks.append(LayoutCheck(f"corpus {VIDEO_DIR}/*/*.avi", stubs == 0, detail))
    folder = lists_folder(root)
    own = folder != SHIPPED_LISTS
    lists = read_split_lists(folder, LISTS_DIR if own else f"manifests/{NAME}/{LISTS_DIR}")
    on_disk = {f.stem.lower() for f in found}
    named = lists.named()
    detail = (
        f"{'the copy' if own else 'shipped'} {lists.shown}: partitions "
        f"{', '.join(map(str, sorted(lists.membership))) or 'none'}; {len(named & on_disk)} of the "
        f"{len(named)} clips they name are present"
    )
    if lists.problems:
        detail += f"; {len(lists.problems)} problem(s), first: {lists.problems[0]}"
    checks.append(LayoutCheck("corpus split files", bool(lists.membership) and not lists.problems, detail))
    return checks
