"""UCF101 (Soomro, Zamir, Shah, 2012): 13,320 clips of 101 actions; 51 of the actions have sound, and the
audio-visual recipe (MLB, Kontras et al., 2024) uses those 51.

The plug-in: layout, naming and the split files in `layout`, the per-clip rules in `rules`, the official
split protocol in `protocols`, checked-in lists in `manifests/ucf101/` (docs/corpora/ucf101.md); its synthetic
stand-in lives beside it, in pipeline.standins.ucf101.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pipeline.corpora.base import ClipSource, Corpus, LayoutCheck, MediaSpec, ValidationConfig
from pipeline.corpora.ucf101 import layout, protocols, rules
from pipeline.manifest import ClipRecord

# The MLB setting (alpha, beta_max) the paper gives for UCF101; the trainer uses it where a run sets none
# (written into meta.json beside the shards). The authors' config file differs: docs/corpora/ucf101.md.
MLB_SETTINGS = {"raw": {"*": {"alpha": 2.0, "beta_max": 0.5}}}

# UCF101 settings of the MLB authors' reruns (kkontras/MCR at 338d370): MCR run.sh l. 104 (--l 0.001
# --multil 0.1); D&R λ 5 (run.sh; the D&R authors ran no UCF101)
MCR_SETTINGS = {"raw": {"*": {"mipd_weight": 0.001, "unimodal_weight": 0.1}}}
DNR_SETTINGS = {"raw": {"*": {"move_lambda": 5.0}}}

# The authors' preparation (datasets/UCF101/ of kkontras/MLB): 4 frames at 1 fps; audio at 16 kHz, its first
# channel, the first 3 s (4 frames - 1 seconds), librosa.stft(n_fft=512, hop_length=353), log(|S| + 1e-7).
STAGE_DEFAULTS = {
    "frames": {"fps": 1.0, "count": rules.MIN_FRAMES, "size": 224},
    "spectrograms": {
        "kind": "stft",
        "sample_rate": 16000,
        "seconds": float(rules.MIN_FRAMES - 1),
        "n_fft": 512,
        "hop_length": 353,
        "channel": "first",
    },
}


class UCF101(Corpus):
    name = layout.NAME
    label_names = layout.AUDIO_CLASSES
    media = MediaSpec(audio_in_video=True)  # the AVI's own MP3 stream
    protocols = protocols.PROTOCOLS
    manifests_dir = layout.MANIFESTS_DIR
    method_defaults: ClassVar[dict] = {"mlb": MLB_SETTINGS, "mcr": MCR_SETTINGS, "dnr": DNR_SETTINGS}
    layout_hint = f"{layout.VIDEO_DIR}/<Class>/v_<Class>_gXX_cYY.avi (and optionally {layout.LISTS_DIR}/)"
    stage_defaults: ClassVar[dict] = STAGE_DEFAULTS
    input_paths = ("raw",)
    input_paths_note = (
        "the paper ran UCF101 with the ResNet-18 encoders on spectrograms and frames only; UCF101 has no "
        "faces for the cached path's face crops"
    )

    def scan(self, root: Path) -> layout.UCF101Scan:
        return layout.scan_corpus(root)

    def validate(
        self, root: Path, clip: ClipSource, config: ValidationConfig, known_bad: dict[str, str]
    ) -> ClipRecord:
        return rules.validate_ucf101_clip(root, clip, self, config, known_bad)

    def check_protocol(self, protocol: str, partition: int) -> None:
        super().check_protocol(protocol, partition)
        if partition not in protocols.PARTITIONS:
            raise ValueError(
                f"index.partition={partition!r}: UCF101's official protocol has partitions 1-3 (the three "
                "official splits)"
            )

    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        return protocols.assign_official_splits(records, partition, seed)

    def check_layout(self, root: Path) -> list[LayoutCheck]:
        return layout.check_layout(root)


CORPUS = UCF101()
