"""The documented path from a real corpus copy: the paper's parameter set, the DVC lines of docs/reproduce.md
(and the README's copy of them) run on a stand-in in the real layout, and a stage refused when it is given
another root than the one indexed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.dvc import REPO, copy_repo, dvc, stages_ran
from typer.testing import CliRunner

from pipeline.cli import app

PAPER = REPO / "params.paper.yaml"


def doc_block(page: str, marker: str) -> list[str]:
    """The command lines of a page's fenced block between `<!-- marker -->` and `<!-- /marker -->`."""
    text = (REPO / page).read_text()
    block = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", text, flags=re.DOTALL)
    assert block, f"{page} has no {marker} block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and "```" not in line]


@pytest.mark.unit
def test_the_paper_parameters_are_the_demos_sections_with_the_papers_values():
    """Swapping params.paper.yaml in is one file: the same sections, each valid for its stage or the trainer."""
    from pipeline.cli.training import read_section
    from pipeline.corpora import get_corpus
    from pipeline.prepare import prepare_config

    paper, demo = yaml.safe_load(PAPER.read_text()), yaml.safe_load((REPO / "params.yaml").read_text())
    assert list(paper) == list(demo)
    assert paper["cached_corpora"]["cremad"]["root"] == paper["corpora"]["cremad"]["root"]
    config = prepare_config(get_corpus("cremad"), paper, {}, where=str(PAPER))
    assert (config.index.protocol, config.frames.size, config.faces.fps) == ("vavl", 224, None)
    assert config.features.effb2.weights != "random" and "random" not in config.features.w2v2.model
    for section, features in (("train", "raw"), ("train", "cached"), ("protocol.train", "raw")):
        values, _ = read_section(PAPER, section, features)
        assert "size" not in values and "epochs" not in values  # TrainConfig's: paper size, 100 epochs


@pytest.mark.integration
def test_a_stage_on_another_root_than_the_one_indexed_is_refused(synth_corpus, tmp_path):
    out, moved = tmp_path / "out", tmp_path / "elsewhere"
    shutil.copytree(synth_corpus, moved)
    runner = CliRunner()
    indexed = runner.invoke(app, ["prepare", "cremad", "--root", str(synth_corpus), "--out", str(out),
                                  "--stages", "index", "--quiet"])  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    frames = runner.invoke(app, ["prepare", "cremad", "--root", str(moved), "--out", str(out),
                                 "--stages", "frames", "--quiet"])  # fmt: skip
    assert frames.exit_code == 2, frames.output
    assert f"was indexed from {synth_corpus}, not {moved}" in frames.output
    assert not (out / "work" / "frames.h5").exists()


@pytest.mark.e2e
def test_the_documented_dvc_lines_take_the_real_root_protocol_and_partition(tmp_path):
    """docs/reproduce.md's lines, verbatim but for the corpus root (a stand-in in the real layout) and the target
    (the index stage: the later ones need the real extractors' weights)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = copy_repo(tmp_path)
    root = tmp_path / "CREMA-D"
    made = CliRunner().invoke(  # one clip per actor: every VAVL partition has its three splits
        app,
        ["synth", "cremad", str(root), "--clips", "91", "--width", "64", "--height", "48", "--workers", "1"],
    )
    assert made.exit_code == 0, made.output
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "repo"], cwd=repo, check=True)

    # the demo's params.yaml, overridden key by key (a YAML alias in the file made DVC drop these)
    overrides = [
        f"corpora.cremad.root={root}",
        "corpora.cremad.index.protocol=vavl",
        "corpora.cremad.index.partition=2",
    ]
    assert stages_ran(
        dvc(repo, "exp", "run", *[a for o in overrides for a in ("-S", o)], "index@cremad")
    ) == ["index@cremad"]
    assert _indexed(repo) == (str(root), "vavl-2")

    # the page's lines: the paper's parameter set, then the real root
    lines = doc_block("docs/reproduce.md", "reproduce-dvc")
    assert doc_block("README.md", "reproduce-dvc") == lines  # the README's short version is the same lines
    assert lines[0] == "cp params.paper.yaml params.yaml" and lines[1].startswith("dvc exp run ")
    shutil.copy(repo / "params.paper.yaml", repo / "params.yaml")
    argv = shlex.split(lines[1].replace("/data/CREMA-D", str(root)))
    assert stages_ran(dvc(repo, *argv[1:], "index@cremad")) == ["index@cremad"]
    assert _indexed(repo) == (str(root), "vavl-1")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["corpora"]["cremad"]["root"] == params["cached_corpora"]["cremad"]["root"] == str(root)


def _indexed(repo: Path) -> tuple[str, str]:
    """(the root, the protocol with its partition) data/cremad was indexed with, from corpus.json and every
    manifest record."""
    described = json.loads((repo / "data" / "cremad" / "corpus.json").read_text())
    manifest = [json.loads(line) for line in (repo / "data/cremad/manifest.jsonl").read_text().splitlines()]
    assert manifest and {r["protocol"] for r in manifest} == {described["protocol"]}
    return described["root"], described["protocol"]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["params.yaml", "params.paper.yaml"])
def test_the_params_files_have_no_yaml_alias(name):
    """`dvc exp run -S corpora.cremad.root=...` silently keeps the old value under a YAML anchor/alias."""
    events = yaml.parse((REPO / name).read_text())
    aliased = [e for e in events if isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None)]
    assert not aliased, f"{name}: YAML anchors or aliases at {[str(e.start_mark) for e in aliased]}"
