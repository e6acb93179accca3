"""Group-disjoint splits: every clip of a group (a CREMA-D actor, a UCF101 group, an AVE video) lands in
the same split, for any group key. A corpus's protocols build a {group: split} map (from published lists
or `random_group_split`); `assign_splits` applies it and `check_group_disjoint` proves it on every
prepare.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from pipeline.manifest import SPLITS, ClipRecord


def random_group_split(
    groups: Iterable, seed: int, fractions: dict[str, float], *, unit: str = "groups"
) -> dict:
    """{group: split}: the groups sorted, shuffled with `seed`, then cut in `fractions` (validation and
    test rounded, train takes the rest); each split gets at least one group. Needs at least 3 groups. Same
    groups + same seed = same splits, whatever order they came in."""
    ordered = sorted(set(groups))
    if len(ordered) < 3:
        raise ValueError(
            f"a random split needs at least 3 {unit} to fill train/validation/test; found {ordered}"
        )
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_val = max(1, round(n * fractions["validation"]))
    n_test = max(1, round(n * fractions["test"]))
    n_train = n - n_val - n_test
    if n_train < 1:  # 3 or 4 groups: give train the surplus
        n_val, n_test, n_train = 1, 1, n - 2
    split = dict.fromkeys(ordered[:n_train], "train")
    split |= dict.fromkeys(ordered[n_train : n_train + n_val], "validation")
    split |= dict.fromkeys(ordered[n_train + n_val :], "test")
    return split


def assign_splits(records: list[ClipRecord], group_split: dict, clips: set[str] | None = None) -> None:
    """Set `split` on every record in place from its group. A clip whose group has no split, or that is not
    in `clips` (when given), gets split None: it takes no part in the protocol."""
    for record in records:
        in_protocol = clips is None or record.id in clips
        record.split = group_split.get(record.group) if in_protocol and record.group is not None else None


def check_group_disjoint(records: list[ClipRecord]) -> None:
    """Raise ValueError when a group appears in two splits, or a split is not one of train, validation,
    test."""
    seen: dict[str, str] = {}
    for record in records:
        if record.split is None:
            continue
        if record.split not in SPLITS:
            raise ValueError(f"clip {record.id} has split {record.split!r}, not one of {', '.join(SPLITS)}")
        if record.group is None:
            raise ValueError(
                f"clip {record.id} is in split {record.split} but has no group to keep it disjoint"
            )
        if seen.setdefault(record.group, record.split) != record.split:
            raise ValueError(
                f"group {record.group} is in both {seen[record.group]} and {record.split} (clip {record.id})"
            )
