"""CREMA-D (Cao et al., 2014): 7442 clips of 91 actors speaking 12 sentences with 6 emotions.

The plug-in: layout and naming in `layout`, split protocols in `protocols`, checked-in lists in
`manifests/cremad/`; its synthetic stand-in lives beside it, in pipeline.standins.cremad.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import ClassVar

from pipeline.corpora.base import Corpus, LayoutCheck, MediaSpec, Scan
from pipeline.corpora.cremad import layout, protocols
from pipeline.manifest import ClipRecord

# The MLB authors' settings (alpha, beta_max) on CREMA-D, per input path and fusion head: what the trainer
# uses when a run does not set them (written into meta.json beside the shards).
MLB_SETTINGS = {
    "raw": {
        "late-linear": {"alpha": 0.5, "beta_max": 10.0},
        "mid-mlp": {"alpha": 0.5, "beta_max": 5.0},
        "gated": {"alpha": 0.5, "beta_max": 10.0},
        "film": {"alpha": 0.5, "beta_max": 20.0},
        "tf": {"alpha": 0.5, "beta_max": 20.0},
    },
    "cached": {"*": {"alpha": 5.0, "beta_max": 2.0}},
}

# MCR's authors' CREMA-D settings (kkontras/MCR at 338d370, run.sh l. 18 ResNet, l. 50 Conformer): the ResNet
# column is the class's own default (λ_M 0.1, unimodal weight 0.01); the Conformer one weighs the unimodal
# losses 1 and turns the decoder term on (--multil 1 --lib 1)
MCR_SETTINGS = {"cached": {"*": {"unimodal_weight": 1.0, "ceb_weight": 1.0}}}

# The spectrogram the MLB authors' CREMA-D loader feeds the ResNet (kkontras/MLB at 357b5ce,
# datasets/CREMAD/CREMAD_Dataset.py, CremadDataset._get_spectrogram; configs/CREMA_D/ set sampling_rate 22050
# and no norm_type): 22.05 kHz, tiled and cut to 3 s, clipped to [-1, 1], STFT with n_fft 512 and hop 353,
# log(|S| + 1e-7), no Mel filterbank and no normalisation: [257, 188]. The paper's text says "log-Mel"; the code
# does not apply one (docs/corpora/cremad.md).
STAGE_DEFAULTS = {
    "spectrograms": {"kind": "stft", "sample_rate": 22050, "seconds": 3.0, "n_fft": 512, "hop_length": 353},
}


class CremaD(Corpus):
    name = layout.NAME
    label_names = layout.EMOTIONS
    # WAVs in the documented format; an FLV without its audio stream is one of the corpus's broken clips
    media = MediaSpec(audio_format=layout.EXPECTED_WAV, video_needs_audio_stream=True)
    protocols = protocols.PROTOCOLS
    manifests_dir = layout.MANIFESTS_DIR
    method_defaults: ClassVar[dict] = {"mlb": MLB_SETTINGS, "mcr": MCR_SETTINGS}
    layout_hint = f"{layout.WAV_DIR}/ and {layout.FLV_DIR}/"
    stage_defaults: ClassVar[dict] = STAGE_DEFAULTS
    title = "CREMA-D"
    source = layout.SOURCE

    def scan(self, root: Path) -> Scan:
        return layout.scan_corpus(root)

    def known_bad(self) -> dict[str, str]:
        return layout.load_known_bad(self.manifests_dir)

    def check_protocol(self, protocol: str, partition: int) -> None:
        super().check_protocol(protocol, partition)
        if protocol == "vavl" and partition not in protocols.VAVL_PARTITIONS:
            raise ValueError(f"index.partition={partition!r}: VAVL has partitions 1-5")

    def fold_setting(self, protocol: str) -> str | None:
        return "partition" if protocol == "vavl" else "seed"  # speaker-random: a draw per seed

    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        return protocols.assign_cremad_splits(records, protocol, partition, seed, self.manifests_dir)

    def check_layout(self, root: Path) -> list[LayoutCheck]:
        return layout.check_layout(root)

    def corpus_clips(self) -> set[str]:
        return _clip_ids()

    def protocol_clips(self, protocol: str, partition: int) -> tuple[str, set[str]] | None:
        if protocol != "vavl" or partition not in protocols.VAVL_PARTITIONS:
            return None  # speaker-random takes every clip
        return "VAVL", _vavl_clip_ids(partition)

    def stand_in(self, root: Path) -> str | None:
        return layout.stand_in(root)


@cache
def _clip_ids() -> frozenset[str]:
    return frozenset(layout.load_clip_ids())


@cache
def _vavl_clip_ids(partition: int) -> frozenset[str]:
    return frozenset(protocols.vavl_protocol(partition)[1])


CORPUS = CremaD()
