"""Tones, a tiny corpus for mlbpipe: two classes, a low or a high tone beside a dark or a bright picture.

A copy holds one folder per class, each clip a 16 kHz WAV beside an AVI of the same name:
`ROOT/<class>/<class>_<group>.wav` and `.avi`. Clips of one group never straddle splits.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.corpora.base import ClipSource, Corpus, CorpusError, MediaSpec, Scan
from pipeline.manifest import ClipRecord
from pipeline.splits import assign_splits, random_group_split

CLASSES = ("low", "high")
SPLIT = {"train": 0.5, "validation": 0.25, "test": 0.25}


class Tones(Corpus):
    name = "tones"
    label_names = CLASSES
    media = MediaSpec(audio_format={"sample_rate": 16000, "channels": 1, "sample_width": 2})
    protocols = ("random",)
    manifests_dir = Path(__file__).parent / "lists"  # checked-in lists: tones has none
    layout_hint = "<class>/<class>_<group>.wav and .avi"
    input_paths = ("raw",)
    input_paths_note = "tones has no faces for the cached path"

    def scan(self, root: Path) -> Scan:
        clips = []
        for label, name in enumerate(CLASSES):
            for wav in sorted((root / name).glob("*.wav")):
                files = {"audio": f"{name}/{wav.stem}.wav", "video": f"{name}/{wav.stem}.avi"}
                found = {role: [path] if (root / path).is_file() else [] for role, path in files.items()}
                group = wav.stem.removeprefix(f"{name}_")
                clips.append(ClipSource(wav.stem, found, files, label, name, group))
        if not clips:
            raise CorpusError(f"{root} holds no {self.layout_hint}: pass --root the folder of a tones copy")
        return Scan(sorted(clips, key=lambda clip: clip.id))

    def fold_setting(self, protocol: str) -> str:
        return "seed"  # a random protocol: fold k is the draw with seed k

    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        groups = {record.group for record in records if record.group}
        assign_splits(records, random_group_split(groups, seed, SPLIT))
        return f"random-{seed}"


CORPUS = Tones()
