"""CREMA-D: file naming, id parsing, the known-bad list, scanning and validating a corpus root, and the
VAVL speaker-independent protocol.

Layout of a corpus root: `AudioWAV/<id>.wav` (16 kHz mono 16-bit) and `VideoFlash/<id>.flv`, where
id = `ActorID_Sentence_Emotion_Level` (e.g. `1001_DFA_ANG_XX`). Facts and files come from
`manifests/cremad/` (checked in; see its README).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.media import MediaError, probe_video, probe_wav, resolve_inside

CORPUS = "cremad"
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")  # label index = position (docs/CONTRACTS.md)
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
ACTORS = range(1001, 1092)
WAV_DIR, FLV_DIR = "AudioWAV", "VideoFlash"
EXPECTED_WAV = {"sample_rate": 16000, "channels": 1, "sample_width": 2}

MANIFESTS_DIR = Path(__file__).resolve().parents[2] / "manifests" / "cremad"

_ID_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


class CorpusError(Exception):
    """The corpus root itself is unusable (wrong folder, no clips). The message names the path and the fix."""


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


def load_known_bad(manifests_dir: Path = MANIFESTS_DIR) -> dict[str, str]:
    """{clip id: problem} from known_bad.tsv."""
    with open(manifests_dir / "known_bad.tsv", newline="") as f:
        return {row["clip_id"]: row["problem"] for row in csv.DictReader(f, delimiter="\t")}


# --- scanning ---------------------------------------------------------------------------------------


@dataclass
class ClipFiles:
    """Every file found for one id (more than one WAV or FLV means a duplicate id)."""

    id: str
    name: ClipName | None  # None: the file name does not parse
    wavs: list[str] = field(default_factory=list)  # paths relative to the root, POSIX
    flvs: list[str] = field(default_factory=list)


@dataclass
class Scan:
    clips: list[ClipFiles]  # sorted by id
    ignored: list[str]  # files in the media folders that are not .wav / .flv


def scan_corpus(root: str | Path) -> Scan:
    """List the WAV and FLV files under `root` (recursively, so duplicates in sub-folders are found)
    and group them by clip id. Raises CorpusError for a wrong root or an empty corpus."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(
            f"corpus root {root} does not exist or is not a folder; pass --root PATH to a CREMA-D copy "
            f"(with {WAV_DIR}/ and {FLV_DIR}/), or create a synthetic one: mlbpipe synth cremad {root}"
        )
    if not (root / WAV_DIR).is_dir() and not (root / FLV_DIR).is_dir():
        raise CorpusError(
            f"{root} is not a CREMA-D root: it has neither {WAV_DIR}/ nor {FLV_DIR}/; pass --root to the "
            f"folder that contains them (or create one: mlbpipe synth cremad {root})"
        )
    by_id: dict[str, ClipFiles] = {}
    ignored: list[str] = []
    for folder, suffix, attr in ((WAV_DIR, ".wav", "wavs"), (FLV_DIR, ".flv", "flvs")):
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
            entry = by_id.setdefault(clip_id, ClipFiles(clip_id, name))
            getattr(entry, attr).append(rel)
            if name and name.fixes and entry.name and not entry.name.fixes:
                entry.name = name  # keep the note that a misnamed file was normalised
    if not by_id:
        raise CorpusError(
            f"corpus root {root} holds no .wav or .flv files under {WAV_DIR}/ or {FLV_DIR}/; if this is "
            f"a Git clone, run git lfs pull there, or create a synthetic corpus: mlbpipe synth cremad {root}"
        )
    return Scan(sorted(by_id.values(), key=lambda c: c.id), ignored)


# --- validation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationConfig:
    max_duration_mismatch_s: float = 1.0  # |FLV - WAV| duration beyond this: duration-mismatch
    silence_peak: float = 1e-4  # WAV peak below this (about -80 dBFS): silent-audio


