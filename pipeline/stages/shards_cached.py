"""Stage `shards_cached`: the frozen features of `OUT/work/features.h5` into WebDataset shards for the
Conformer path, `OUT/shards/cached/` (docs/CONTRACTS.md, "Shards" / "cached/").

Per split (`train`, `validation`, `test`), clips usable for the cached path in id order:
`__key__` = clip id, `w2v2.npy` float16 [T_a, D_a], `effb2.npy` float16 [T_v, 1408], `json` with the
sample's `json` (pipeline.store.shards.sample_json, plus `frames_total` / `frames_with_face`). Beside the tars: `sizes.json`, `meta.json` (with the
extractor identities under `extractors`) and `stats.json` (per-dimension mean / std of both features over
every time step of the TRAIN split only). Kept clips without features (no face) are skipped and
listed. The folder is replaced as a whole (`atomic_folder`); the same features give byte-identical tars.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_folder, atomic_write_json
from pipeline.manifest import SPLITS, read_corpus_description, read_manifest
from pipeline.store.intermediates import read_clip_features, read_stage_config
from pipeline.store.shards import sample_json, shard_meta, write_shards, write_sizes_and_meta

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

    features_config = read_stage_config(features_path)  # raises unless the features stage finished
    corpus = read_corpus_description(manifest_path)
    records = sorted((r for r in read_manifest(manifest_path) if r.in_split()), key=lambda r: r.id)
    stats = {name: RunningStats() for name in FEATURE_FIELDS}
    skipped: dict[str, str] = {}
    with h5py.File(features_path, "r") as h5, atomic_folder(out_dir) as tmp:
        have = set(h5.get("counts", {}))
        for r in records:
            if r.id not in have:
                skipped[r.id] = (
                    str(h5["errors"].attrs.get(r.id, ""))
                    or r.reasons.get("cached")
                    or "no features (no face, or not usable for the cached path)"
                )
        usable = [r for r in records if r.id in have]
        bar = tqdm(
            total=len(usable), desc="shards_cached", unit="clip", disable=not progress, dynamic_ncols=True
        )

        def samples(split: str):
            for record in (r for r in usable if r.split == split):
                clip = read_clip_features(h5, record.id)
                if split == "train":
                    for name in FEATURE_FIELDS:
                        stats[name].update(clip[name])  # [T, D]
                bar.update(1)
                counts = {"frames_total": clip["frames_total"], "frames_with_face": clip["frames_with_face"]}
                fields = {
                    "w2v2.npy": clip["w2v2"],
                    "effb2.npy": clip["effb2"],
                    "json": sample_json(record, **counts),
                }
                yield record.id, fields

        sizes: dict[str, int] = {}
        for split in SPLITS:
            sizes |= write_shards(samples(split), tmp, split, maxcount=config.maxcount)
        bar.close()
        write_sizes_and_meta(tmp, sizes, build_meta(corpus, features_config, config, skipped))
        dims = {
            "w2v2": int(features_config["extractors"]["audio"]["dim"]),
            "effb2": int(features_config["extractors"]["video"]["dim"]),
        }
        stats_json = {name: stats[name].result(dims[name]) for name in FEATURE_FIELDS}
        atomic_write_json(tmp / "stats.json", stats_json, indent=None, sort_keys=True)
    return sizes, skipped


def build_meta(
    corpus: dict, features_config: dict, config: ShardsCachedConfig, skipped: dict[str, str]
) -> dict:
    """`meta.json` of the cached folder. `extractors` (what a trainer checks) gets the stored dtype;
    `config` keeps the settings that shape the features, not machine details (paths, device)."""
    extractors = features_config["extractors"]
    fields = {
        "w2v2.npy": {"dtype": "float16", "shape": ["T_a", int(extractors["audio"]["dim"])]},
        "effb2.npy": {"dtype": "float16", "shape": ["T_v", int(extractors["video"]["dim"])]},
    }
    settings = {key: features_config[key] for key in ("effb2", "w2v2")}
    return shard_meta(
        corpus,
        "cached",
        fields,
        {"features": settings, "shards": asdict(config)},
        skipped,
        extractors={name: {**identity, "dtype": "float16"} for name, identity in extractors.items()},
    )
