"""Corpus plug-ins from outside, for the tests: the example package of docs/corpora/adding.md
(`tests/helpers/plugin/`: the corpus `tones` and its stand-in) installed with pip into a folder of its own, and
hand-made packages beside it (a broken one, ...). mlbpipe finds them by their entry points once the folder is
on PYTHONPATH (a subprocess) or sys.path (this process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent / "plugin"


def install_example(site: Path) -> Path:
    """`pip install --target site` of the example package, offline (no index, no build isolation: setuptools
    comes from this environment), from a copy (a build writes beside its source); returns `site`."""
    source = site.parent / f"{site.name}-source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
    ]
    done = subprocess.run(
        [*pip, "--target", str(site), str(source)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def write_distribution(
    site: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]
):
    """An installed package as pip leaves it, by hand: `modules` ({file name: source}) and a dist-info
    naming the distribution `name` 1.0 and its `entry_points` ({group: {name: "module:attr"}})."""
    site.mkdir(parents=True, exist_ok=True)
    for file, source in modules.items():
        (site / file).write_text(source)
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    groups = [
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
        for group, points in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n".join(groups))


def install_broken(site: Path) -> None:
    """`mlbpipe-broken`: a corpus and a stand-in `broken` whose module fails on import, as a plug-in that lacks
    one of its own dependencies does."""
    points = {"broken": "mlbpipe_broken:PLUGIN"}
    write_distribution(
        site,
        "mlbpipe-broken",
        {"mlbpipe.corpora": points, "mlbpipe.standins": points},
        {"mlbpipe_broken.py": "import a_module_that_is_not_installed\n"},
    )


def with_site(site: Path) -> dict[str, str]:
    """The environment of a subprocess that sees the packages installed in `site`."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}
