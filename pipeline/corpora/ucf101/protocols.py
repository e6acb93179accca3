"""UCF101's split protocol `official`: partition N (1-3) is the official split N (trainlist0N.txt /
testlist0N.txt), and validation is 10% of the train split's groups, drawn with the seed.

The draw follows the authors' code (kkontras/MLB, datasets/UCF101/UCF101_Dataset.py): a class-stratified
split of the train list's `<Class>_gXX` groups, test_size 0.1, one label per group (sklearn's
train_test_split over group ids with stratify=labels); every clip of a drawn group goes to validation. The
draw here is mlbpipe's own (the same rule: ceil(10%) of the groups, per class in proportion, the remainder
to the classes with the largest fractions), so it does not reproduce the authors' sklearn draw group for
group. The official lists are group-disjoint, and so are the splits built from them.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping

from pipeline.corpora.base import CorpusError
from pipeline.manifest import ClipRecord

PROTOCOLS = ("official",)
PARTITIONS = (1, 2, 3)
VALIDATION_FRACTION = 0.1


def stratified_group_draw(
    groups_by_class: Mapping[str, Iterable[str]], fraction: float, seed: int
) -> set[str]:
    """The groups drawn for validation: n = ceil(fraction x all groups), at most all but one, shared among
    the classes in proportion to their group counts (floors first, then one more to the classes with the
    largest remainders, ties broken by the seed), each class's drawn at random. Same input and seed = same
    draw, whatever order the groups came in."""
    pools = {c: sorted(set(g)) for c, g in sorted(groups_by_class.items())}
    total = sum(len(p) for p in pools.values())
    n = min(math.ceil(fraction * total), total - 1) if total > 1 else 0
    if n <= 0:
        return set()
    rng = random.Random(seed)
    shares = {c: n * len(p) / total for c, p in pools.items()}
    quota = {c: math.floor(s) for c, s in shares.items()}
    order = list(pools)
    rng.shuffle(order)  # the tie-break, then a stable sort by remainder
    order.sort(key=lambda c: quota[c] - shares[c])
    for c in order[: n - sum(quota.values())]:
        quota[c] += 1
    return {g for c, pool in pools.items() for g in rng.sample(pool, quota[c])}


def official_splits(records: list[ClipRecord], partition: int, seed: int) -> dict[str, str]:
    """{group: split} of partition `partition`: the lists' train and test groups (from each record's
    `extra["lists"]`), a stratified 10% of the train groups moved to validation. Only the groups of the 51
    audio classes take part, kept or rejected, so that a rejection never reshuffles the draw. Raises
    CorpusError when the lists put one group in both train and test."""
    group_split: dict[str, str] = {}
    train_groups: dict[str, set[str]] = defaultdict(set)
    for record in records:
        split = (record.extra.get("lists") or {}).get(str(partition))
        if record.group is None or record.label is None or split is None:
            continue
        if group_split.setdefault(record.group, split) != split:
            raise CorpusError(
                f"the UCF101 split files of partition {partition} put group {record.group} in both trainlist0"
                f"{partition}.txt and testlist0{partition}.txt (e.g. {record.id}); clips of a group must stay "
                "in one split: fix the copy's ucfTrainTestlist/, or remove it to use the shipped official lists"
            )
        if split == "train":
            train_groups[record.label_name].add(record.group)
    for group in stratified_group_draw(train_groups, VALIDATION_FRACTION, seed):
        group_split[group] = "validation"
    return group_split


def assign_official_splits(records: list[ClipRecord], partition: int, seed: int) -> str:
    """Set every record's split by official partition `partition` (split None: not in that partition's
    lists, not one of the 51 audio classes, or no group); returns the protocol's name,
    `official-<partition>-seed-<seed>`. Raises CorpusError when the partition's lists were not found."""
    if not any(str(partition) in (r.extra.get("lists") or {}) for r in records):
        raise CorpusError(
            f"index.partition={partition}: the UCF101 split files trainlist0{partition}.txt and "
            f"testlist0{partition}.txt were not found or not complete; put them in ROOT/ucfTrainTestlist/, or "
            "remove that folder to use the shipped official lists"
        )
    group_split = official_splits(records, partition, seed)
    for record in records:
        listed = (record.extra.get("lists") or {}).get(str(partition)) is not None
        record.split = group_split.get(record.group) if listed and record.label is not None else None
    return f"official-{partition}-seed-{seed}"
