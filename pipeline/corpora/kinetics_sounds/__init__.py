"""Kinetics-Sounds (Arandjelović and Zisserman, 2017): the Kinetics classes that can be heard, as a preset of
the generic corpus (docs/corpora/kinetics_sounds.md).

A copy is laid out as the Kinetics copies of the CVD Foundation: `annotations/{train,val,test}.csv` (a header
row, then `label,youtube_id,time_start,time_end,split[,...]`) and the clips anywhere under the root, named
`<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`. Its classes: `layout.classes` (the list a paper used);
left out, every label the copy names, which fits a copy cut down to Kinetics-Sounds already. The papers
differ (31 to 34 classes): `mlbpipe doctor` warns outside that range. Listed clips the copy lacks are
counted in a note. The group of a clip is its YouTube video.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.corpora.base import CorpusError, LayoutCheck, read_text_lines
from pipeline.corpora.generic import GenericCorpus, layout
from pipeline.corpora.generic.layout import SPLIT_NAMES, Listing, Row

NAME = "kinetics_sounds"
ANNOTATIONS = "annotations"  # the folder of train.csv, val.csv, test.csv
LISTS = ("train.csv", "val.csv", "test.csv")
COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
CLASS_COUNTS = range(31, 35)  # what the papers use: 31 (OGM-GE, BalanceBenchmark) to 34 (the original)
SOURCE = "the Kinetics copies of the CVD Foundation (github.com/cvdfoundation/kinetics-dataset)"


def clip_id(youtube_id: str, start: int, end: int) -> str:
    """`<youtube_id>_<start:06d>_<end:06d>`: the clip's id and its file's stem in the public copies."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def parse_list(path: Path, shown: str) -> list[Row]:
    """Every row of one Kinetics annotation CSV; a malformed one keeps its problem (file and line)."""
    reader = csv.reader(read_text_lines(path))
    header = [name.strip() for name in next(reader, [])]
    if not set(COLUMNS) <= set(header):
        raise CorpusError(f"{shown}: its header {','.join(header)!r} lacks one of {','.join(COLUMNS)}")
    rows = []
    for number, fields in enumerate(reader, 2):
        if not any(f.strip() for f in fields):
            continue
        line = f"{shown}:{number}"
        values = dict(zip(header, (f.strip() for f in fields), strict=False))
        youtube_id = values.get("youtube_id", "")
        row = Row(id=layout.safe_id(youtube_id) or line, line=line, video=None, group=youtube_id)
        start, end, split = values.get("time_start", ""), values.get("time_end", ""), values.get("split", "")
        if len(fields) != len(header):
            row.problem = "its number of fields differs from the header's"
        elif not (start.isdigit() and end.isdigit()):
            row.problem = f"time_start {start!r} and time_end {end!r} are not whole seconds"
        elif split not in SPLIT_NAMES or not values["label"]:
            row.problem = f"the split {split!r} is not train, val or test" if values["label"] else "no label"
        else:
            row.id = clip_id(youtube_id, int(start), int(end))
            row.label, row.split = values["label"], SPLIT_NAMES[split]
        rows.append(row)
    return rows


class KineticsSounds(GenericCorpus):
    source = SOURCE

    def preset_settings(self) -> dict:
        return {"title": "Kinetics-Sounds", "annotations": ANNOTATIONS}

    def read_rows(self, root: Path) -> Listing:
        folder = root / (self.settings.annotations or ANNOTATIONS)
        found = [folder / name for name in LISTS if (folder / name).is_file()]
        if not found:
            raise CorpusError(
                f"{root} is not a Kinetics root: {folder} holds none of {', '.join(LISTS)}; get a copy from "
                f"{SOURCE}, or set layout.annotations to the folder of its CSV files"
            )
        rows = [row for path in found for row in parse_list(path, f"{folder.name}/{path.name}")]
        if self._classes is not None:  # a whole Kinetics copy: only the chosen classes are clips
            rows = [row for row in rows if row.problem is not None or row.label in self._classes]
        where = f"{folder.name}/"
        return layout.listed_rows(rows, layout.videos_by_stem(root), {}, "Kinetics-Sounds", where)

    def check_layout(self, root: Path) -> list[LayoutCheck]:
        checks = super().check_layout(root)
        if checks[0].name != "corpus root" and checks[0].name != "corpus clips":
            count = len(self.label_names)
            checks.append(
                LayoutCheck(
                    "corpus classes",
                    count in CLASS_COUNTS,
                    f"{count} classes (Kinetics-Sounds has 31 to 34, by paper; set layout.classes to the list "
                    "you follow)",
                    warn_only=True,
                )
            )
        return checks


CORPUS = KineticsSounds(NAME)
