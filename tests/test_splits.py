"""Split protocols are group-disjoint: no group (a CREMA-D actor) is ever in two splits (pipeline.splits, and
CREMA-D's VAVL and speaker-random protocols)."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from pipeline.corpora.cremad import layout, protocols
from pipeline.corpora.cremad.protocols import speaker_random_split
from pipeline.manifest import ClipRecord
from pipeline.splits import assign_splits, check_group_disjoint, random_group_split

pytestmark = pytest.mark.unit


def _record(clip_id: str, group, split=None) -> ClipRecord:
    return ClipRecord(clip_id, "cremad", group=None if group is None else str(group), split=split)


def _actors_per_split(actor_split: dict[int, str]) -> dict[str, set[int]]:
    groups: dict[str, set[int]] = {"train": set(), "validation": set(), "test": set()}
    for actor, split in actor_split.items():
        groups[split].add(actor)
    return groups


@pytest.mark.parametrize("partition", protocols.VAVL_PARTITIONS)
def test_vavl_partitions_are_speaker_disjoint_63_14_14(partition):
    actor_split, clips = protocols.vavl_protocol(partition)
    groups = _actors_per_split(actor_split)
    assert {k: len(v) for k, v in groups.items()} == {"train": 63, "validation": 14, "test": 14}
    assert groups["train"] | groups["validation"] | groups["test"] == set(layout.ACTORS)
    assert not (
        groups["train"] & groups["validation"]
        or groups["train"] & groups["test"]
        or groups["validation"] & groups["test"]
    )
    assert len(clips) == 5820
    # clip by clip: the published Split_Set agrees with the split of the clip's actor
    with open(layout.MANIFESTS_DIR / f"vavl_labels_partition_{partition}.csv", newline="") as f:
        names = {"Train": "train", "Development": "validation", "Test": "test"}
        for row in csv.DictReader(f):
            assert actor_split[int(row["SpkrID"])] == names[row["Split_Set"]]


def test_vavl_partition_1_clip_counts():
    actor_split, clips = protocols.vavl_protocol(1)
    counts = Counter(actor_split[int(c[:4])] for c in clips)
    assert counts == {"train": 4043, "validation": 878, "test": 899}


def test_vavl_rejects_an_unknown_partition():
    with pytest.raises(ValueError, match="partition"):
        protocols.vavl_protocol(6)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_speaker_random_on_91_actors_is_disjoint_and_sized_like_vavl(seed):
    actor_split = speaker_random_split(list(layout.ACTORS), seed)
    groups = _actors_per_split(actor_split)
    assert {k: len(v) for k, v in groups.items()} == {"train": 63, "validation": 14, "test": 14}
    assert sum(len(v) for v in groups.values()) == len(set().union(*groups.values())) == 91


def test_speaker_random_is_seeded_and_order_free():
    actors = list(layout.ACTORS)
    assert speaker_random_split(actors, 5) == speaker_random_split(list(reversed(actors)), 5)
    assert speaker_random_split(actors, 5) != speaker_random_split(actors, 6)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 13])
def test_speaker_random_fills_every_split_for_few_actors(n):
    groups = _actors_per_split(speaker_random_split(list(range(1001, 1001 + n)), 0))
    assert all(groups.values()) and sum(map(len, groups.values())) == n


def test_speaker_random_needs_three_actors():
    with pytest.raises(ValueError, match="at least 3 actors"):
        speaker_random_split([1001, 1002], 0)


def test_assigned_clips_never_share_an_actor_across_splits():
    records = [_record(f"{a}_DFA_ANG_XX", a) for a in range(1001, 1021)]
    records += [_record(f"{a}_IEO_SAD_HI", a) for a in range(1001, 1021)]
    records.append(_record("bad", None))
    assign_splits(records, speaker_random_split({r.group for r in records if r.group}, 0))
    check_group_disjoint(records)
    by_group: dict[str, set[str]] = {}
    for r in records:
        if r.group is not None:
            by_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert records[-1].split is None


def test_vavl_leaves_clips_outside_its_list_without_split():
    actor_split, clips = protocols.vavl_protocol(1)
    inside = next(iter(sorted(clips)))
    records = [_record(inside, inside[:4]), _record("1001_XXX_ANG_XX", 1001)]
    assign_splits(records, {str(a): s for a, s in actor_split.items()}, clips)
    assert records[0].split == actor_split[int(inside[:4])] and records[1].split is None


def test_check_group_disjoint_catches_a_leak_and_a_bad_split():
    with pytest.raises(ValueError, match="group 1001 is in both train and test"):
        check_group_disjoint([_record("a", 1001, "train"), _record("b", 1001, "test")])
    with pytest.raises(ValueError, match="split 'dev'"):
        check_group_disjoint([_record("a", 1001, "dev")])
    with pytest.raises(ValueError, match="no group"):
        check_group_disjoint([_record("a", None, "train")])


def test_random_group_split_takes_any_group_key_and_its_fractions():
    groups = [f"v_{i:03d}" for i in range(20)]
    split = random_group_split(groups, 3, {"train": 0.8, "validation": 0.1, "test": 0.1})
    assert sorted(split.values()).count("validation") == 2 and sorted(split.values()).count("test") == 2
    assert split == random_group_split(reversed(groups), 3, {"train": 0.8, "validation": 0.1, "test": 0.1})
