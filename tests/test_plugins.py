"""A corpus from outside: the example package of docs/corpora/adding.md (corpus and stand-in `tones`), installed
beside mlbpipe with pip, is reached by its entry points from `mlbpipe synth`, `doctor` and `prepare` in fresh
processes, as a user runs them, and prepared end to end; it is loaded only when its name is asked for; a broken
or mis-declared plug-in beside it fails alone, in one line that names its package and the fix.
(`dvc repro` with the same plug-in: tests/test_dvc.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.plugins import EXAMPLE, install_broken, install_example, with_site, write_distribution
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.corpora import CorpusError, corpus_names, get_corpus
from pipeline.manifest import read_manifest
from pipeline.standins import standin_names
from pipeline.store.shards import read_shard

pytestmark = pytest.mark.integration

ADDING = Path(__file__).resolve().parents[1] / "docs" / "corpora" / "adding.md"

runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the example plug-in (pip-installed) and a broken one."""
    site = install_example(tmp_path_factory.mktemp("plugins") / "site")
    install_broken(site)
    return site


def mlbpipe(site, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.run(
        command, env=with_site(site), capture_output=True, text=True, timeout=600, check=False
    )


def test_an_installed_plug_in_is_synthesized_checked_and_prepared_end_to_end(site, tmp_path):
    root, out = tmp_path / "tones", tmp_path / "out"
    made = mlbpipe(site, "synth", "tones", str(root), "--groups", "4")
    assert made.returncode == 0, made.stderr
    assert f"wrote a stand-in to {root}" in made.stdout

    doctor = mlbpipe(site, "doctor", "--corpus", "tones", "--root", str(root))
    assert "corpus plug-in" in doctor.stdout and "tones from mlbpipe-tones 0.1.0" in doctor.stdout, (
        doctor.stdout
    )
    assert "fail  corpus root" not in doctor.stdout

    stages = "index,frames,spectrograms,shards_raw"
    prepared = mlbpipe(site, "prepare", "tones", "--root", str(root), "--out", str(out), "--stages", stages,
                       "--size", "32", "--quiet")  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 8 and all(r.status == "ok" for r in records), [r.reason for r in records]
    assert {r.label_name for r in records} == {"low", "high"} and {r.corpus for r in records} == {"tones"}
    assert {r.group: r.split for r in records if r.label_name == "low"} == {
        r.group: r.split for r in records if r.label_name == "high"
    }  # one group, one split
    meta = json.loads((out / "shards" / "raw" / "meta.json").read_text())
    assert (meta["corpus"], meta["label_names"], meta["config"]["protocol"]) == (
        "tones",
        ["low", "high"],
        "random-0",
    )
    samples = dict(s for tar in sorted((out / "shards" / "raw").glob("*.tar")) for s in read_shard(tar))
    assert len(samples) == 8 and samples["high_g01"]["frames.npy"].shape[1:] == (32, 32, 3)


def test_a_plug_in_is_listed_by_name_and_loaded_only_when_named(site):
    """`mlbpipe --help` and `prepare --help` (in a fresh process) list the installed corpora without importing
    one; `synth --help` lists the stand-ins, loading them (and leaving out the broken one)."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipeline.cli import app\n"
        "for args in ([], ['prepare']):\n"
        "    result = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'broken, cremad, generic, kinetics_sounds, tones, ucf101' in ' '.join(result.output.split()), result.output\n"
        "print(sorted(m for m in sys.modules if m.startswith('mlbpipe_')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=with_site(site), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    listed = mlbpipe(site, "synth", "--help")
    assert listed.returncode == 0, listed.stderr
    commands = re.findall(r"^  (\S+)", listed.stdout.split("Commands:", 1)[1], re.MULTILINE)
    assert commands == ["ave", "cremad", "kinetics_sounds", "ucf101", "vggsound", "features", "tones"], (
        listed.stdout
    )


@pytest.fixture
def on_path(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_broken_plug_in_fails_alone_in_one_line_naming_its_package(on_path, tmp_path):
    with pytest.raises(CorpusError) as caught:
        get_corpus("broken")
    message = str(caught.value)
    for part in ("'broken' does not load", "broken = mlbpipe_broken:PLUGIN", "ModuleNotFoundError",
                 "pip uninstall mlbpipe-broken"):  # fmt: skip
        assert part in message, message
    # the other corpora load as before (the good plug-in only by name here: once loaded, it would stay
    # registered in this process for the tests that follow)
    assert get_corpus("ucf101").name == "ucf101"
    assert {"broken", "tones", "cremad"} <= set(corpus_names()) and "tones" in standin_names()
    for args in (
        ["prepare", "broken", "--root", str(tmp_path), "--out", str(tmp_path / "out")],
        ["synth", "broken", str(tmp_path / "synthetic")],
        ["doctor", "--corpus", "broken", "--root", str(tmp_path)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "pip uninstall mlbpipe-broken" in lines[0], (args, result.output)
        assert lines[0].startswith(f"mlbpipe {args[0]}"), lines[0]
    assert not (tmp_path / "synthetic").exists()


def test_an_entry_point_must_give_a_plug_in_of_its_kind_under_its_own_name(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_distribution(
        site,
        "mlbpipe-odd",
        {"mlbpipe.corpora": {"odd": "mlbpipe_odd:CORPUS", "renamed": "mlbpipe_odd:RENAMED"}},
        {
            "mlbpipe_odd.py": "from pipeline.corpora import get_corpus\nCORPUS = 42\nRENAMED = get_corpus('ave')\n"
        },
    )
    write_distribution(site, "mlbpipe-odd-fork", {"mlbpipe.corpora": {"odd": "mlbpipe_odd:CORPUS"}}, {})
    write_distribution(site, "mlbpipe-cremad", {"mlbpipe.corpora": {"cremad": "mlbpipe_odd:CORPUS"}}, {})
    monkeypatch.syspath_prepend(str(site))
    assert type(get_corpus("cremad")).__name__ == "CremaD"  # a built-in name wins, the plug-in is not loaded
    with pytest.raises(
        CorpusError, match=r"'odd' is provided by more than one .*mlbpipe-odd, mlbpipe-odd-fork"
    ):
        get_corpus("odd")
    (next(site.glob("mlbpipe_odd_fork-*.dist-info")) / "entry_points.txt").unlink()
    with pytest.raises(CorpusError, match=r"'odd' gives a int, not a pipeline\.corpora\.base\.Corpus"):
        get_corpus("odd")
    with pytest.raises(CorpusError, match=r"'renamed' calls itself 'ave'.*must be the corpus's name"):
        get_corpus("renamed")
    with pytest.raises(CorpusError, match=r"unknown corpus 'nope'; choose one of .*mlbpipe\.corpora"):
        get_corpus("nope")


def test_the_docs_show_the_example_package_as_it_is_tested():
    """docs/corpora/adding.md shows every file of the example package whole, as these tests install it."""
    page = ADDING.read_text()
    files = [p for p in sorted(EXAMPLE.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) == 3
    for path in files:
        assert path.read_text() in page, f"{ADDING.name} does not show {path.relative_to(EXAMPLE)} as it is"
