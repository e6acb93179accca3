"""docs/reproduce.md, run as written on a stand-in in CREMA-D's real layout: the DVC lines and the by-hand
lines, with three VAVL partitions. Each checks that the overrides took effect (root, protocol, partition),
that the folds share the partition-independent work, that compare aggregates the three folds with its
statistics, and that a wrong method setting is refused before any trial.

The lines run verbatim but for the corpus root, the trial count and the sizes: the test's own settings
(tiny models, small frames and crops, random-init extractors, one epoch) are laid over the paper's, as
`-S` overrides under DVC and in a copy of params.paper.yaml by hand."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.dvc import REPO, copy_repo, dvc, merge, stages_ran
from typer.testing import CliRunner

from pipeline.cli import app

pytestmark = pytest.mark.e2e

PAGE = REPO / "docs" / "reproduce.md"
ROOT = "/data/CREMA-D"  # the page's corpus root
# What the test lays over the paper's settings: a CPU's minute, not a GPU's days.
SMALL = {
    "workers": 1,
    "device": "cpu",
    "frames": {"size": 32},
    "faces": {"fps": 1, "crop_size": 64},
    "features": {"effb2": {"weights": "random", "image_size": 64}, "w2v2": {"model": "random-tiny"}},
    "protocol": {"train": {"size": "tiny", "epochs": 1, "batch_size": 16}},
}


def page_block(marker: str) -> list[str]:
    """The command lines of the page's fenced block between `<!-- marker -->` and `<!-- /marker -->`."""
    block = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", PAGE.read_text(), flags=re.DOTALL)
    assert block, f"{PAGE} has no {marker} block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and "```" not in line]


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    """{"a": {"b": 1}} -> ["++a.b=1"], for `dvc exp run -S`."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _dotted(value, f"{prefix}{key}.")
        else:
            value = f"'{value}'" if "," in str(value) else value  # unquoted, DVC reads a comma as a sweep
            out.append(f"++{prefix}{key}={value}")  # ++: set, whether the file has the key or not
    return out


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    """One clip of each of CREMA-D's 91 actors (every VAVL partition then has its three splits), with faces
    big enough for MTCNN."""
    root = tmp_path_factory.mktemp("real") / "CREMA-D"
    made = CliRunner().invoke(
        app,
        [
            "synth",
            "cremad",
            str(root),
            "--clips",
            "91",
            "--width",
            "160",
            "--height",
            "120",
            "--workers",
            "1",
        ],
    )
    assert made.exit_code == 0, made.output
    return root


def _check_folds(data: Path) -> None:
    """data/cremad was indexed on partition 1 of VAVL; its folds are partitions 1-3, each with its own
    splits and shards, and none holds per-clip work of its own."""
    described = json.loads((data / "corpus.json").read_text())
    assert described["protocol"] == "vavl-1"
    for fold in (1, 2, 3):
        folder = data / "folds" / str(fold)
        for path in ("raw", "cached"):
            meta = json.loads((folder / "shards" / path / "meta.json").read_text())
            assert meta["config"]["protocol"] == f"vavl-{fold}", (fold, path)
        assert json.loads((folder / "corpus.json").read_text())["root"] == described["root"]
        assert not (folder / "work").exists()
    assert {p.name for p in (data / "work").glob("*.h5")} == {
        "frames.h5",
        "spectrograms.h5",
        "faces.h5",
        "features.h5",
    }


def _check_comparison(runs: Path, methods: list[str]) -> None:
    for method in methods:
        folds = sorted(p.name for p in (runs / "raw" / method / "late-linear").iterdir() if p.is_dir())
        assert folds == ["fold1", "fold2", "fold3"], (method, folds)
    stats = (runs / "compare_stats.md").read_text()
    assert "| raw | late-linear | mlb | joint | 3 |" in stats
    # the real layout and protocol, but the published values are not for a stand-in
    assert "synthetic stand-in (SYNTHETIC.txt" in (runs / "compare_published.md").read_text()


def test_the_check_and_the_weights_lines(standin):
    """doctor runs on the copy and counts its clips; the weights lines need the network, so only the `hf`
    command they use is checked to exist in this environment."""
    (line,) = page_block("reproduce-check")
    argv = shlex.split(line.replace(ROOT, str(standin)))
    assert argv[0] == "mlbpipe"
    result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 0, result.output
    assert "91 of CREMA-D's 7442 clips" in result.output and "a synthetic stand-in" in result.output
    hf = [shlex.split(line) for line in page_block("reproduce-weights") if line.startswith("hf ")]
    assert hf == [["hf", "download", "facebook/wav2vec2-large-robust"]]
    venv_bin = Path(sys.executable).parent
    assert (
        subprocess.run([venv_bin / "hf", "download", "--help"], check=False, capture_output=True).returncode
        == 0
    )


def test_the_dvc_lines_run_the_three_folds(standin, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = copy_repo(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "repo"], cwd=repo, check=True)

    copy, run = page_block("reproduce-dvc")
    assert copy == "cp params.paper.yaml params.yaml" and run.startswith("dvc exp run ")
    shutil.copy(repo / "params.paper.yaml", repo / "params.yaml")
    small = {**SMALL, "protocol": {**SMALL["protocol"], "methods": "joint,mlb", "trials": 1}}
    extra = [a for o in _dotted(small) for a in ("-S", o)]
    argv = shlex.split(run.replace(ROOT, str(standin)))
    ran = stages_ran(dvc(repo, *argv[1:], *extra, "compare_tuned"))
    assert ran.count("frames@cremad") == 1 and "folds" in ran and ran[-1] == "compare_tuned", ran
    _check_folds(repo / "data" / "cremad")
    assert json.loads((repo / "data" / "cremad" / "corpus.json").read_text())["root"] == str(standin)
    _check_comparison(repo / "protocol" / "runs", ["joint", "mlb"])


def test_the_by_hand_lines_run_the_three_folds_and_refuse_a_wrong_setting(standin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paper = yaml.safe_load((REPO / "params.paper.yaml").read_text())
    Path("params.paper.yaml").write_text(yaml.safe_dump(merge(paper, SMALL)))
    runner = CliRunner()
    lines = page_block("reproduce-by-hand")
    assert [shlex.split(line)[1] for line in lines] == ["prepare", "prepare", "tune", "compare", "report"]

    # a method setting MLB does not have is refused before any trial, and leaves no tune folder
    tune = shlex.split(lines[2].replace("--trials 20", "--trials 1"))[1:]
    refused = runner.invoke(app, [*tune, "--param", "mlb.gamma=3"])
    assert refused.exit_code == 2 and "gamma" in refused.output, refused.output
    assert not Path("runs/tune").exists()

    for line in lines:
        argv = shlex.split(line.replace(ROOT, str(standin)).replace("--trials 20", "--trials 1"))
        assert argv[0] == "mlbpipe"
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (line, result.output)
    _check_folds(Path("data/cremad"))
    _check_comparison(Path("runs/protocol"), ["joint", "multi-loss", "mlb"])
    assert Path("runs/protocol/figures/report.md").is_file()
