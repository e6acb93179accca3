"""CREMA-D's layout: file naming, id parsing, the known-bad list, scanning a corpus root, and the layout
check of `mlbpipe doctor`.

A corpus root holds `AudioWAV/<id>.wav` (16 kHz mono 16-bit) and `VideoFlash/<id>.flv`, where id =
`ActorID_Sentence_Emotion_Level` (e.g. `1001_DFA_ANG_XX`). Facts and files come from `manifests/cremad/`
(checked in; see its README).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.corpora.base import ClipSource, CorpusError, LayoutCheck, Scan, sampled_lfs_stubs, synth_hint
from pipeline.manifest import Reason

NAME = "cremad"
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")  # label index = position (docs/CONTRACTS.md)
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
ACTORS = range(1001, 1092)
WAV_DIR, FLV_DIR = "AudioWAV", "VideoFlash"
EXPECTED_WAV = {"sample_rate": 16000, "channels": 1, "sample_width": 2}
REAL_CLIPS = 7442  # clips of the real corpus (clips.tsv)
# Where a real copy comes from today: GitHub's Git LFS budget for the upstream repository is spent (so
# `git lfs pull` there fails), and its ZIP and release archives hold LFS stubs for the media; the
# maintainers point to this mirror (github.com/CheyneyComputerScience/CREMA-D/issues/15).
SOURCE = (
    "the maintainers' mirror https://gitlab.com/cs-cooper-lab/crema-d-mirror (clone it with Git LFS "
    "installed; the GitHub repository's LFS quota is used up, and its ZIP and release hold stubs)"
)
# Files only `mlbpipe synth cremad` writes into a corpus root: a root holding one is a stand-in.
SYNTH_MARKER = "SYNTHETIC.txt"
SYNTH_MARKERS = (SYNTH_MARKER, "synth_defects.json")  # the second: stand-ins written before the first

MANIFESTS_DIR = Path(__file__).resolve().parents[3] / "manifests" / "cremad"

_ID_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


@dataclass(frozen=True)
class ClipName:
    id: str
    actor: int
    sentence: str
    emotion: str
    level: str
    fixes: tuple[str, ...] = ()


def parse_clip_name(stem: str) -> ClipName | None:
    """Parse `1001_DFA_ANG_XX`; accept the old `_X` level misnaming (returned normalised, with a fix
    noted). None when the name does not parse."""
    m = _ID_RE.match(stem)
    if not m:
        return None
    actor, sentence, emotion, level = int(m[1]), m[2], m[3], m[4]
    fixes: tuple[str, ...] = ()
    if level == "X":
        level, fixes = "XX", ("wav-name-_X",)
    if actor not in ACTORS or sentence not in SENTENCES or emotion not in EMOTIONS or level not in LEVELS:
        return None
    return ClipName(f"{actor}_{sentence}_{emotion}_{level}", actor, sentence, emotion, level, fixes)


def load_clip_ids(manifests_dir: Path = MANIFESTS_DIR) -> set[str]:
    """The 7442 clip ids of the real corpus (clips.tsv)."""
    with open(manifests_dir / "clips.tsv", newline="") as f:
        return {row["clip_id"] for row in csv.DictReader(f, delimiter="\t")}


def stand_in(root: Path) -> str | None:
    """The marker file that makes `root` a synthetic stand-in, as `<file>, written by mlbpipe synth`."""
    found = [name for name in SYNTH_MARKERS if (Path(root) / name).is_file()]
    return f"{found[0]}, written by mlbpipe synth" if found else None


def load_known_bad(manifests_dir: Path = MANIFESTS_DIR) -> dict[str, str]:
    """{clip id: problem} from known_bad.tsv."""
    with open(manifests_dir / "known_bad.tsv", newline="") as f:
        return {row["clip_id"]: row["problem"] for row in csv.DictReader(f, delimiter="\t")}


def scan_corpus(root: str | Path) -> Scan:
    """List the WAV and FLV files under `root` (recursively, so duplicates in sub-folders are found)
    and group them by clip id. Raises CorpusError for a wrong root or an empty corpus."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(
            f"corpus root {root} does not exist or is not a folder; pass --root PATH to a CREMA-D copy "
            f"(with {WAV_DIR}/ and {FLV_DIR}/; get one from {SOURCE}), or {synth_hint(NAME)}"
        )
    if not (root / WAV_DIR).is_dir() and not (root / FLV_DIR).is_dir():
        raise CorpusError(
            f"{root} is not a CREMA-D root: it has neither {WAV_DIR}/ nor {FLV_DIR}/; pass --root to the "
            f"folder that contains them, or {synth_hint(NAME)}"
        )
    names: dict[str, ClipName | None] = {}
    files: dict[str, dict[str, list[str]]] = {}
    ignored: list[str] = []
    for folder, suffix, role in ((WAV_DIR, ".wav", "audio"), (FLV_DIR, ".flv", "video")):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() != suffix:
                ignored.append(rel)
                continue
            name = parse_clip_name(path.stem)
            clip_id = name.id if name else path.stem
            files.setdefault(clip_id, {"audio": [], "video": []})[role].append(rel)
            known = names.setdefault(clip_id, name)
            if name and name.fixes and known and not known.fixes:
                names[clip_id] = name  # keep the note that a misnamed file was normalised
    if not files:
        raise CorpusError(
            f"corpus root {root} holds no .wav or .flv files under {WAV_DIR}/ or {FLV_DIR}/; if this is a Git "
            f"clone, run git lfs pull there (or get a copy from {SOURCE}), or {synth_hint(NAME)}"
        )
    return Scan([_source(clip_id, names[clip_id], files[clip_id]) for clip_id in sorted(files)], ignored)


