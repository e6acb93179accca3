"""Tiny contract-compliant shard folders for tests (docs/CONTRACTS.md, "Shards").

Written directly with `tarfile` + `np.save`, independent of `pipeline.store.shards`, so that loader and trainer
tests do not depend on the prepare stages. The data is random plus a learnable signal: every modality
carries a class-dependent offset (video stronger than audio by default, so that balancing has something
to do).

    folder = write_shard_folder(tmp_path / "shards" / "cached", "cached")
    folder = write_shard_folder(tmp_path / "shards" / "raw", "raw", counts={"train": 32})
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np

LABEL_NAMES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
DEFAULT_COUNTS = {"train": 24, "validation": 12, "test": 12}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def make_sample(
    input_path: str,
    label: int,
    rng: np.random.Generator,
    *,
    spec_shape=(16, 20),
    frame_hw=(16, 16),
    audio_dim=16,
    video_dim=1408,
    signal=(0.5, 1.0),
) -> dict[str, np.ndarray]:
    """Arrays of one clip: noise plus `signal[modality] * pattern[label]` (the pattern is fixed per class)."""
    audio_signal, video_signal = signal
    if input_path == "raw":
        pattern = np.random.default_rng(100 + label)
        spec = rng.normal(size=spec_shape) + audio_signal * 3 * pattern.normal(size=spec_shape)
        base = pattern.integers(0, 256, size=(1, *frame_hw, 3))
        noise = rng.integers(-40, 40, size=(3, *frame_hw, 3))
        frames = np.clip(128 + (base - 128) * video_signal + noise, 0, 255)
        return {"spec.npy": spec.astype(np.float32), "frames.npy": frames.astype(np.uint8)}
    t_a, t_v = int(rng.integers(4, 12)), int(rng.integers(2, 7))
    pattern = np.random.default_rng(100 + label)
    w2v2 = rng.normal(size=(t_a, audio_dim)) + audio_signal * 3 * pattern.normal(size=audio_dim)
    effb2 = rng.normal(size=(t_v, video_dim)) + video_signal * 3 * pattern.normal(size=video_dim)
    return {"w2v2.npy": w2v2.astype(np.float16), "effb2.npy": effb2.astype(np.float16)}


def make_meta(
    input_path: str,
    *,
    spec_shape=(16, 20),
    frame_hw=(16, 16),
    audio_dim=16,
    video_dim=1408,
    protocol: str | None = None,
) -> dict:
    if input_path == "raw":
        fields = {
            "spec.npy": {"dtype": "float32", "shape": list(spec_shape)},
            "frames.npy": {"dtype": "uint8", "shape": [3, *frame_hw, 3]},
        }
    else:
        fields = {
            "w2v2.npy": {"dtype": "float16", "shape": ["T_a", audio_dim]},
            "effb2.npy": {"dtype": "float16", "shape": ["T_v", video_dim]},
        }
    meta = {
        "input_path": input_path,
        "corpus": "cremad",
        "num_classes": len(LABEL_NAMES),
        "label_names": LABEL_NAMES,
        "fields": fields,
        "config": {"factory": "tests.shard_factory"},
    }
    if protocol is not None:  # the split protocol's name, as the index stage writes it (e.g. vavl-2)
        meta["config"]["protocol"] = protocol
    if input_path == "cached":
        meta["extractors"] = {
            "audio": {"model": "random-w2v2", "layer": 12, "random_init": True},
            "video": {"model": "random-effb2", "input_size": 260, "random_init": True},
        }
    return meta


def write_shard_folder(
    folder: Path,
    input_path: str,
    *,
    counts: dict[str, int] | None = None,
    shard_size: int = 8,
    seed: int = 0,
    protocol: str | None = None,
    **shape_kw,
) -> Path:
    """Write `<split>-NNNNNN.tar`, `sizes.json`, `meta.json` (and `stats.json` for cached) into `folder`;
    `protocol` goes into meta.json's `config.protocol` (none by default)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    train_arrays: dict[str, list[np.ndarray]] = {}
    for split, count in counts.items():
        clips = []
        for i in range(count):
            label = i % len(LABEL_NAMES)
            clip_id = f"{1001 + i % 91}_S{split[:2].upper()}{i:04d}_{LABEL_NAMES[label]}_XX"
            clips.append((clip_id, label, make_sample(input_path, label, rng, **shape_kw)))
        clips.sort(key=lambda c: c[0])
        for shard_index in range(0, max(count, 1), shard_size):
            name = f"{split}-{shard_index // shard_size:06d}.tar"
            chunk = clips[shard_index : shard_index + shard_size]
            with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for clip_id, label, arrays in chunk:
                    for field_name, array in arrays.items():
                        _add(tar, f"{clip_id}.{field_name}", npy_bytes(array))
                        if split == "train":
                            train_arrays.setdefault(field_name, []).append(array)
                    info = {
                        "id": clip_id,
                        "corpus": "cremad",
                        "label": label,
                        "label_name": LABEL_NAMES[label],
                        "group": clip_id[:4],
                        "split": split,
                        "extra": {"actor": int(clip_id[:4])},
                    }
                    _add(tar, f"{clip_id}.json", json.dumps(info).encode())
            sizes[name] = len(chunk)
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True))
    meta = make_meta(input_path, protocol=protocol, **_shape_only(shape_kw))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    if input_path == "cached":
        stats = {}
        for field_name, arrays in train_arrays.items():
            stacked = np.concatenate([a.astype(np.float64) for a in arrays])  # [sum T, D]
            stats[field_name.removesuffix(".npy")] = {
                "mean": stacked.mean(0).tolist(),
                "std": stacked.std(0).tolist(),
            }
        (folder / "stats.json").write_text(json.dumps(stats))
    return folder


def _shape_only(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k in ("spec_shape", "frame_hw", "audio_dim", "video_dim")}


class _CreateMarker:
    """Unpickling this calls open(path, "w"), which creates the marker file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_CreateMarker(marker))


def object_npy_payload(marker: Path) -> bytes:
    """A `.npy` whose object array holds the payload: only `allow_pickle=True` would run it."""
    array = np.empty(1, dtype=object)
    array[0] = _CreateMarker(marker)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def add_member(tar_path: Path, name: str, data: bytes) -> None:
    """Add one member to an existing tar, right after the members of the same key (so that it is read
    as one more field of that clip, e.g. a hostile field next to a real clip's fields)."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = name.split(".", 1)[0]
    same_key = [i for i, (member_name, _) in enumerate(members) if member_name.split(".", 1)[0] == key]
    members.insert(same_key[-1] + 1 if same_key else len(members), (name, data))
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member_name, member_data in members:
            _add(tar, member_name, member_data)


def first_key(tar_path: Path) -> str:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()[0].split(".", 1)[0]


def replace_member(tar_path: Path, name: str, data: bytes) -> None:
    """Rewrite a tar with one member's bytes replaced (order kept)."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member_name, member_data in members:
            _add(tar, member_name, data if member_name == name else member_data)
