"""Stage `shards_cached`: the frozen features of `OUT/work/features.h5` into WebDataset shards for the
Conformer path, `OUT/shards/cached/` (docs/CONTRACTS.md, "Shards" / "cached/").

Per split (`train`, `validation`, `test`), clips usable for the cached path in id order:
`__key__` = clip id, `w2v2.npy` float16 [T_a, D_a], `effb2.npy` float16 [T_v, 1408], `json` with the
label and `frames_total` / `frames_with_face`. Beside the tars: `sizes.json`, `meta.json` (with the
extractor identities under `extractors`) and `stats.json` (per-dimension mean / std of both features over
every time step of the TRAIN split only). Kept clips without features (no face) are skipped and
listed. The folder is replaced as a whole (`atomic_folder`); the same features give byte-identical tars.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.corpora.cremad import EMOTIONS
from pipeline.splits import SPLITS
from pipeline.stages import exit_on
from pipeline.stages import features as features_stage

FEATURE_FIELDS = ("w2v2", "effb2")


class ShardsCachedConfigError(ValueError):
    """A shards_cached parameter has a value we cannot use."""


@dataclass(frozen=True)
class ShardsCachedConfig:
    """Parameters of the shards_cached stage (params.yaml: `shards_cached`).

    maxcount: samples per tar at most.
    """

    maxcount: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.maxcount, int) or self.maxcount < 1:
            raise ShardsCachedConfigError(f"shards_cached.maxcount={self.maxcount!r}: expected an int >= 1")


class RunningStats:
    """Per-dimension mean and standard deviation over rows, accumulated in float64 (shifted by the first
    row's values, which keeps the variance accurate when the mean is far from 0)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift = self.total = self.total_sq = None

    def update(self, rows: np.ndarray) -> None:  # rows: [T, D]
        if len(rows) == 0:
            return
        rows = rows.astype(np.float64)
        if self.shift is None:
            self.shift = rows[0].copy()  # [D]
            self.total = np.zeros_like(self.shift)
            self.total_sq = np.zeros_like(self.shift)
        centred = rows - self.shift  # [T, D]
        self.count += len(rows)
        self.total += centred.sum(axis=0)
        self.total_sq += (centred**2).sum(axis=0)

    def result(self, dim: int) -> dict:
        """{"mean": [D], "std": [D], "count": rows}; with no rows (no train clip has a face) mean 0 and
        std 1, so that the folder stays well-formed, and count 0 says why."""
        if self.count == 0:
            return {"mean": [0.0] * dim, "std": [1.0] * dim, "count": 0}
        mean_centred = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean_centred**2, 0.0)
        return {
            "mean": (self.shift + mean_centred).tolist(),
            "std": np.sqrt(var).tolist(),
            "count": self.count,
        }


def sample_json(record: dict, counts: dict) -> dict:
    return {
        "id": record["id"],
        "label": record["label"],
        "label_name": record["label_name"],
        "actor": record["actor"],
        "split": record["split"],
        "corpus": record.get("corpus", "cremad"),
        "frames_total": counts["frames_total"],
        "frames_with_face": counts["frames_with_face"],
    }


def build_meta(
    features_config: dict, config: ShardsCachedConfig, protocols: list[str], skipped: dict[str, str]
) -> dict:
    """`meta.json` of the cached folder. `extractors` (what a trainer checks) gets the stored dtype;
    `config` keeps the settings that shape the features, not machine details (paths, device)."""
    extractors = features_config["extractors"]
    settings = {key: features_config[key] for key in ("effb2", "w2v2")}
    return {
        "input_path": "cached",
        "corpus": "cremad",
        "num_classes": len(EMOTIONS),
        "label_names": list(EMOTIONS),
        "fields": {
            "w2v2.npy": {"dtype": "float16", "shape": ["T_a", int(extractors["audio"]["dim"])]},
            "effb2.npy": {"dtype": "float16", "shape": ["T_v", int(extractors["video"]["dim"])]},
        },
        "config": {
            "protocol": protocols[0] if len(protocols) == 1 else protocols,
            "features": settings,
            "shards": asdict(config),
        },
        "extractors": {name: {**identity, "dtype": "float16"} for name, identity in extractors.items()},
        "skipped": skipped,
    }


