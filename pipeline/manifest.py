"""The clip manifest (`OUT/manifest.jsonl`, docs/CONTRACTS.md): read, write atomically, summarise.

Also home of `atomic_output`, the temp-file-then-rename helper every stage uses for files that a later
step reads, so a killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

TMP_MARK = ".tmp-"  # temp files are named <name>.tmp-<pid>; a later run deletes leftovers


@contextlib.contextmanager
def atomic_output(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success fsync it (unless not `durable`) and rename it
    onto `path`, on error delete it. Readers see either the old file or the complete new one, never a
    partial file. The rename alone survives a killed process; the fsync also survives a power cut, which
    scratch files that a rerun can recompute do not need."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        if durable and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that killed runs left in `folder` (named `<name>.tmp-<pid>`, pid no longer
    running); a live process's temp file is left alone. Returns what was deleted."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            name, mark, pid = path.name.rpartition(TMP_MARK)
            if mark and name and pid.isdigit() and path.is_file() and not _pid_alive(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_manifest(records: Iterable[dict], path: str | Path) -> None:
    """Write JSON Lines sorted by id, atomically. Keys keep the record's order (the contract's)."""
    lines = [json.dumps(r, ensure_ascii=False) for r in sorted(records, key=lambda r: r["id"])]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode() if lines else b"")


def read_manifest(path: str | Path) -> list[dict]:
    """The records of a manifest file, naming the file and line of any bad line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            if not isinstance(record, dict) or "id" not in record or "status" not in record:
                raise ValueError(f"{path}:{number}: a manifest record needs at least 'id' and 'status'")
            records.append(record)
    return records


def reason_code(record: dict) -> str | None:
    """`lfs-pointer` from `lfs-pointer: AudioWAV/x.wav is a Git LFS pointer stub; ...`."""
    reason = record.get("reason")
    return reason.split(":", 1)[0] if reason else None


def summarize(records: list[dict]) -> dict:
    """Counts of kept / rejected (by reason code) / per split, and the rejected ids per reason."""
    kept = [r for r in records if r["status"] == "ok"]
    rejected = [r for r in records if r["status"] != "ok"]
    by_reason: dict[str, list[str]] = {}
    for r in rejected:
        by_reason.setdefault(reason_code(r) or "unknown", []).append(r["id"])
    splits = Counter(r.get("split") or "none" for r in kept)
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
            f"  note: {splits['none']} kept clips are outside the split protocol (e.g. not in the VAVL "
            "clip list) and go to no shard"
        )
    return "\n".join(lines)
