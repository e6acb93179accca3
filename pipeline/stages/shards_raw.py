"""Stage `shards_raw`: the ResNet input path's WebDataset shards, one set of tars per split.

Reads the manifest and the `frames` and `spectrograms` intermediates; writes `OUT/shards/raw/`:
`<split>-NNNNNN.tar` with, per clip (`__key__` = clip id), `spec.npy` float32 [F, T], `frames.npy`
uint8 [3, H, W, 3] and `json` {id, label, label_name, actor, split, corpus}; plus `sizes.json` and
`meta.json` (docs/CONTRACTS.md). The folder is replaced as a whole, and the bytes depend only on the
inputs, so a rerun gives identical tars.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from pipeline.corpora.cremad import EMOTIONS
from pipeline.manifest import read_manifest
from pipeline.shards import atomic_folder, write_shards, write_sizes_and_meta
from pipeline.splits import SPLITS
from pipeline.stages import exit_on, read_stage_config


@dataclass(frozen=True)
class ShardsConfig:
    maxcount: int = 1000  # samples per tar

    def __post_init__(self):
        if self.maxcount < 1:
            raise ValueError(f"shards_raw.maxcount={self.maxcount!r}: must be at least 1")


def _samples(
    records: list[dict], frames_file, spec_file, skipped: dict[str, str]
) -> Iterator[tuple[str, dict]]:
    """(key, fields) in id order; a clip missing from an intermediate is skipped and noted."""
    errors = {
        **dict(spec_file["errors"].attrs),
        **dict(frames_file["errors"].attrs),
    }  # read once, not per clip
    frames, specs = frames_file.get("frames", {}), spec_file.get("spec", {})
    for r in records:
        clip_id = r["id"]
        if clip_id in errors:
            skipped[clip_id] = str(errors[clip_id])
            continue
        if clip_id not in frames or clip_id not in specs:
            skipped[clip_id] = "missing from an intermediate: rerun the frames and spectrograms stages"
            continue
        meta = {
            "id": clip_id,
            "label": r["label"],
            "label_name": r["label_name"],
            "actor": r["actor"],
            "split": r["split"],
            "corpus": r["corpus"],
        }
        yield (
            clip_id,
            {
                "spec.npy": specs[clip_id][()],  # float32 [F, T]
                "frames.npy": frames[clip_id][()],  # uint8 [3, H, W, 3]
                "json": meta,
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
    records = [r for r in read_manifest(manifest_path) if r["status"] == "ok" and r.get("split")]
    records.sort(key=lambda r: r["id"])
    protocols = sorted({r["protocol"] for r in records})
    skipped: dict[str, str] = {}
    with (
        h5py.File(frames_path, "r") as frames_file,
        h5py.File(spec_path, "r") as spec_file,
        atomic_folder(out_dir) as tmp,
    ):
        sizes: dict[str, int] = {}
        for split in SPLITS:
            split_records = [r for r in records if r["split"] == split]
            sizes |= write_shards(
                _samples(split_records, frames_file, spec_file, skipped), tmp, split, maxcount=config.maxcount
            )
        spec_shape = _spec_shape(spec_config)
        size = frames_config["size"]
        meta = {
            "input_path": "raw",
            "corpus": "cremad",
            "num_classes": len(EMOTIONS),
            "label_names": list(EMOTIONS),
            "fields": {
                "spec.npy": {"dtype": "float32", "shape": list(spec_shape)},
                "frames.npy": {"dtype": "uint8", "shape": [frames_config["count"], size, size, 3]},
            },
            "config": {
                "protocol": protocols[0] if len(protocols) == 1 else protocols,
                "frames": frames_config,
                "spectrograms": spec_config,
                "shards": asdict(config),
            },
            "skipped": skipped,
        }
        write_sizes_and_meta(tmp, sizes, meta)
    return sizes, skipped


def _spec_shape(spec_config: dict) -> tuple[int, int]:
    from pipeline.stages.spectrograms import SpectrogramConfig

    return SpectrogramConfig(**spec_config).shape


def cli(
    manifest: Annotated[Path, typer.Option(help="OUT/manifest.jsonl from the index stage.")],
    frames: Annotated[Path, typer.Option(help="OUT/work/frames.h5 from the frames stage.")],
    spectrograms: Annotated[Path, typer.Option(help="OUT/work/spectrograms.h5 from the spectrograms stage.")],
    out: Annotated[Path, typer.Option("--out", help="The shard folder to (re)write, e.g. OUT/shards/raw.")],
    maxcount: int = typer.Option(1000, help="Samples per tar."),
) -> None:
    """Pack spectrograms and frames into deterministic WebDataset tars, one set per split."""
    with exit_on(ValueError, RuntimeError):
        sizes, skipped = run_shards_raw(manifest, frames, spectrograms, out, ShardsConfig(maxcount))
    print_shard_summary(sizes, skipped)


def print_shard_summary(sizes: dict[str, int], skipped: dict[str, str]) -> None:
    per_split = {s: sum(n for name, n in sizes.items() if name.startswith(f"{s}-")) for s in SPLITS}
    typer.echo(f"shards: {len(sizes)} tar(s); samples " + ", ".join(f"{s} {n}" for s, n in per_split.items()))
    for clip_id, why in sorted(skipped.items()):
        typer.echo(f"  skipped {clip_id}: {why}", err=True)


if __name__ == "__main__":
    typer.run(cli)
