"""A copy of the repository that DVC can run in, and DVC run from the tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def dvc(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`dvc ARGS` in `cwd` (in `env`, default this process's environment); returns what it printed."""
    env = {
        **(os.environ if env is None else env),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def stages_ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def set_params(path: Path, changes: dict) -> None:
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), changes), sort_keys=False))


def copy_repo(tmp_path: Path) -> Path:
    """What `dvc repro` needs of the repository, in a fresh folder (the caller runs `git init`)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "mlb", "manifests"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", "params.paper.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    return repo
