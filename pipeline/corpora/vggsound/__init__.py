"""VGGSound (Chen, Xie, Vedaldi, Zisserman, 2020): 10 s clips of YouTube videos, one of about 300 sound
classes each, as a preset of the generic corpus (docs/corpora/vggsound.md).

A copy is `vggsound.csv` (no header: `YouTube id,start second,label,split`, split train or test) beside the
videos, anywhere under the root, named `<YouTube id>_<start:06d>.mp4` as the public copies have them (also
`<YouTube id>_<start>.mp4`, the unpadded name some loaders write). Every copy lacks some listed videos
(taken down from YouTube): those are counted in a note, not rejected one by one. The group of a clip is its
YouTube video; validation is drawn from the train groups (the CSV has none).
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.corpora.base import CorpusError, read_text_lines
from pipeline.corpora.generic import GenericCorpus, layout
from pipeline.corpora.generic.layout import SPLIT_NAMES, Listing, Row

NAME = "vggsound"
ANNOTATIONS = "vggsound.csv"
SOURCE = "the VGGSound page of Oxford's VGG (www.robots.ox.ac.uk/~vgg/data/vggsound/) or a mirror"


def clip_id(youtube_id: str, start: int) -> str:
    """`<YouTube id>_<start:06d>`: the clip's id and its file's stem in the public copies."""
    return f"{youtube_id}_{start:06d}"


def parse_rows(path: Path, shown: str) -> list[Row]:
    """Every row of vggsound.csv; a malformed one keeps its problem (file and line)."""
    rows = []
    for number, fields in enumerate(csv.reader(read_text_lines(path)), 1):
        if not any(f.strip() for f in fields):
            continue
        line = f"{shown}:{number}"
        fields = [f.strip() for f in fields]
        youtube_id = fields[0] if fields else ""
        row = Row(id=layout.safe_id(youtube_id) or line, line=line, video=None, group=youtube_id)
        if len(fields) != 4:
            row.problem = "expected 4 fields: YouTube id, start second, label, split"
        elif not fields[1].isdigit():
            row.problem = f"the start second {fields[1]!r} is not a whole number"
        elif fields[3] not in SPLIT_NAMES or not fields[2]:
            row.problem = f"the split {fields[3]!r} is not train or test" if fields[2] else "it has no label"
        else:
            row.id = clip_id(youtube_id, int(fields[1]))
            row.label, row.split = fields[2], SPLIT_NAMES[fields[3]]
        rows.append(row)
    return rows


class VGGSound(GenericCorpus):
    source = SOURCE

    def preset_settings(self) -> dict:
        return {"title": "VGGSound", "annotations": ANNOTATIONS}

    def read_rows(self, root: Path) -> Listing:
        path = root / (self.settings.annotations or ANNOTATIONS)
        if not path.is_file():
            raise CorpusError(
                f"{root} is not a VGGSound root: it has no {path.name} (YouTube id, start, label, split); put "
                f"the CSV from {SOURCE} there, or set layout.annotations"
            )
        rows = parse_rows(path, path.name)
        names = {}
        for row in rows:
            if row.problem is None:  # the padded name of the public copies, or the unpadded one
                youtube_id, start = row.id.rsplit("_", 1)
                names[row.id] = (row.id, f"{youtube_id}_{int(start)}")
        return layout.listed_rows(rows, layout.videos_by_stem(root), names, "VGGSound", path.name)


CORPUS = VGGSound(NAME)
