"""AVE's split protocol.

- `official`: the predefined lists of the AVE release, as the ECCV paper and the MLB authors use them:
  trainSet.txt -> train, valSet.txt -> validation, testSet.txt -> test. A video in none of them gets split
  None (it stays in the manifest and goes to no shard); one in two of them is rejected at scan time
  (pipeline.corpora.ave.layout). One clip per video and the video is the group, so the split is
  group-disjoint by construction.

The paper's three AVE runs are three training seeds of this one split (the authors' fold k only picks the
seed, 109 / 19 / 337), so `index.partition` and `index.seed` do not change it: every partition and seed
gives the same split, named `official`.
"""

from __future__ import annotations

from pipeline.corpora.ave.layout import SPLIT_LISTS
from pipeline.manifest import ClipRecord
from pipeline.splits import assign_splits

PROTOCOLS = ("official",)


def official_group_split(records: list[ClipRecord]) -> dict[str, str]:
    """{video id: split} of every record that exactly one split list names (`extra["lists"]`)."""
    split_of = {}
    for record in records:
        lists = record.extra.get("lists") or []
        if record.group is not None and len(lists) == 1:
            split_of[record.group] = SPLIT_LISTS[lists[0]]
    return split_of


def assign_ave_splits(records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
    """Set every record's split by `protocol` (only `official`; `partition` and `seed` change nothing) and
    return the protocol's name."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"index.protocol={protocol!r}: ave has the protocols {', '.join(PROTOCOLS)}")
    assign_splits(records, official_group_split(records))
    return "official"
