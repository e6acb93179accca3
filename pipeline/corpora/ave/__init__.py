"""AVE, the Audio-Visual Event dataset (Tian et al., ECCV 2018): 10 s YouTube videos, 28 event
categories, one labelled audio-visual event segment per row.

The plug-in: layout, row parsing and scanning in `layout`, the split protocol in `protocols`, the checked-in
category list in `manifests/ave/`; its synthetic stand-in lives beside it, in pipeline.standins.ave. What differs
from the MLB authors' code and why: docs/corpora/ave.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pipeline.corpora.ave import layout, protocols
from pipeline.corpora.base import Corpus, LayoutCheck, MediaSpec, Scan
from pipeline.manifest import ClipRecord

# The MLB authors' AVE run (kkontras/MLB print_results.sh: configs/AVE/res/MLB.json with --alpha 2.0 and no
# --tanh_mode) scales both modalities by k = 1 + tanh(alpha (r - 1)): Eq. 7 with beta = 2 on both sides,
# i.e. beta_max 2.0 in mlb.balancing.mlb's terms (docs/corpora/ave.md: the paper's table gives 1).
MLB_SETTINGS = {"raw": {"*": {"alpha": 2.0, "beta_max": 2.0}}}

# MCR's authors' AVE ResNet setting (kkontras/MCR at 338d370, run.sh l. 68: --l 0.01)
MCR_SETTINGS = {"raw": {"*": {"mipd_weight": 0.01}}}

# The authors' preprocessing (kkontras/MLB datasets/AVE/Video_Preprocessesing.py): frames at 1 fps inside
# the event, the first 4, 224 x 224; audio at 16 kHz cropped to the event, tiled to 10 s, clipped to
# [-1, 1], scipy.signal.spectrogram(nperseg=512, noverlap=353), log(S + 1e-7): [257, 1004].
STAGE_DEFAULTS = {
    "frames": {"fps": 1.0, "count": 4, "size": 224},
    "spectrograms": {"kind": "psd", "sample_rate": 16000, "seconds": 10.0, "n_fft": 512, "hop_length": 159},
}


class Ave(Corpus):
    name = layout.NAME
    label_names = layout.CATEGORIES
    media = MediaSpec(audio_in_video=True)  # the audio is the mp4's own AAC stream
    protocols = protocols.PROTOCOLS
    manifests_dir = layout.MANIFESTS_DIR
    method_defaults: ClassVar[dict] = {"mlb": MLB_SETTINGS, "mcr": MCR_SETTINGS}
    layout_hint = f"{layout.VIDEO_DIR}/ and {', '.join(layout.LIST_FILES)}"
    stage_defaults: ClassVar[dict] = STAGE_DEFAULTS
    input_paths = ("raw",)
    input_paths_note = (
        "the MLB paper ran only the ResNet-18 (raw) path on AVE: there are no authors' settings for the "
        "Conformer on frozen features, and AVE's videos are not face videos"
    )

    def scan(self, root: Path) -> Scan:
        return layout.scan_corpus(root)

    def fold_setting(self, protocol: str) -> str | None:
        return None  # one official split: the paper's three AVE runs are seeds

    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        return protocols.assign_ave_splits(records, protocol, partition, seed)

    def check_layout(self, root: Path) -> list[LayoutCheck]:
        return layout.check_layout(root)


CORPUS = Ave()
