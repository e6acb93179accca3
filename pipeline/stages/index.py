"""Stage `index`: scan a corpus root, probe and validate every clip, assign splits, write the manifest.

Reads the corpus root through its plug-in (pipeline.corpora.base.Corpus). Writes
- `OUT/manifest.jsonl` (docs/CONTRACTS.md): one `ClipRecord` per clip, rejected clips included with a
  reason;
- `OUT/corpus.json`: what later stages need to know of the corpus without importing it (name, label
  names, the split protocol, the authors' per-method settings);
- `OUT/work/index.json`: a stamp that lets a rerun skip the probing when the corpus files, the config, the
  corpus's checked-in lists and the manifest are all unchanged.
Returns the records and a summary (kept / rejected by reason / per split, and how much of the whole corpus
the copy holds). `check_kept` then refuses a copy that gives nothing to prepare.

`run_resplit` makes a fold of a prepared folder: the same records under another partition or seed of the
protocol, without probing the media again (a fold shares every per-clip intermediate with the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from mlb.common.atomic import atomic_write_json, remove_stale_temps
from mlb.common.stopping import Stopped, current_request
from pipeline.corpora.base import ClipSource, Corpus, CorpusError, Scan, ValidationConfig
from pipeline.engine import Executor
from pipeline.engine.executors import as_executor
from pipeline.manifest import (
    SPLITS,
    ClipRecord,
    Reason,
    corpus_description_path,
    read_manifest,
    reason_code,
    summarize,
    write_manifest,
)
from pipeline.splits import check_group_disjoint

VALIDATE_CHUNK = 16  # clips per task: probing one takes ~2 ms, so a task per clip would be mostly overhead


class NothingToPrepare(CorpusError):
    """The copy gives nothing to prepare: no clip is kept, or a split of the protocol has no kept clip."""


@dataclass(frozen=True)
class IndexConfig:
    """Parameters of the index stage (params.yaml: `index`, and `corpora.<name>.index`).

    protocol: the corpus's split protocol (None: its default; CREMA-D: vavl | speaker-random).
    partition: the numbered partition of the protocol (CREMA-D VAVL: 1-5).
    seed: the seed of a random protocol (CREMA-D speaker-random).
    max_duration_mismatch_s, silence_peak: see pipeline.corpora.base.ValidationConfig.
    """

    protocol: str | None = None
    partition: int = 1
    seed: int = 0
    max_duration_mismatch_s: float = ValidationConfig.max_duration_mismatch_s
    silence_peak: float = ValidationConfig.silence_peak

    def __post_init__(self):
        if self.max_duration_mismatch_s <= 0:
            raise ValueError(f"index.max_duration_mismatch_s={self.max_duration_mismatch_s!r}: must be > 0")
        if not 0 <= self.silence_peak < 1:
            raise ValueError(f"index.silence_peak={self.silence_peak!r}: must be in [0, 1)")

    def protocol_of(self, corpus: Corpus) -> str:
        """The protocol this config selects for `corpus`, checked (ValueError naming the key and value)."""
        protocol = self.protocol or corpus.default_protocol
        corpus.check_protocol(protocol, self.partition)
        return protocol

    @property
    def validation(self) -> ValidationConfig:
        return ValidationConfig(self.max_duration_mismatch_s, self.silence_peak)


def _validate_chunk(
    corpus: Corpus, root: str, known_bad: dict, config: ValidationConfig, clips: list[ClipSource]
):
    return [corpus.validate(Path(root), clip, config, known_bad) for clip in clips]


def _fingerprint(root: Path, scan: Scan, corpus: Corpus, config: IndexConfig) -> str:
    files = []
    for clip in scan.clips:
        for rel in (path for paths in clip.files.values() for path in paths):
            try:
                st = os.stat(root / rel)
                files.append([rel, st.st_size, st.st_mtime_ns, st.st_mode])
            except OSError:
                files.append([rel, None, None, None])
    lists = corpus.manifests_dir
    listing = (
        sorted((str(p.relative_to(lists)), p.read_bytes().hex()) for p in lists.rglob("*") if p.is_file())
        if lists.is_dir()
        else []
    )
    # what the scan read from the corpus's annotation and list files (labels, segments, groups, problems):
    # editing those files must index again, not only editing the media
    scanned = [[c.id, c.label, c.label_name, c.group, None if c.segment is None else c.segment.as_tuple(),
                c.expected, c.extra, list(c.fixes), c.problems] for c in scan.clips]  # fmt: skip
    blob = json.dumps(
        [corpus.name, str(root.resolve()), files, asdict(config), listing, scanned, scan.ignored, scan.notes],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _manifest_digest(path: Path) -> str:
    """Digest of what index decides per clip (id, status, reason, split). A later stage may mark
    `usable.cached` in the manifest (faces); that must not make index probe everything again."""
    decided = [(r.id, r.status, r.reason, r.split) for r in read_manifest(path)]
    return hashlib.sha256(json.dumps(decided).encode()).hexdigest()


def corpus_description(corpus: Corpus, protocol: str, root: Path) -> dict:
    """`OUT/corpus.json` (pipeline.manifest.read_corpus_description): the corpus facts the shard stages copy
    into meta.json, the input paths it has (with the reason for a missing one), and the root it was indexed
    from (the later stages refuse another)."""
    return {
        "root": str(root),
        "corpus": corpus.name,
        "label_names": list(corpus.label_names),
        "num_classes": corpus.num_classes,
        "protocol": protocol,
        "method_defaults": corpus.method_defaults,
        "input_paths": list(corpus.input_paths),  # so that `train` can say why a path is missing
        "input_paths_note": corpus.input_paths_note,
        **(
            {"stand_in": stand_in} if (stand_in := corpus.stand_in(root)) else {}
        ),  # no published value for it
    }


def run_index(
    corpus: Corpus,
    root: str | Path,
    out: str | Path,
    config: IndexConfig,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> tuple[list[ClipRecord], dict]:
    """Index `root` into `OUT/manifest.jsonl` and `OUT/corpus.json`; returns (records, summary). Raises
    CorpusError for a wrong root or an empty corpus, ValueError for a protocol the corpus lacks."""
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    protocol = config.protocol_of(corpus)
    scan = corpus.scan(root)
    manifest_path = out / "manifest.jsonl"
    stamp_path = out / "work" / "index.json"
    fingerprint = _fingerprint(root, scan, corpus, config)
    remove_stale_temps(out)  # half-written files of a killed run
    remove_stale_temps(out / "work")
    if manifest_path.is_file() and stamp_path.is_file() and corpus_description_path(manifest_path).is_file():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("fingerprint") == fingerprint and stamp.get("manifest_digest") == _manifest_digest(
            manifest_path
        ):
            records = read_manifest(manifest_path)
            return records, _summary(records, scan, corpus, root, protocol, config)

    validate = partial(_validate_chunk, corpus, str(root), corpus.known_bad(), config.validation)
    chunks = [scan.clips[i : i + VALIDATE_CHUNK] for i in range(0, len(scan.clips), VALIDATE_CHUNK)]
    validated: list[list[ClipRecord] | None] = [None] * len(chunks)
    stop = current_request()
    bar = tqdm(total=len(scan.clips), desc="index", unit="clip", disable=not progress, dynamic_ncols=True)
    with bar:
        for position, chunk_records in as_executor(executor).map_unordered(validate, chunks):
            validated[position] = chunk_records
            bar.update(len(chunk_records))
            if stop.requested and bar.n < len(scan.clips):
                raise Stopped(f"{stop.reason} during the index stage: rerun the same command to index again")
    if not root.is_dir():  # every clip would read as missing: that is a vanished root, not a corpus
        raise CorpusError(f"corpus root {root} vanished while it was being indexed; put it back and rerun")
    records = [record for chunk in validated for record in chunk]

    name = corpus.assign_splits(records, protocol, config.partition, config.seed)
    for record in records:
        record.protocol = name
    check_group_disjoint(records)

    write_manifest(records, manifest_path)
    atomic_write_json(
        corpus_description_path(manifest_path), corpus_description(corpus, name, root), sort_keys=True
    )
    stamp = {
        "fingerprint": fingerprint,
        "manifest_digest": _manifest_digest(manifest_path),
        "config": asdict(config),
    }
    atomic_write_json(stamp_path, stamp, sort_keys=True)
    return records, _summary(records, scan, corpus, root, protocol, config)


def _summary(
    records: list[ClipRecord], scan: Scan, corpus: Corpus, root: Path, protocol: str, config: IndexConfig
) -> dict:
    coverage = corpus.coverage(root, {clip.id for clip in scan.clips}, protocol, config.partition)
    return summarize(records) | {"ignored_files": scan.ignored, "notes": scan.notes, "coverage": coverage}


def _counted(records: list[ClipRecord]) -> str:
    """`lfs-pointer 7440, decode-error 2`: the rejection codes of `records`, most frequent first."""
    counts = Counter(reason_code(r.reason) or "unknown" for r in records if not r.ok)
    return ", ".join(
        f"{code} {n}" for code, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )


def check_kept(records: list[ClipRecord], summary: dict, corpus: Corpus, root: Path, manifest: Path) -> None:
    """Raise NothingToPrepare when no clip is kept, or when a split of the protocol has no kept clip,
    naming the rejections counted and the fix. The manifest is written first, so every clip's reason can
    be read there. Bad media alone never stop a run: only a copy that leaves nothing to prepare does."""
    where = f"{manifest} lists every clip with its reason."
    if not summary["kept"]:
        raise NothingToPrepare(
            f"no clip of {root} can be used: all {len(records)} clips were rejected ({_counted(records)}). "
            f"{_fix(records, corpus, root)}{where}"
        )
    empty = [split for split in SPLITS if not summary["kept_by_split"].get(split)]
    if empty:
        protocol = records[0].protocol
        details, lost = [], []
        for split in empty:
            members = [r for r in records if r.split == split]
            lost += members
            details.append(
                f"{split}: its {len(members)} clip(s) were all rejected ({_counted(members)})"
                if members
                else f"{split}: no clip of this copy belongs to it"
            )
        coverage = summary.get("coverage")
        size = f" This copy has {coverage.describe()}." if coverage is not None else ""
        raise NothingToPrepare(
            f"the {protocol} protocol has no kept clip in {' or '.join(empty)} ({'; '.join(details)}).{size} "
            f"{_fix(lost, corpus, root)}Or choose a protocol that this copy fills (index.protocol, --protocol: "
            f"{', '.join(corpus.protocols)}). {where}"
        )


def _fix(records: list[ClipRecord], corpus: Corpus, root: Path) -> str:
    """The fix for the usual causes of losing `records`: a Git clone without its LFS media, or a copy that
    lacks clips."""
    stubs = sum(reason_code(r.reason) == Reason.LFS_POINTER for r in records)
    if stubs:
        which = f"All {stubs}" if stubs == len(records) else f"{stubs} of the {len(records)}"
        elsewhere = f", or get a copy from {corpus.source}" if corpus.source else ""
        return (
            f"{which} clips are Git LFS pointer stubs, not media: run `git lfs pull` in {root}{elsewhere}. "
        )
    return f"Get the whole corpus from {corpus.source}. " if corpus.source else ""


def run_resplit(corpus: Corpus, prepared: str | Path, out: str | Path, config: IndexConfig):
    """The records of `prepared`'s manifest with the splits of `config`'s partition / seed, into
    `OUT/manifest.jsonl` and `OUT/corpus.json` (the root the prepared folder was indexed from); returns
    (records, summary) like run_index. The media are not read: validation decided once per clip, and
    which split a clip falls into does not change whether it is usable."""
    prepared, out = Path(prepared), Path(out)
    prepared_manifest = prepared / "manifest.jsonl"
    if not prepared_manifest.is_file():
        raise CorpusError(
            f"{prepared_manifest} does not exist: prepare {corpus.name} into {prepared} first (at least its "
            "index stage), then make its folds"
        )
    described = json.loads(corpus_description_path(prepared_manifest).read_text())
    if described.get("corpus") != corpus.name:
        raise CorpusError(f"{prepared} holds {described.get('corpus')!r}, not {corpus.name}: fix --from")
    protocol = config.protocol_of(corpus)
    records = read_manifest(prepared_manifest)
    for record in records:  # everything index decided stays, but the split
        record.split = None
    name = corpus.assign_splits(records, protocol, config.partition, config.seed)
    for record in records:
        record.protocol = name
    check_group_disjoint(records)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(records, out / "manifest.jsonl")
    kept = {k: described[k] for k in ("stand_in",) if k in described}  # what the root said when indexed
    description = (
        corpus_description(corpus, name, Path(described["root"])) | kept | {"prepared_from": str(prepared)}
    )
    atomic_write_json(corpus_description_path(out / "manifest.jsonl"), description, sort_keys=True)
    return records, summarize(records) | {"ignored_files": [], "notes": []}
