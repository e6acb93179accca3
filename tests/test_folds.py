"""The protocol's folds of a prepared folder (`mlbpipe prepare CORPUS --from DIR --folds 1,2,3`): each fold
its own splits and shards, every fold reading the folder's per-clip work, and `compare --folds` on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.manifest import ClipRecord, read_manifest, write_manifest
from pipeline.stages.index import IndexConfig, run_resplit

RAW = "index,frames,spectrograms,shards_raw"


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A stand-in with one clip of each of the 91 actors (so every VAVL partition has all three splits),
    prepared for the ResNet path on VAVL partition 1, then its folds 1-3."""
    from pipeline.standins.cremad import SynthConfig, synth_cremad

    base = tmp_path_factory.mktemp("folds")
    root, out = base / "CREMA-D", base / "cremad"
    synth_cremad(root, SynthConfig(clips=91, width=64, height=48, seed=0, progress=False))
    done = _invoke(
        "prepare", "cremad", "--root", root, "--out", out, "--stages", RAW, "--size", "32", "--quiet"
    )
    assert done.exit_code == 0, done.output
    frames = out / "work" / "frames.h5"
    before = frames.stat().st_mtime_ns
    folds = _invoke("prepare", "cremad", "--from", out, "--folds", "1,2,3", "--out", out / "folds", "--quiet")
    assert folds.exit_code == 0, folds.output
    assert frames.stat().st_mtime_ns == before  # the per-clip work is read, never redone
    return root, out


@pytest.mark.integration
def test_each_fold_has_its_partition_and_shares_the_prepared_work(prepared):
    root, out = prepared
    test_actors = []
    for fold in (1, 2, 3):
        folder = out / "folds" / str(fold)
        meta = json.loads((folder / "shards" / "raw" / "meta.json").read_text())
        described = json.loads((folder / "corpus.json").read_text())
        assert meta["config"]["protocol"] == described["protocol"] == f"vavl-{fold}"
        assert described["root"] == str(root) and described["prepared_from"] == str(out)
        assert not (folder / "work").exists() and not (folder / "shards" / "cached").exists()  # no features
        records = read_manifest(folder / "manifest.jsonl")
        test_actors.append({r.group for r in records if r.split == "test"})
        assert len(records) == 91 and {r.split for r in records} == {"train", "validation", "test"}
    assert len({frozenset(a) for a in test_actors}) == 3  # three different speaker-independent partitions
    # fold 1 is partition 1, which the folder itself was prepared with: the same shard bytes
    for tar in (out / "shards" / "raw").glob("*.tar"):
        assert (out / "folds" / "1" / "shards" / "raw" / tar.name).read_bytes() == tar.read_bytes()


@pytest.mark.integration
def test_compare_aggregates_the_three_folds_with_statistics(prepared, tmp_path):
    _, out = prepared
    runs = tmp_path / "runs"
    done = _invoke("compare", "--data", f"{out}/folds/{{fold}}", "--folds", "1,2,3", "--features", "raw",
                   "--methods", "joint,mlb", "--size", "tiny", "--epochs", "1", "--batch-size", "16",
                   "--device", "cpu", "--no-dvclive", "--out", runs)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (runs / "raw" / "mlb" / "late-linear").iterdir()) == [
        "fold1",
        "fold2",
        "fold3",
    ]
    stats = (runs / "compare_stats.md").read_text()
    # VAVL's three partitions share some test actors: neither one test set nor disjoint ones
    assert "| raw | late-linear | mlb | joint | 3 | overlapping | group |" in stats, stats
    predicted = json.loads(
        (runs / "raw" / "mlb" / "late-linear" / "fold1" / "test_predictions.json").read_text()
    )
    assert len(predicted["groups"]) == len(predicted["ids"]) and set(predicted["groups"]) <= {
        str(actor) for actor in range(1001, 1092)
    }  # the shards' records carry each clip's actor to the statistics


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, message",
    [
        (["--folds", "1,2"], "--folds needs --from"),
        (["--from", "x", "--folds", "1", "--partition", "2"], "does not go with --from"),
        (["--from", "x", "--folds", "1", "--root", "y"], "does not go with --from"),
        (["--from", "x", "--folds", "1,9"], "--folds 9: index.partition=9: VAVL has partitions 1-5"),
        (["--from", "x", "--folds", "1"], "x/work holds neither frames.h5 + spectrograms.h5 nor features.h5"),
    ],
)
def test_wrong_fold_settings_are_refused_before_any_work(tmp_path, args, message):
    result = CliRunner().invoke(app, ["prepare", "cremad", *args, "--out", str(tmp_path / "folds")])
    assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "folds").exists()


@pytest.mark.integration
def test_a_corpus_with_one_split_has_no_folds(tmp_path):
    result = _invoke("prepare", "ave", "--from", tmp_path, "--folds", "1,2,3", "--out", tmp_path / "folds")
    assert result.exit_code == 2 and "has one split" in result.output and "--seeds" in result.output


@pytest.mark.unit
def test_a_ucf101_fold_takes_its_official_split_from_the_records(tmp_path):
    """The split lists each record carries (`extra.lists`) survive the manifest: fold 2 is trainlist02 /
    testlist02, without reading the corpus again."""
    from pipeline.corpora import get_corpus

    corpus = get_corpus("ucf101")
    records = [
        ClipRecord(id=f"v_Archery_g{g:02d}_c01", corpus="ucf101", label=2, label_name="Archery",
                   group=f"Archery_g{g:02d}", extra={"lists": {"1": one, "2": two}})
        for g, one, two in ((1, "train", "test"), (2, "test", "train"), (3, "train", "train"))
    ]  # fmt: skip
    write_manifest(records, tmp_path / "manifest.jsonl")
    (tmp_path / "corpus.json").write_text(json.dumps({"corpus": "ucf101", "root": "/data/UCF101"}))
    fold, _ = run_resplit(corpus, tmp_path, tmp_path / "2", IndexConfig(protocol="official", partition=2))
    assert {r.group: r.split for r in fold}["Archery_g01"] == "test"
    assert {r.group: r.split for r in fold}["Archery_g02"] in ("train", "validation")
    assert {r.protocol for r in read_manifest(Path(tmp_path / "2" / "manifest.jsonl"))} == {
        "official-2-seed-0"
    }
