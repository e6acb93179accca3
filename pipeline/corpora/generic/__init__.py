"""The generic corpus: a user's own audio-visual corpus, prepared with no code. Its clips are videos (with
their audio stream) or separate audio and video files, listed by a CSV / TSV or laid out in class folders
(pipeline.corpora.generic.layout); its splits are the copy's own or a seeded group-disjoint draw
(pipeline.corpora.generic.protocols). Clips go through the same validation as the built-in corpora's.

It is configured in params.yaml under the name the user gives it (docs/corpora/adding.md):

    corpora:
      mycorpus:
        corpus: generic
        root: data/mycorpus
        layout: {annotations: labels.csv, classes: [dog, cat, car]}

and `mlbpipe prepare generic --root DIR` prepares a folder with its defaults (`annotations.csv` or class
folders). The presets of known corpora are generic corpora with their own annotation format and class list.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.corpora.base import Corpus, CorpusError, LayoutCheck, MediaSpec, Scan
from pipeline.corpora.generic import layout, protocols
from pipeline.corpora.generic.layout import LayoutSettings
from pipeline.manifest import ClipRecord
from pipeline.params import ParamsError, from_mapping

NAME = "generic"

# What a user would expect of a corpus nobody has tuned for: the paper's 3 frames at 1 fps, 224 px, and a
# 80-band log-Mel of the first 3 s (as long as the frames span) at 16 kHz, 25 ms windows every 10 ms.
STAGE_DEFAULTS = {
    "frames": {"fps": 1.0, "count": 3, "size": 224},
    "spectrograms": {"kind": "mel", "sample_rate": 16000, "seconds": 3.0, "n_fft": 400, "hop_length": 160},
}


class GenericCorpus(Corpus):
    """A corpus described by its `LayoutSettings`; `name` is the one params.yaml gives it."""

    protocols = protocols.PROTOCOLS
    manifests_dir = Path(__file__).resolve().parents[3] / "manifests" / NAME  # none shipped: all is in params
    layout_hint = (
        "an annotations.csv (path,label[,split,group,start,end]) or class folders <label>/<clip>.mp4"
    )
    stage_defaults = STAGE_DEFAULTS

    def __init__(self, name: str = NAME, settings: LayoutSettings | None = None):
        self.name = name
        self.settings = settings or LayoutSettings(**self.preset_settings())
        self.title = self.settings.title or name
        self.media = MediaSpec(audio_in_video=self.settings.audio == "stream")
        self.method_defaults = self.settings.method_defaults
        self.input_paths = ("raw", "cached") if self.settings.faces else ("raw",)
        self.input_paths_note = "" if self.settings.faces else f"corpora.{name}.layout.faces is false"
        # the labels: configured, else those of the last scan (or, for a fold, of its records)
        self._classes = layout.read_class_list(self.settings.classes)
        self.label_names = self._classes or ()

    def configured(self, name: str, settings: dict, where: str) -> GenericCorpus:
        merged = {**self.preset_settings(), **settings}
        try:
            return type(self)(name, from_mapping(LayoutSettings, merged, f"{where}: corpora.{name}.layout"))
        except ParamsError as err:
            raise CorpusError(str(err)) from None

    def preset_settings(self) -> dict:
        """The layout settings a preset gives, under those of params.yaml ({}: the generic corpus)."""
        return {}

    def read_rows(self, root: Path) -> layout.Listing:
        """Every clip of the copy as a row: a preset reads its corpus's own annotation format here."""
        return layout.generic_rows(root, self.settings, self.name)

    def scan(self, root: Path) -> Scan:
        if not root.is_dir():
            raise CorpusError(
                f"corpus root {root} does not exist or is not a folder; pass --root PATH to the folder that "
                "holds the clips"
            )
        scan, labels = layout.scan_rows(root, self.read_rows(root), self.settings, self._classes)
        self.label_names = labels.names
        return scan

    def stand_in(self, root: Path) -> str | None:
        marker = root / layout.STAND_IN_MARKER
        return f"{layout.STAND_IN_MARKER}, written by mlbpipe synth" if marker.is_file() else None

    def fold_setting(self, protocol: str) -> str | None:
        return "seed"  # random: the draw; given: the validation drawn from train where the copy gives none

    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        if not self.label_names:  # a fold of a prepared folder: no scan, the labels are the records'
            named = {r.label: r.label_name for r in records if r.label is not None}
            self.label_names = tuple(named[i] for i in sorted(named))
        fractions = {"validation": self.settings.validation, "test": self.settings.test}
        return protocols.assign_generic_splits(records, protocol, seed, fractions, self.name)

    def check_layout(self, root: Path) -> list[LayoutCheck]:
        if not root.is_dir():
            return [
                LayoutCheck("corpus root", False, f"corpus root {root} does not exist or is not a folder")
            ]
        try:
            listing = self.read_rows(root)
            scan, labels = layout.scan_rows(root, listing, self.settings, self._classes)
        except CorpusError as err:
            return [LayoutCheck("corpus clips", False, str(err))]
        self.label_names = labels.names
        return layout.check_layout(root, scan, labels.names, listing.where)


CORPUS = GenericCorpus()
