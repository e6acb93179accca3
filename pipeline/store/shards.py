"""Deterministic WebDataset shards (docs/CONTRACTS.md, "Shards").

    with atomic_folder(out / "shards" / "raw") as tmp:  # mlb.common.atomic
        sizes = {}
        for split in ("train", "validation", "test"):
            sizes |= write_shards(samples_of(split), tmp, split, maxcount=1000)
        write_sizes_and_meta(tmp, sizes, meta)

A sample is `(key, {field: value})`: key = clip id (no dots, no slashes); field = `"<name>.npy"` for
a numpy array or `"json"` for a dict. Arrays are written with `np.save` (never object dtype), dicts as
JSON with sorted keys. Tar members come in the order given, with mtime 0, uid/gid 0, mode 0o644 and
empty user/group names, so the same samples always give byte-identical tars.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_write_bytes, temp_name
from pipeline.manifest import ClipRecord

SHARD_PATTERN = "{split}-{index:06d}.tar"


def encode_field(key: str, field: str, value) -> bytes:
    """Bytes of one tar member; refuses anything but `.npy` arrays and the `json` dict."""
    if field == "json":
        if not isinstance(value, dict):
            raise TypeError(f"{key}: field 'json' must be a dict, got {type(value).__name__}")
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    if field.endswith(".npy") and field.count(".") == 1:
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(
                f"{key}.{field}: object arrays are not allowed in shards (they would need pickle)"
            )
        # little-endian, C order: the same values always give the same bytes
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        # exactly what np.save writes, in one copy of the data (np.save into a BytesIO makes three)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        return b"".join([header.getvalue(), memoryview(array.reshape(-1).view(np.uint8))])
    raise ValueError(
        f"{key}: field {field!r} is neither 'json' nor '<name>.npy' (the only kinds shards may hold)"
    )


def _check_key(key: str) -> None:
    if not key or "." in key or "/" in key or "\\" in key:
        raise ValueError(f"shard key {key!r} must be non-empty and contain no dots or slashes")


COPY_BUFFER = (
    1 << 22
)  # tarfile copies a member in pieces of this size (its default, 16 KiB, means ~30 per frame array)


class _BytesReader:
    """A file over `data` whose read() returns slices of it without copying (io.BytesIO copies each)."""

    def __init__(self, data: bytes):
        self._view, self._position = memoryview(data), 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size < 0 else min(self._position + size, len(self._view))
        chunk, self._position = self._view[self._position : end], end
        return chunk


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, _BytesReader(data))


def write_shards(
    samples: Iterable[tuple[str, dict]],
    out_dir: str | Path,
    split: str,
    *,
    maxcount: int = 1000,
    maxsize: int | None = None,
) -> dict[str, int]:
    """Write `samples` (in the order given) into `<split>-000000.tar`, `<split>-000001.tar`, ... in
    `out_dir`, starting a new tar after `maxcount` samples or `maxsize` bytes. Each tar is written to a
    temp file and renamed. Returns {tar name: sample count}; nothing is written for no samples."""
    if maxcount < 1:
        raise ValueError(f"maxcount={maxcount!r}: must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    tar: tarfile.TarFile | None = None
    name, tmp, count, nbytes = "", Path(), 0, 0
    try:
        for key, fields in samples:
            _check_key(key)
            if key in seen:
                raise ValueError(f"shard key {key!r} appears twice in split {split!r}")
            seen.add(key)
            members = [
                (f"{key}.{field}", encode_field(key, field, fields[field])) for field in sorted(fields)
            ]
            size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)  # tar header + padded data
            if tar is not None and (count >= maxcount or (maxsize is not None and nbytes + size > maxsize)):
                tar.close()
                os.replace(tmp, out_dir / name)
                sizes[name], tar = count, None
            if tar is None:
                name = SHARD_PATTERN.format(split=split, index=len(sizes))
                tmp = temp_name(out_dir / name)
                # one tar spans many samples: no context manager
                tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT, copybufsize=COPY_BUFFER)  # noqa: SIM115
                count, nbytes = 0, 0
            for member_name, data in members:
                _add_member(tar, member_name, data)
            count += 1
            nbytes += size
        if tar is not None:
            tar.close()
            os.replace(tmp, out_dir / name)
            sizes[name], tar = count, None
    except BaseException:
        if tar is not None:  # an unfinished tar never gets its final name
            tar.close()
            tmp.unlink(missing_ok=True)
        raise
    return sizes


def write_sizes_and_meta(out_dir: str | Path, sizes: dict[str, int], meta: dict) -> None:
    """`sizes.json` ({tar name: sample count}) and `meta.json` (the producing config), both atomic."""
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "sizes.json", (json.dumps(sizes, sort_keys=True, indent=1) + "\n").encode())
    atomic_write_bytes(out_dir / "meta.json", (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())


def read_shard(path: str | Path) -> list[tuple[str, dict]]:
    """Every sample of one tar as (key, {field: array or dict}), refusing pickles and unknown fields.
    Meant for tests and inspection; training reads shards through mlb.data."""
    samples: dict[str, dict] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                raise ValueError(f"{path}: member {member.name!r} is not a regular file")
            key, _, field = member.name.partition(".")
            data = tar.extractfile(member).read()
            if field == "json":
                value = json.loads(data)
            elif field.endswith(".npy") and field.count(".") == 1:
                value = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                raise ValueError(f"{path}: member {member.name!r} has a field type shards may not hold")
            samples.setdefault(key, {})[field] = value
    return list(samples.items())


def sample_json(record: ClipRecord, **more) -> dict:
    """The `json` member of a clip's sample: who it is, its label, group and split, the corpus's `extra`
    facts, and `more` (e.g. the cached path's face counts)."""
    return {
        "id": record.id,
        "corpus": record.corpus,
        "label": record.label,
        "label_name": record.label_name,
        "group": record.group,
        "split": record.split,
        "extra": record.extra,
        **more,
    }


def shard_meta(
    corpus: dict, input_path: str, fields: dict, config: dict, skipped: dict[str, str], **more
) -> dict:
    """`meta.json` of a shard folder: the input path, the corpus (from the manifest's corpus.json: name,
    classes, label names, the authors' per-method settings), each field's dtype and shape, the configs that
    made the shards (with the split protocol), the skipped clips, `stand_in` for a synthetic stand-in, and
    `more` (the cached path's `extractors`)."""
    return {
        "input_path": input_path,
        "corpus": corpus["corpus"],
        "num_classes": corpus["num_classes"],
        "label_names": corpus["label_names"],
        "fields": fields,
        "config": {"protocol": corpus["protocol"], **config},
        "method_defaults": corpus.get("method_defaults", {}),
        "skipped": skipped,
        **({"stand_in": corpus["stand_in"]} if corpus.get("stand_in") else {}),  # why it is not the real one
        **more,
    }
