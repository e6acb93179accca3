"""CREMA-D's speaker-independent split protocols (each actor in exactly one split):

- `vavl`: the published VAVL partitions 1-5 (63 / 14 / 14 actors; clips outside VAVL's 5820 take no part);
- `speaker-random`: a seeded random draw of actors in the VAVL proportions, for corpora that lack the VAVL
  clip set (the synthetic one). Same actors + same seed = same splits.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline.corpora.cremad.layout import MANIFESTS_DIR
from pipeline.manifest import SPLITS, ClipRecord
from pipeline.splits import assign_splits, random_group_split

PROTOCOLS = ("vavl", "speaker-random")
VAVL_PARTITIONS = (1, 2, 3, 4, 5)
VAVL_FRACTIONS = {"train": 63 / 91, "validation": 14 / 91, "test": 14 / 91}
_VAVL_SPLIT = {"Train": "train", "Development": "validation", "Test": "test"}


def vavl_protocol(partition: int, manifests_dir: Path = MANIFESTS_DIR) -> tuple[dict[int, str], set[str]]:
    """The VAVL speaker-independent partition `partition` (1-5): ({actor: split}, {clip ids in the
    protocol}). Clips outside the VAVL clip list take no part (split None)."""
    if partition not in VAVL_PARTITIONS:
        raise ValueError(f"partition={partition!r}: VAVL has partitions 1-5")
    actors_by_split = json.loads((manifests_dir / "vavl_actor_partitions.json").read_text())[
        f"partition_{partition}"
    ]
    actor_split = {int(a): split for split in SPLITS for a in actors_by_split[split]}
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


def speaker_random_split(actors, seed: int) -> dict:
    """{actor: split}: actors shuffled with `seed`, then cut in the VAVL proportions (each split gets at
    least one actor). Needs at least 3 actors."""
    return random_group_split(actors, seed, VAVL_FRACTIONS, unit="actors")


def assign_cremad_splits(
    records: list[ClipRecord], protocol: str, partition: int, seed: int, manifests_dir: Path = MANIFESTS_DIR
) -> str:
    """Set every record's split by `protocol`; returns the protocol's name (`vavl-1`, `speaker-random-0`)."""
    if protocol == "vavl":
        actor_split, clips = vavl_protocol(partition, manifests_dir)
        assign_splits(records, {str(actor): split for actor, split in actor_split.items()}, clips)
        return f"vavl-{partition}"
    # every parsed actor takes part, kept or rejected, so a rejection never reshuffles the splits
    assign_splits(records, speaker_random_split({r.group for r in records if r.group is not None}, seed))
    return f"speaker-random-{seed}"
