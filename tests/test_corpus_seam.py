"""A corpus is a plug-in: a toy corpus whose layout is unlike CREMA-D's (class folders of MP4 files that carry
their audio inside, a labelled segment per clip, groups that are source videos) is registered from this test
alone, and runs index -> frames + spectrograms -> shards_raw and two training steps without any change to a
stage, the engine or mlb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from helpers.media import make_mp4
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.corpora import register_corpus, unregister_corpus
from pipeline.corpora.base import ClipSource, Corpus, CorpusError, MediaSpec, Scan
from pipeline.manifest import ClipRecord, Reason, Segment, read_manifest
from pipeline.splits import assign_splits, random_group_split
from pipeline.store.shards import read_shard

pytestmark = pytest.mark.integration

CLASSES = ("bark", "bell", "horn")
FPS = 10  # the toy videos' frame i is a flat grey of level 8 * i: a frame's brightness says when it was taken


class ToyCorpus(Corpus):
    """`ROOT/<class>/<video>_<n>.mp4` (H.264 + AAC), `ROOT/segments.tsv`: `clip<TAB>start<TAB>duration`."""

    name = "toy"
    label_names = CLASSES
    media = MediaSpec(audio_in_video=True)
    protocols = ("random",)
    manifests_dir = Path(__file__).parent / "no-such-folder"  # the toy has no checked-in lists
    method_defaults: ClassVar[dict] = {"mlb": {"raw": {"*": {"alpha": 2.0, "beta_max": 1.0}}}}

    def scan(self, root: Path) -> Scan:
        if not (root / "segments.tsv").is_file():
            raise CorpusError(f"{root} has no segments.tsv")
        segments = {}
        for line in (root / "segments.tsv").read_text().splitlines():
            clip_id, start, duration = line.split("\t")
            segments[clip_id] = Segment(float(start), float(duration))
        clips = []
        for path in sorted(root.glob("*/*.mp4")):
            clip_id, label_name = path.stem, path.parent.name
            clips.append(
                ClipSource(
                    id=clip_id,
                    files={"video": [path.relative_to(root).as_posix()]},
                    label=CLASSES.index(label_name),
                    label_name=label_name,
                    group=clip_id.split("_")[0],  # clips cut from one source video never straddle splits
                    segment=segments.get(clip_id),
                    extra={"source": clip_id.split("_")[0]},
                )
            )
        return Scan(clips)

    def assign_splits(self, records: list[ClipRecord], protocol: str, partition: int, seed: int) -> str:
        groups = {r.group for r in records if r.group}
        assign_splits(
            records, random_group_split(groups, seed, {"train": 0.5, "validation": 0.25, "test": 0.25})
        )
        return f"random-{seed}"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """8 source videos x 2 clips of 3 s, one class each, plus a clip with no audio stream and one whose
    segment lies past its end."""
    root = tmp_path_factory.mktemp("toy")
    lines = []
    for video in range(8):
        label = CLASSES[video % 3]
        for n in range(2):
            clip_id = f"v{video:02d}_{n}"
            make_mp4(
                root / label / f"{clip_id}.mp4",
                seconds=3.0,
                fps=FPS,
                size=(48, 32),
                tone_hz=300 + 200 * (video % 3),
            )
            lines.append(f"{clip_id}\t1.0\t1.5")
    make_mp4(root / "bark" / "v08_0.mp4", seconds=3.0, fps=FPS, size=(48, 32), audio=False)
    make_mp4(root / "bell" / "v09_0.mp4", seconds=3.0, fps=FPS, size=(48, 32))
    lines += ["v08_0\t0.0\t3.0", "v09_0\t5.0\t2.0"]
    (root / "segments.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def prepared(toy_root, tmp_path_factory) -> Path:
    register_corpus(ToyCorpus())
    out = tmp_path_factory.mktemp("toy_out")
    result = CliRunner().invoke(
        app,
        ["prepare", "toy", "--root", str(toy_root), "--out", str(out), "--stages",
         "index,frames,spectrograms,shards_raw", "--size", "32", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    yield out
    unregister_corpus("toy")  # later modules in this process list the corpora (help texts, the CLI reference)


def test_the_toy_corpus_is_indexed_with_its_own_layout(prepared, toy_root):
    by_id = {r.id: r for r in read_manifest(prepared / "manifest.jsonl")}
    assert len(by_id) == 18
    good = by_id["v03_1"]
    assert (good.corpus, good.label_name, good.label, good.group) == ("toy", "bark", 0, "v03")
    assert good.media == {"audio": "bark/v03_1.mp4", "video": "bark/v03_1.mp4"}  # the video's own audio
    assert good.segment == Segment(1.0, 1.5) and good.probe["audio"]["sample_rate"] == 16000
    assert by_id["v08_0"].reason.startswith(Reason.NO_AUDIO_STREAM.says("bark/v08_0.mp4"))
    assert by_id["v09_0"].reason.startswith(f"{Reason.SEGMENT_OUTSIDE}:")
    splits = {r.group: r.split for r in by_id.values() if r.split}
    assert all(by_id[f"{g}_1"].split == s for g, s in splits.items() if f"{g}_1" in by_id)  # group-disjoint
    corpus = json.loads((prepared / "corpus.json").read_text())
    assert corpus == {"corpus": "toy", "label_names": list(CLASSES), "num_classes": 3, "protocol": "random-0",
                      "method_defaults": ToyCorpus.method_defaults, "input_paths": list(ToyCorpus.input_paths),
                      "input_paths_note": ToyCorpus.input_paths_note, "root": str(toy_root)}  # fmt: skip


def test_the_shards_take_the_corpus_from_the_manifest_and_frames_from_the_segment(prepared):
    folder = prepared / "shards" / "raw"
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["corpus"], meta["num_classes"], meta["label_names"]) == ("toy", 3, list(CLASSES))
    assert meta["config"]["protocol"] == "random-0" and meta["method_defaults"] == ToyCorpus.method_defaults
    samples = dict(s for tar in sorted(folder.glob("*.tar")) for s in read_shard(tar))
    assert len(samples) == 16
    frames = samples["v03_1"]["frames.npy"]  # [3, 32, 32, 3]: 1 fps inside [1.0, 2.5) s, padded
    assert [round(f.mean() / 8) for f in frames] == [10, 20, 20]
    assert samples["v03_1"]["json"]["group"] == "v03" and samples["v03_1"]["json"]["extra"] == {
        "source": "v03"
    }
    assert samples["v03_1"]["spec.npy"].shape == tuple(meta["fields"]["spec.npy"]["shape"])


def test_the_toy_shards_train_two_steps(prepared, tmp_path):
    from mlb.train import TrainConfig, train

    config = TrainConfig(data=prepared / "shards" / "raw", out=tmp_path / "run", features="raw", method="mlb",
                         size="tiny", epochs=1, max_steps=2, batch_size=4, device="cpu", dvclive=False)  # fmt: skip
    result = train(config)
    assert result["training"]["steps"] == 2 and result["method_params"] == {"alpha": 2.0, "beta_max": 1.0}
    assert np.array(result["test"]["fused"]["confusion_matrix"]).shape == (3, 3)
    assert np.isfinite(result["test"]["fused"]["accuracy"])


@pytest.mark.parametrize("name", ["cremad", "ave", "ucf101"])
def test_every_method_default_of_a_builtin_corpus_builds_its_balancer(name):
    """A corpus's `method_defaults` name real methods, input paths and settings: each entry builds."""
    from mlb.balancing import METHODS, build_balancer
    from pipeline.corpora import get_corpus

    for method, by_path in get_corpus(name).method_defaults.items():
        assert method in METHODS, method
        for path, by_fusion in by_path.items():
            assert path in ("raw", "cached"), (method, path)
            for params in by_fusion.values():
                build_balancer(method, **params)  # an unknown key or a bad value raises