def run_shards_cached(
    manifest_path: str | Path,
    features_path: str | Path,
    out_dir: str | Path,
    config: ShardsCachedConfig = ShardsCachedConfig(),
    *,
    progress: bool = True,
) -> tuple[dict[str, int], dict[str, str]]:
    """Write the cached shard folder `out_dir` (OUT/shards/cached) from the manifest and features.h5.
    Returns ({tar name: sample count}, {skipped clip id: why}) for kept clips in a split that have no
    features (no face, or an error in an earlier stage)."""
    import h5py
    from tqdm import tqdm

    from pipeline.manifest import atomic_write_bytes, read_manifest
    from pipeline.shards import atomic_folder, write_shards, write_sizes_and_meta
    from pipeline.stages import read_stage_config

    features_config = read_stage_config(features_path)  # raises unless the features stage finished
    records = sorted(
        (r for r in read_manifest(manifest_path) if r.get("status") == "ok" and r.get("split") in SPLITS),
        key=lambda r: r["id"],
    )
    stats = {name: RunningStats() for name in FEATURE_FIELDS}
    skipped: dict[str, str] = {}
    with h5py.File(features_path, "r") as h5, atomic_folder(out_dir) as tmp:
        have = set(h5.get("counts", {}))
        for r in records:
            if r["id"] not in have:
                skipped[r["id"]] = (
                    str(h5["errors"].attrs.get(r["id"], ""))
                    or (r.get("reasons") or {}).get("cached")
                    or "no features (no face, or not usable for the cached path)"
                )
        usable = [r for r in records if r["id"] in have]
        bar = tqdm(
            total=len(usable), desc="shards_cached", unit="clip", disable=not progress, dynamic_ncols=True
        )

        def samples(split: str):
            for record in (r for r in usable if r["split"] == split):
                clip = features_stage.read_clip_features(h5, record["id"])
                if split == "train":
                    for name in FEATURE_FIELDS:
                        stats[name].update(clip[name])  # [T, D]
                bar.update(1)
                yield (
                    record["id"],
                    {"w2v2.npy": clip["w2v2"], "effb2.npy": clip["effb2"], "json": sample_json(record, clip)},
                )

        sizes: dict[str, int] = {}
        for split in SPLITS:
            sizes |= write_shards(samples(split), tmp, split, maxcount=config.maxcount)
        bar.close()
        protocols = sorted({r.get("protocol") or "" for r in records})
        write_sizes_and_meta(tmp, sizes, build_meta(features_config, config, protocols, skipped))
        dims = {
            "w2v2": int(features_config["extractors"]["audio"]["dim"]),
            "effb2": int(features_config["extractors"]["video"]["dim"]),
        }
        stats_json = {name: stats[name].result(dims[name]) for name in FEATURE_FIELDS}
        atomic_write_bytes(tmp / "stats.json", (json.dumps(stats_json, sort_keys=True) + "\n").encode())
    return sizes, skipped


def print_shard_summary(sizes: dict[str, int], skipped: dict[str, str]) -> None:
    per_split = {s: sum(n for name, n in sizes.items() if name.startswith(f"{s}-")) for s in SPLITS}
    typer.echo(
        f"shards_cached: {len(sizes)} tar(s); samples " + ", ".join(f"{s} {n}" for s, n in per_split.items())
    )
    for clip_id, why in sorted(skipped.items()):
        typer.echo(f"  skipped {clip_id}: {why}", err=True)
    if not per_split["train"]:
        typer.echo(
            "  warning: no train clip has features: stats.json holds mean 0 / std 1 (count 0)", err=True
        )


def cli(
    manifest: Annotated[Path, typer.Option(help="OUT/manifest.jsonl.")],
    features: Annotated[Path, typer.Option(help="OUT/work/features.h5 from the features stage.")],
    out: Annotated[
        Path, typer.Option("--out", help="The shard folder to (re)write, e.g. OUT/shards/cached.")
    ],
    maxcount: int = typer.Option(1000, help="Samples per tar."),
) -> None:
    """Pack the frozen features into deterministic WebDataset tars per split, with sizes.json, meta.json
    (extractor identities) and stats.json (mean/std per dimension from the train split)."""
    with exit_on(ValueError, RuntimeError):
        sizes, skipped = run_shards_cached(manifest, features, out, ShardsCachedConfig(maxcount))
    print_shard_summary(sizes, skipped)


if __name__ == "__main__":
    typer.run(cli)
