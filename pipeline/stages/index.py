"""Stage `index`: scan a CREMA-D root, probe and validate every clip, assign splits, write the manifest.

Output: `OUT/manifest.jsonl` (docs/CONTRACTS.md), one record per clip, rejected clips included with a
reason; the summary (kept / rejected by reason / per split) is printed. A small stamp,
`OUT/work/index.json`, lets a rerun skip the probing when the corpus files, the config and the manifest
are all unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from pipeline.corpora import cremad
from pipeline.manifest import (
    atomic_write_bytes,
    format_summary,
    read_manifest,
    remove_stale_temps,
    summarize,
    write_manifest,
)
from pipeline.splits import PROTOCOLS, assign_splits, check_speaker_disjoint, speaker_random_split
from pipeline.stages import exit_on, worker_pool


@dataclass(frozen=True)
class IndexConfig:
    protocol: str = "vavl"  # vavl | speaker-random
    partition: int = 1  # VAVL partition 1-5 (vavl only)
    seed: int = 0  # speaker-random only
    max_duration_mismatch_s: float = 1.0
    silence_peak: float = 1e-4

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"index.protocol={self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        if self.protocol == "vavl" and self.partition not in cremad.VAVL_PARTITIONS:
            raise ValueError(f"index.partition={self.partition!r}: VAVL has partitions 1-5")
        if self.max_duration_mismatch_s <= 0:
            raise ValueError(f"index.max_duration_mismatch_s={self.max_duration_mismatch_s!r}: must be > 0")

    @property
    def protocol_name(self) -> str:
        return f"vavl-{self.partition}" if self.protocol == "vavl" else f"speaker-random-{self.seed}"


def _validate(root: str, known_bad: dict, config: cremad.ValidationConfig, clip: cremad.ClipFiles) -> dict:
    return cremad.validate_clip(root, clip, known_bad, config)


def _fingerprint(root: Path, scan: cremad.Scan, config: IndexConfig, manifests_dir: Path) -> str:
    files = []
    for clip in scan.clips:
        for rel in clip.wavs + clip.flvs:
            try:
                st = os.stat(root / rel)
                files.append([rel, st.st_size, st.st_mtime_ns, st.st_mode])
            except OSError:
                files.append([rel, None, None, None])
    listing = sorted((p.name, p.read_bytes().hex()) for p in sorted(manifests_dir.iterdir()) if p.is_file())
    blob = json.dumps([str(root.resolve()), files, asdict(config), listing], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _manifest_digest(path: Path) -> str:
    """Digest of what index decides per clip (id, status, reason, split). Later stages may mark
    `usable.cached` in the manifest (faces); that must not make index probe everything again."""
    decided = [(r["id"], r["status"], r.get("reason"), r.get("split")) for r in read_manifest(path)]
    return hashlib.sha256(json.dumps(decided).encode()).hexdigest()


def run_index(
    root: str | Path,
    out: str | Path,
    config: IndexConfig,
    *,
    workers: int = 1,
    progress: bool = True,
    manifests_dir: Path = cremad.MANIFESTS_DIR,
) -> tuple[list[dict], dict]:
    """Index `root` into `OUT/manifest.jsonl`; returns (records, summary). Raises CorpusError for a
    wrong root or an empty corpus."""
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    scan = cremad.scan_corpus(root)
    manifest_path = out / "manifest.jsonl"
    stamp_path = out / "work" / "index.json"
    fingerprint = _fingerprint(root, scan, config, manifests_dir)
    remove_stale_temps(out)  # half-written files of a killed run
    remove_stale_temps(out / "work")
    if manifest_path.is_file() and stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("fingerprint") == fingerprint and stamp.get("manifest_digest") == _manifest_digest(
            manifest_path
        ):
            records = read_manifest(manifest_path)
            return records, summarize(records)

    known_bad = cremad.load_known_bad(manifests_dir)
    validation = cremad.ValidationConfig(config.max_duration_mismatch_s, config.silence_peak)
    validate = partial(_validate, str(root), known_bad, validation)
    bar = partial(
        tqdm, total=len(scan.clips), desc="index", unit="clip", disable=not progress, dynamic_ncols=True
    )
    if workers > 1:
        with worker_pool(workers) as pool:
            records = list(bar(pool.map(validate, scan.clips, chunksize=16)))
    else:
        records = [validate(clip) for clip in bar(scan.clips)]

    if config.protocol == "vavl":
        actor_split, clips = cremad.vavl_protocol(config.partition, manifests_dir)
    else:
        # every parsed actor takes part, kept or rejected, so a rejection never reshuffles the splits
        actor_split = speaker_random_split(
            {r["actor"] for r in records if r["actor"] is not None}, config.seed
        )
        clips = None
    assign_splits(records, actor_split, config.protocol_name, clips)
    check_speaker_disjoint(records)

    write_manifest(records, manifest_path)
    summary = summarize(records)
    summary["ignored_files"] = scan.ignored
    stamp = {
        "fingerprint": fingerprint,
        "manifest_digest": _manifest_digest(manifest_path),
        "config": asdict(config),
    }
    atomic_write_bytes(stamp_path, (json.dumps(stamp, sort_keys=True, indent=1) + "\n").encode())
    return records, summary


def print_summary(summary: dict) -> None:
    typer.echo(format_summary(summary))
    if summary.get("ignored_files"):
        files = summary["ignored_files"]
        typer.echo(f"  ignored {len(files)} file(s) that are not .wav/.flv: {', '.join(files[:5])}")
    missing = [s for s in ("train", "validation", "test") if s not in summary["kept_by_split"]]
    if missing:
        typer.echo(f"  warning: no kept clip in split(s) {', '.join(missing)}", err=True)


def cli(
    root: Annotated[Path, typer.Option("--root", help="Corpus root (holds AudioWAV/ and VideoFlash/).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: writes OUT/manifest.jsonl.")],
    protocol: str = typer.Option("vavl", help="Split protocol: vavl | speaker-random."),
    partition: int = typer.Option(1, help="VAVL partition 1-5."),
    seed: int = typer.Option(0, help="Seed of the speaker-random protocol."),
    max_duration_mismatch: float = typer.Option(
        1.0, help="Reject when FLV and WAV durations differ by more (s)."
    ),
    silence_peak: float = typer.Option(1e-4, help="Reject a WAV whose peak |sample| is below this."),
    workers: int = typer.Option(1, help="Processes probing clips in parallel."),
) -> None:
    """Index and validate a CREMA-D corpus into OUT/manifest.jsonl and print what was kept and rejected."""
    with exit_on(cremad.CorpusError, ValueError):
        config = IndexConfig(protocol, partition, seed, max_duration_mismatch, silence_peak)
        _, summary = run_index(root, out, config, workers=workers)
    print_summary(summary)


if __name__ == "__main__":
    typer.run(cli)
