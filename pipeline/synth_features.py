"""`mlbpipe synth features OUT`: a synthetic corpus written straight into cached-feature shards,
`OUT/shards/cached/` (docs/CONTRACTS.md, "Shards" / "cached/"), for `mlbpipe train --features cached`.

No media, no extractors: every clip is a pair of float16 sequences `w2v2.npy [T_a, D_a]` and
`effb2.npy [T_v, D_v]` of unit Gaussian noise, plus a class cue in some of them (its `json` says which:
`cue_audio`, `cue_video`). It is the bench on which a CPU can rank balancing methods: small dims and short
sequences keep a tiny Conformer fast, and a big test split keeps a test accuracy within about ±1.5 points
(95%).

The two modalities play two roles, strong (easy and fast to fit) and weak (harder and slower); `strong`
says which modality plays which (swap it to swap them). Each role has
- a STRENGTH: the fraction of clips whose features show their class at all; the others show nothing (an
  ambiguous clip), so the role alone classifies at most strength + (1 - strength) / classes, and fusion
  helps where one modality is ambiguous and the other is not (drawn independently per modality);
- a LEARNING SPEED: the cue is `amplitude` times the class's direction (orthonormal directions, noise std
  1) added to a `frames` fraction of the clip's steps, its sign flipped on each step with chance `flip`:
  0 gives an offset that mean pooling shows (a linear fit, learnt within an epoch), 0.5 a zero-mean cue
  that mean pooling cancels (the encoder must first learn a nonlinear, energy-like feature: slow).

Defaults (calibrated with `mlbpipe train --features cached --size tiny --epochs 5 --batch-size 64 --lr
5e-3`): the strong role (audio) is a large offset on every step of 70% of the clips; the weak role (video)
a signed cue on a fifth of the steps of 70% of the clips. Trained alone, the video encoder learns it within
those epochs; trained jointly it falls far behind, because the audio fits first and drives the fused loss
down: the imbalance phenomenon that the balancing methods exist for.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from mlb.common.atomic import atomic_folder, atomic_write_json
from mlb.common.contract import MODALITY_FIELDS, SPLITS
from pipeline.stages.shards_cached import RunningStats
from pipeline.store.shards import shard_meta, write_shards, write_sizes_and_meta

CORPUS = "synthetic-features"
MODALITIES = ("audio", "video")
ROLE_KEYS = ("strength", "amplitude", "frames", "flip")  # the fields of one role: <role>_<key>


@dataclass(frozen=True)
class FeatureSynthConfig:
    """Cached-feature shards of a synthetic corpus: OUT/shards/cached/ (w2v2.npy [T_a, D_a], effb2.npy
    [T_v, D_v], float16), for `mlbpipe train --features cached`.

    One modality is strong (its class cue is an offset on every step: fast to fit), the other weak (a cue
    with a random sign on a few steps: slower, it needs a nonlinear feature pooled over time). --strong
    says which is which; the strong-* and weak-* options dial each role's strength (the clips with a cue)
    and learning speed (amplitude, frames, flip). The same options give byte-identical shards."""

    train: int = field(default=1500, metadata={"help": "Clips in the train split."})
    validation: int = field(default=500, metadata={"help": "Clips in the validation split."})
    # n >= 1.96^2 * 0.25 / 0.015^2 = 4269 keeps a 95% interval of a test accuracy within ±1.5 points
    test: int = field(default=4300, metadata={"help": "Clips in the test split (4300: ±1.5 points at 95%)."})
    classes: int = field(default=6, metadata={"help": "Number of classes (at most the smaller feature dim)."})
    audio_dim: int = field(default=16, metadata={"help": "Feature size of w2v2.npy (audio)."})
    video_dim: int = field(default=16, metadata={"help": "Feature size of effb2.npy (video)."})
    audio_min_len: int = field(default=8, metadata={"help": "Shortest audio sequence (steps)."})
    audio_max_len: int = field(default=16, metadata={"help": "Longest audio sequence (steps)."})
    video_min_len: int = field(default=6, metadata={"help": "Shortest video sequence (steps)."})
    video_max_len: int = field(default=12, metadata={"help": "Longest video sequence (steps)."})
    strong: str = field(
        default="audio", metadata={"help": "The modality with the strong, fast cue: audio or video."}
    )
    strong_strength: float = field(
        default=0.7, metadata={"help": "Strong role: fraction of clips whose features show their class."}
    )
    strong_amplitude: float = field(
        default=3.0, metadata={"help": "Strong role: size of the cue on a cue step (noise std 1)."}
    )
    strong_frames: float = field(
        default=1.0, metadata={"help": "Strong role: fraction of a clip's steps that carry the cue."}
    )
    strong_flip: float = field(
        default=0.0,
        metadata={
            "help": "Strong role: chance that a cue step's sign is flipped (0: an offset; 0.5: zero mean)."
        },
    )
    weak_strength: float = field(
        default=0.7, metadata={"help": "Weak role: fraction of clips whose features show their class."}
    )
    weak_amplitude: float = field(
        default=4.0, metadata={"help": "Weak role: size of the cue on a cue step (noise std 1)."}
    )
    weak_frames: float = field(
        default=0.2, metadata={"help": "Weak role: fraction of a clip's steps that carry the cue."}
    )
    weak_flip: float = field(
        default=0.5,
        metadata={
            "help": "Weak role: chance that a cue step's sign is flipped (0: an offset; 0.5: zero mean)."
        },
    )
    maxcount: int = field(
        default=250, metadata={"help": "Clips per tar at most (more tars: better shuffling)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Random seed: the same seed and options give byte-identical shards."}
    )
    progress: bool = field(default=True, metadata={"cli": False})  # the command line always shows a bar

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the key and the value of the first bad setting."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"{key}={getattr(self, key)!r}: {why}")

        for f in fields(self):  # types first: a str from a params file must not reach the comparisons
            value, kind = getattr(self, f.name), f.type
            if kind == "bool" and not isinstance(value, bool):
                raise bad(f.name, "must be true or false")
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(f.name, "must be an integer")
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise bad(f.name, "must be a number")
        for key in ("train", "validation", "test", "maxcount", "audio_min_len", "video_min_len"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.classes < 2:
            raise bad("classes", "must be >= 2")
        for m in MODALITIES:
            if getattr(self, f"{m}_dim") < self.classes:
                raise bad(f"{m}_dim", f"must be >= classes ({self.classes}): one orthogonal cue per class")
            if getattr(self, f"{m}_max_len") < getattr(self, f"{m}_min_len"):
                raise bad(f"{m}_max_len", f"must be >= {m}_min_len ({getattr(self, f'{m}_min_len')})")
        if self.strong not in MODALITIES:
            raise bad("strong", f"must be one of {MODALITIES}")
        for role in ("strong", "weak"):
            for key in (f"{role}_strength", f"{role}_frames"):
                if not 0 <= getattr(self, key) <= 1:
                    raise bad(key, "must be in [0, 1]")
            if not 0 <= getattr(self, f"{role}_flip") <= 0.5:
                raise bad(f"{role}_flip", "must be in [0, 0.5] (0.5 already cancels the mean)")
            if not 0 <= getattr(self, f"{role}_amplitude") <= 100:
                raise bad(f"{role}_amplitude", "must be in [0, 100]")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")

    def role(self, modality: str) -> dict:
        """{strength, amplitude, frames, flip} of the role `modality` plays."""
        role = "strong" if modality == self.strong else "weak"
        return {key: getattr(self, f"{role}_{key}") for key in ROLE_KEYS}

    def lengths(self, modality: str) -> tuple[int, int]:
        return getattr(self, f"{modality}_min_len"), getattr(self, f"{modality}_max_len")

    def dim(self, modality: str) -> int:
        return getattr(self, f"{modality}_dim")


@dataclass
class FeatureSynthSummary:
    """What `synthesize_features` wrote."""

    out_dir: Path  # OUT/shards/cached
    clips: dict[str, int]  # per split
    seconds: float

    def describe(self) -> str:
        per_split = ", ".join(f"{split} {n}" for split, n in self.clips.items())
        return f"wrote {sum(self.clips.values())} synthetic clips ({per_split}) to {self.out_dir} in {self.seconds:.1f} s"


def class_directions(config: FeatureSynthConfig, modality: str) -> np.ndarray:
    """Orthonormal cue directions of one modality, one per class: [C, D]."""
    rng = np.random.default_rng([config.seed, MODALITIES.index(modality)])
    gaussian = rng.standard_normal((config.dim(modality), config.classes))  # [D, C]
    q, _ = np.linalg.qr(gaussian)  # [D, C], orthonormal columns
    return np.ascontiguousarray(q.T)  # [C, D]


def split_labels(config: FeatureSynthConfig, split: str) -> np.ndarray:
    """The labels of a split: as balanced as the count allows, in a seeded random order: [N]."""
    n = getattr(config, split)
    rng = np.random.default_rng([config.seed, 100 + SPLITS.index(split)])
    return rng.permutation(np.arange(n) % config.classes)


def clip_features(
    config: FeatureSynthConfig, modality: str, directions: np.ndarray, label: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """One clip's sequence of one modality, float16 [T, D], and whether it carries the class cue. `rng` is
    the clip's and modality's own, so one modality's settings never change the other's features."""
    role = config.role(modality)
    low, high = config.lengths(modality)
    t = int(rng.integers(low, high + 1))
    x = rng.standard_normal((t, config.dim(modality)))  # [T, D] noise
    has_cue = bool(rng.random() < role["strength"])
    steps = rng.permutation(t)[: max(1, round(role["frames"] * t))]  # [n] the cue steps
    signs = np.where(rng.random(len(steps)) < role["flip"], -1.0, 1.0)  # [n]
    if has_cue:
        x[steps] += role["amplitude"] * signs[:, None] * directions[label]  # [n, D]
    return x.astype(np.float16), has_cue


def synthesize_features(out: Path, config: FeatureSynthConfig = FeatureSynthConfig()) -> FeatureSynthSummary:
    """Write OUT/shards/cached/ (replaced as a whole) and return what was written."""
    from tqdm import tqdm

    started = time.perf_counter()
    config.validate()
    out_dir = Path(out) / "shards" / "cached"
    names = {m: MODALITY_FIELDS["cached"][m].removesuffix(".npy") for m in MODALITIES}  # w2v2, effb2
    directions = {m: class_directions(config, m) for m in MODALITIES}
    label_names = [f"class{c}" for c in range(config.classes)]
    stats = {names[m]: RunningStats() for m in MODALITIES}
    counts = {split: getattr(config, split) for split in SPLITS}
    bar = tqdm(total=sum(counts.values()), desc="synth features", unit="clip", disable=not config.progress)

    def samples(split: str):
        for i, label in enumerate(split_labels(config, split).tolist()):
            key = f"{split}-{i:06d}"
            info = {
                "id": key,
                "corpus": CORPUS,
                "label": label,
                "label_name": label_names[label],
                "split": split,
            }
            arrays = {}
            for m in MODALITIES:
                rng = np.random.default_rng([config.seed, SPLITS.index(split), i, MODALITIES.index(m)])
                arrays[m], info[f"cue_{m}"] = clip_features(config, m, directions[m], label, rng)
                if split == "train":
                    stats[names[m]].update(arrays[m])  # [T, D]
            bar.update(1)
            yield key, {f"{names[m]}.npy": arrays[m] for m in MODALITIES} | {"json": info}

    with atomic_folder(out_dir) as tmp:
        sizes: dict[str, int] = {}
        for split in SPLITS:
            sizes |= write_shards(samples(split), tmp, split, maxcount=config.maxcount)
        bar.close()
        write_sizes_and_meta(tmp, sizes, build_meta(config, label_names))
        stats_json = {names[m]: stats[names[m]].result(config.dim(m)) for m in MODALITIES}
        atomic_write_json(tmp / "stats.json", stats_json, indent=None, sort_keys=True)
    return FeatureSynthSummary(out_dir, counts, time.perf_counter() - started)


def build_meta(config: FeatureSynthConfig, label_names: list[str]) -> dict:
    """`meta.json`: the contract's keys, the generator's config, and extractor entries that say loudly
    that these are no features of any real model."""
    corpus = {
        "corpus": CORPUS,
        "num_classes": config.classes,
        "label_names": label_names,
        "protocol": "synthetic",
        "method_defaults": {},  # no authors' settings: every method keeps its own defaults
    }
    fields_ = {
        MODALITY_FIELDS["cached"][m]: {"dtype": "float16", "shape": [f"T_{m[0]}", config.dim(m)]}
        for m in MODALITIES
    }
    extractors = {
        m: {
            "model": "synthetic",
            "synthetic": True,
            "random_init": True,
            "dim": config.dim(m),
            "dtype": "float16",
            "role": "strong" if m == config.strong else "weak",
        }
        for m in MODALITIES
    }
    settings = {k: v for k, v in asdict(config).items() if k != "progress"}
    return shard_meta(corpus, "cached", fields_, {"synth_features": settings}, {}, extractors=extractors)