def _source(clip_id: str, name: ClipName | None, files: dict[str, list[str]]) -> ClipSource:
    problems = []
    if name is None:
        problems.append(
            Reason.BAD_NAME.says(
                f"{', '.join(files['audio'] + files['video'])} is not named ActorID_Sentence_Emotion_Level "
                "(e.g. 1001_DFA_ANG_XX)"
            )
        )
    return ClipSource(
        id=clip_id,
        files=files,
        expected={"audio": f"{WAV_DIR}/{clip_id}.wav", "video": f"{FLV_DIR}/{clip_id}.flv"},
        label=EMOTIONS.index(name.emotion) if name else None,
        label_name=name.emotion if name else None,
        group=str(name.actor) if name else None,
        extra={
            "actor": name.actor if name else None,
            "sentence": name.sentence if name else None,
            "level": name.level if name else None,
        },
        fixes=name.fixes if name else (),
        problems=problems,
    )


def check_layout(root: Path) -> list[LayoutCheck]:
    """Does `root` look like a CREMA-D copy (AudioWAV/*.wav, VideoFlash/*.flv, media not LFS stubs)?"""
    if not root.is_dir():
        return [LayoutCheck("corpus root", False, f"{root} is not a folder")]
    checks = []
    for folder, ext in ((WAV_DIR, ".wav"), (FLV_DIR, ".flv")):
        found = sorted((root / folder).glob(f"*{ext}")) if (root / folder).is_dir() else []
        if not found:
            checks.append(
                LayoutCheck(
                    f"corpus {folder}", False, f"no {root / folder}/*{ext}: is {root} a CREMA-D copy?"
                )
            )
            continue
        stubs, sampled = sampled_lfs_stubs(found)
        detail = f"{len(found)} files (real CREMA-D: {REAL_CLIPS})"
        if stubs:
            detail += (
                f"; {stubs} of {sampled} sampled are Git LFS pointer stubs: run git lfs pull there, or get "
                f"a copy from {SOURCE}"
            )
        # some stubs: those clips are rejected and the rest prepare (a warning); all stubs: nothing will
        checks.append(LayoutCheck(f"corpus {folder}", stubs == 0, detail, warn_only=stubs < sampled))
    demographics = root / "VideoDemographics.csv"
    found = demographics.is_file()
    checks.append(
        LayoutCheck(
            "corpus VideoDemographics.csv", found, f"{demographics} {'found' if found else 'missing'}"
        )
    )
    return checks