def validate_clip(
    root: str | Path, clip: ClipFiles, known_bad: dict[str, str], config: ValidationConfig
) -> dict:
    """Probe one clip's WAV and FLV and return its manifest record (without protocol/split).

    The first failing check gives the reason; facts that could be probed are kept either way.
    """
    name = clip.name
    record: dict = {
        "id": clip.id,
        "corpus": CORPUS,
        "actor": name.actor if name else None,
        "sentence": name.sentence if name else None,
        "emotion": name.emotion if name else None,
        "level": name.level if name else None,
        "label": EMOTIONS.index(name.emotion) if name else None,
        "label_name": name.emotion if name else None,
        "wav": clip.wavs[0] if clip.wavs else None,
        "flv": clip.flvs[0] if clip.flvs else None,
        "audio": None,
        "video": None,
        "protocol": None,
        "split": None,
        "status": "ok",
        "reason": None,
        "usable": {"raw": True, "cached": True},
    }
    if name and name.fixes:
        record["fixes"] = list(name.fixes)

    reasons: list[str] = []
    if name is None:
        files = ", ".join(clip.wavs + clip.flvs)
        reasons.append(
            f"bad-name: {files} is not named ActorID_Sentence_Emotion_Level (e.g. 1001_DFA_ANG_XX)"
        )
    if len(clip.wavs) > 1 or len(clip.flvs) > 1:
        reasons.append(f"duplicate-id: {clip.id} is found more than once: {', '.join(clip.wavs + clip.flvs)}")
    if not clip.wavs:
        reasons.append(f"missing-file: {WAV_DIR}/{clip.id}.wav is absent (its FLV exists)")
    if not clip.flvs:
        reasons.append(f"missing-file: {FLV_DIR}/{clip.id}.flv is absent (its WAV exists)")

    wav = flv = None
    if clip.wavs:
        try:
            wav = probe_wav(resolve_inside(root, clip.wavs[0]), clip.wavs[0])
            record["audio"] = wav.as_dict()
        except MediaError as err:
            reasons.append(err.reason)
    if clip.flvs:
        try:
            flv = probe_video(resolve_inside(root, clip.flvs[0]), clip.flvs[0])
            record["video"] = flv.as_dict()
        except MediaError as err:
            reasons.append(err.reason)

    if wav is not None:
        facts = {k: record["audio"][k] for k in EXPECTED_WAV}
        if facts != EXPECTED_WAV:
            reasons.append(
                f"bad-audio-format: {clip.wavs[0]} is {facts['sample_rate']} Hz, {facts['channels']} "
                f"channel(s), {8 * facts['sample_width']}-bit; expected 16000 Hz mono 16-bit"
            )
        if wav.duration <= 0:
            reasons.append(f"zero-duration: {clip.wavs[0]} has no samples")
    if flv is not None:
        if flv.duration <= 0:
            reasons.append(f"zero-duration: {clip.flvs[0]} has no video duration")
        if not flv.has_audio:
            reasons.append(f"no-audio-stream: {clip.flvs[0]} has no audio stream")
    if wav is not None and flv is not None and wav.duration > 0 and flv.duration > 0:
        gap = abs(flv.duration - wav.duration)
        if gap > config.max_duration_mismatch_s:
            reasons.append(
                f"duration-mismatch: {clip.flvs[0]} lasts {flv.duration:.2f} s but {clip.wavs[0]} "
                f"{wav.duration:.2f} s (limit {config.max_duration_mismatch_s} s)"
            )
    if wav is not None and wav.duration > 0 and wav.peak < config.silence_peak:
        reasons.append(f"silent-audio: {clip.wavs[0]} is silent (peak {wav.peak:.2g})")
    if clip.id in known_bad:
        reasons.append(f"known-bad: {known_bad[clip.id]}")

    if reasons:
        record["status"] = "rejected"
        record["reason"] = reasons[0]  # the most specific: checks run from structure to content
        record["usable"] = {"raw": False, "cached": False}
    return record


# --- the VAVL protocol --------------------------------------------------------------------------------

VAVL_PARTITIONS = (1, 2, 3, 4, 5)
_VAVL_SPLIT = {"Train": "train", "Development": "validation", "Test": "test"}


def vavl_protocol(partition: int, manifests_dir: Path = MANIFESTS_DIR) -> tuple[dict[int, str], set[str]]:
    """The VAVL speaker-independent partition `partition` (1-5): ({actor: split}, {clip ids in the
    protocol}). Clips outside the VAVL clip list take no part (split None)."""
    if partition not in VAVL_PARTITIONS:
        raise ValueError(f"partition={partition!r}: VAVL has partitions 1-5")
    actors_by_split = json.loads((manifests_dir / "vavl_actor_partitions.json").read_text())[
        f"partition_{partition}"
    ]
    actor_split = {int(a): split for split in ("train", "validation", "test") for a in actors_by_split[split]}
    clips: set[str] = set()
    with open(manifests_dir / f"vavl_labels_partition_{partition}.csv", newline="") as f:
        for row in csv.DictReader(f):
            clip_id = row["FileName"].removesuffix(".wav")
            if actor_split.get(int(row["SpkrID"])) != _VAVL_SPLIT[row["Split_Set"]]:
                raise ValueError(
                    f"VAVL partition {partition}: {clip_id} is in {row['Split_Set']} but its actor is not"
                )
            clips.add(clip_id)
    return actor_split, clips
