"""`dvc repro` on a copy of the repository with a tiny synthetic corpus: the second repro does nothing, and
changing an STFT parameter reruns only the stages that depend on it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = {"synth": {"clips": 6, "size": "64x48"}, "frames": {"size": 32}, "workers": 1}


def _dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _set_params(path: Path, changes: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.integration
def test_dvc_repro_is_incremental(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "mlb", "manifests"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _set_params(repo / "params.yaml", TINY)

    # the ResNet path (the cached path's stages have their own tests)
    first = _dvc(repo, "repro", "shards_raw")
    assert _ran(first) == ["synth", "index", "frames", "spectrograms", "shards_raw"]
    shards = repo / "data" / "shards" / "raw"
    assert (shards / "sizes.json").is_file() and list(shards.glob("train-*.tar"))
    before = {p.name: p.read_bytes() for p in shards.iterdir()}

    second = _dvc(repo, "repro", "shards_raw")
    assert _ran(second) == [] and "up to date" in second

    _set_params(repo / "params.yaml", {"spectrograms": {"hop_length": 300}})
    third = _dvc(repo, "repro", "shards_raw")
    assert _ran(third) == ["spectrograms", "shards_raw"]
    assert before["sizes.json"] == (shards / "sizes.json").read_bytes()
    assert before["train-000000.tar"] != (shards / "train-000000.tar").read_bytes()  # T changed: 1 + 66150 // 300
