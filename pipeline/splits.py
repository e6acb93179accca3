"""Speaker-disjoint split protocols: assign every actor to exactly one of train / validation / test.

Two protocols:
- `vavl`: the published VAVL partitions of CREMA-D (pipeline.corpora.cremad.vavl_protocol).
- `speaker-random`: a seeded random draw of actors in the VAVL proportions (63 / 14 / 14 of 91), for
  corpora that lack the VAVL clip set (the synthetic one). Same actors + same seed = same splits.
"""

from __future__ import annotations

import random

SPLITS = ("train", "validation", "test")
PROTOCOLS = ("vavl", "speaker-random")
VAVL_FRACTIONS = {"train": 63 / 91, "validation": 14 / 91, "test": 14 / 91}


def speaker_random_split(actors: list[int] | set[int], seed: int) -> dict[int, str]:
    """{actor: split}: actors shuffled with `seed`, then cut in the VAVL proportions; each split gets at
    least one actor. Needs at least 3 actors."""
    ordered = sorted(set(actors))
    if len(ordered) < 3:
        raise ValueError(
            f"speaker-random needs at least 3 actors to fill train/validation/test; found {ordered}"
        )
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_val = max(1, round(n * VAVL_FRACTIONS["validation"]))
    n_test = max(1, round(n * VAVL_FRACTIONS["test"]))
    n_train = n - n_val - n_test
    if n_train < 1:  # 3 or 4 actors: give train the surplus
        n_val, n_test, n_train = 1, 1, n - 2
    split = {a: "train" for a in ordered[:n_train]}
    split |= {a: "validation" for a in ordered[n_train : n_train + n_val]}
    split |= {a: "test" for a in ordered[n_train + n_val :]}
    return split


def assign_splits(
    records: list[dict], actor_split: dict[int, str], protocol: str, clips: set[str] | None = None
) -> None:
    """Set `protocol` and `split` on every record in place. A clip whose actor has no split, or that is
    not in `clips` (when given), gets split None: it takes no part in this protocol."""
    for record in records:
        record["protocol"] = protocol
        in_protocol = clips is None or record["id"] in clips
        record["split"] = (
            actor_split.get(record["actor"]) if in_protocol and record["actor"] is not None else None
        )


def check_speaker_disjoint(records: list[dict]) -> None:
    """Raise ValueError when an actor appears in two splits."""
    seen: dict[int, str] = {}
    for record in records:
        split, actor = record.get("split"), record.get("actor")
        if split is None or actor is None:
            continue
        if seen.setdefault(actor, split) != split:
            raise ValueError(f"actor {actor} is in both {seen[actor]} and {split} (clip {record['id']})")
