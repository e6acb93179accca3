"""Stage `shards_raw`: the ResNet input path's WebDataset shards, one set of tars per split.

Reads the manifest (and its corpus.json) and the `frames` and `spectrograms` intermediates; writes
`OUT/shards/raw/`: `<split>-NNNNNN.tar` with, per clip (`__key__` = clip id), `spec.npy` float32 [F, T],
`frames.npy` uint8 [count, H, W, 3] and `json` (pipeline.store.shards.sample_json); plus `sizes.json` and
`meta.json` (docs/CONTRACTS.md). The folder is replaced as a whole, and the bytes depend only on the
inputs, so a rerun gives identical tars.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mlb.common.atomic import atomic_folder
from pipeline.compute.spectrogram import spectrogram_shape
from pipeline.manifest import SPLITS, ClipRecord, read_corpus_description, read_manifest
from pipeline.store.intermediates import read_stage_config
from pipeline.store.shards import sample_json, shard_meta, write_shards, write_sizes_and_meta


@dataclass(frozen=True)
class ShardsConfig:
    """Parameters of the shards_raw stage (params.yaml: `shards_raw`)."""

    maxcount: int = 1000  # samples per tar

    def __post_init__(self):
        if self.maxcount < 1:
            raise ValueError(f"shards_raw.maxcount={self.maxcount!r}: must be at least 1")


def _samples(
    records: list[ClipRecord], frames_file, spec_file, skipped: dict[str, str]
) -> Iterator[tuple[str, dict]]:
    """(key, fields) in id order; a clip missing from an intermediate is skipped and noted."""
    errors = {
        **dict(spec_file["errors"].attrs),
        **dict(frames_file["errors"].attrs),
    }  # read once, not per clip
    frames, specs = frames_file.get("frames", {}), spec_file.get("spec", {})
    for r in records:
        if r.id in errors:
            skipped[r.id] = str(errors[r.id])
            continue
        if r.id not in frames or r.id not in specs:
            skipped[r.id] = "missing from an intermediate: rerun the frames and spectrograms stages"
            continue
        yield (
            r.id,
            {
                "spec.npy": specs[r.id][()],  # float32 [F, T]
                "frames.npy": frames[r.id][()],  # uint8 [count, H, W, 3]
                "json": sample_json(r),
            },
        )


def run_shards_raw(
    manifest_path: str | Path,
    frames_path: str | Path,
    spec_path: str | Path,
    out_dir: str | Path,
    config: ShardsConfig,
) -> tuple[dict[str, int], dict[str, str]]:
    """Write the raw shards; returns ({tar name: count}, {skipped clip id: why})."""
    import h5py

    frames_config = read_stage_config(frames_path)
    spec_config = read_stage_config(spec_path)
    corpus = read_corpus_description(manifest_path)
    records = sorted((r for r in read_manifest(manifest_path) if r.usable_for("raw")), key=lambda r: r.id)
    skipped: dict[str, str] = {}
    with (
        h5py.File(frames_path, "r") as frames_file,
        h5py.File(spec_path, "r") as spec_file,
        atomic_folder(out_dir) as tmp,
    ):
        sizes: dict[str, int] = {}
        for split in SPLITS:
            split_records = [r for r in records if r.split == split]
            sizes |= write_shards(
                _samples(split_records, frames_file, spec_file, skipped), tmp, split, maxcount=config.maxcount
            )
        size = frames_config["size"]
        fields = {
            "spec.npy": {"dtype": "float32", "shape": list(spectrogram_shape(spec_config))},
            "frames.npy": {"dtype": "uint8", "shape": [frames_config["count"], size, size, 3]},
        }
        configs = {"frames": frames_config, "spectrograms": spec_config, "shards": asdict(config)}
        write_sizes_and_meta(tmp, sizes, shard_meta(corpus, "raw", fields, configs, skipped))
    return sizes, skipped
