"""The generic corpus's split protocols, all group-disjoint:

- `auto` (the default): `given` when the copy gives splits (a `split` column, or split folders), else `random`;
- `given`: the copy's own splits; a clip without one takes no part. A copy that gives train and test only
  (VGGSound, Kinetics' lists) gets its validation split from the train groups: layout.validation of them,
  drawn with the seed;
- `random`: a seeded draw of groups (layout.validation and layout.test of them; train the rest). Every
  labelled clip's group takes part, kept or rejected, so a rejection never reshuffles the draw.
"""

from __future__ import annotations

import random

from pipeline.corpora.base import CorpusError
from pipeline.manifest import ClipRecord
from pipeline.splits import assign_splits, random_group_split

PROTOCOLS = ("auto", "given", "random")


def given_group_split(records: list[ClipRecord], name: str) -> dict[str, str]:
    """{group: split} from the copy's own splits; CorpusError for a group the copy puts in two splits."""
    split_of: dict[str, str] = {}
    for record in records:
        split = record.extra.get("given_split")
        if split is None or record.group is None or record.label is None:
            continue
        if split_of.setdefault(record.group, split) != split:
            raise CorpusError(
                f"{name}: the copy puts group {record.group} in both {split_of[record.group]} and {split} "
                f"(e.g. {record.extra.get('row')}); clips of a group must stay in one split: fix the split "
                "column, or use index.protocol=random"
            )
    return split_of


def validation_from_train(split_of: dict[str, str], fraction: float, seed: int) -> dict[str, str]:
    """`split_of` with a seeded `fraction` of its train groups (at least one, never all) moved to
    validation, unless it has a validation split already."""
    if "validation" in split_of.values():
        return split_of
    train = sorted(g for g, s in split_of.items() if s == "train")
    if len(train) < 2:
        return split_of
    random.Random(seed).shuffle(train)
    n = min(max(1, round(fraction * len(train))), len(train) - 1)
    return split_of | dict.fromkeys(train[:n], "validation")


def assign_generic_splits(
    records: list[ClipRecord], protocol: str, seed: int, fractions: dict[str, float], name: str
) -> str:
    """Set every record's split by `protocol` and return its name (`given`, `given-validation-seed-<seed>`,
    `random-<seed>`)."""
    gives = any(r.extra.get("given_split") for r in records)
    if protocol == "given" and not gives:
        raise CorpusError(
            f"index.protocol=given: the copy of {name} gives no split (no split column, no train/ validation/ "
            "test/ folders); use index.protocol=random"
        )
    if protocol == "given" or (protocol == "auto" and gives):
        given = given_group_split(records, name)
        drawn = validation_from_train(given, fractions["validation"], seed)
        assign_splits(records, drawn)
        return "given" if drawn is given else f"given-validation-seed-{seed}"
    groups = {r.group for r in records if r.group is not None and r.label is not None}
    try:
        draw = random_group_split(groups, seed, fractions)
    except ValueError as err:
        raise CorpusError(f"index.protocol=random on {name}: {err}; give a split column instead") from None
    assign_splits(records, draw)
    return f"random-{seed}"
