"""`mlbpipe demo` (`make demo`): the whole pipeline on the built-in synthetic corpus with `dvc repro`, stage by
stage.

Runs every stage of dvc.yaml in order (a stage already up to date is skipped by DVC), times each one,
then prints the comparison table, the phenomenon check (the weaker modality's encoder after joint
training against the same encoder trained alone) and where the figures are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stage_names(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """Top-level stage names in file order (dvc.yaml lists them upstream first); `dvc repro NAME` runs
    every instance of a foreach or matrix stage."""
    return list(yaml.safe_load(dvc_yaml.read_text())["stages"])


def run_stage(name: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", name], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def phenomenon(runs: Path, features: str, fusion: str = "late-linear") -> list[str]:
    """Unimodal head accuracies (test) of each method beside the encoders trained alone."""
    lines = []
    for method in ("audio-only", "video-only", "joint", "multi-loss", "mlb"):
        accs = {}
        for path in sorted((runs / features / method / fusion).glob("seed*/metrics.json")):
            test = json.loads(path.read_text())["test"]
            for m, head in test["unimodal"].items():
                accs.setdefault(m, []).append(head["accuracy"])
            accs.setdefault("fused", []).append(test["fused"]["accuracy"])
        if not accs:
            continue

        def mean(key: str, accs: dict = accs) -> str:
            return f"{100 * sum(accs[key]) / len(accs[key]):5.1f}" if key in accs else "  n/a"

        fused = "    -" if method.endswith("-only") else mean("fused")
        lines.append(
            f"  {method:<11} fused {fused}   audio head {mean('audio')}   video head {mean('video')}"
        )
    return lines


def main() -> int:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages call `python`
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TQDM_MININTERVAL", "5")  # fewer progress-bar lines in a log
    print(
        "mlbpipe demo: `dvc repro` on the built-in synthetic CREMA-D (random-init feature extractors: the "
        "cached-path numbers show the pipeline works, not what real weights give)\n",
        flush=True,
    )
    timings = []
    total = time.perf_counter()
    for name in stage_names():
        print(f"--- stage {name}", flush=True)
        timings.append((name, run_stage(name, env)))
    total = time.perf_counter() - total

    print("\nWall time per stage (s; a stage already up to date takes ~1 s):")
    for name, seconds in timings:
        print(f"  {name:<16} {seconds:7.1f}")
    print(f"  {'total':<16} {total:7.1f}")

    runs = ROOT / "runs"
    table = runs / "compare.md"
    if table.exists():
        print("\n" + table.read_text())
    for features in ("raw", "cached"):
        lines = phenomenon(runs, features)
        if lines:
            print(f"Unimodal heads on test, {features} input path (%; *-only = that encoder trained alone):")
            print("\n".join(lines) + "\n")
    figures = sorted((runs / "figures").glob("*.png"))
    if figures:
        print("Figures:")
        print("\n".join(f"  {p.relative_to(ROOT)}" for p in figures))
        print(f"Report: {(runs / 'figures' / 'report.md').relative_to(ROOT)}")
    return 0


def cli() -> None:
    """Run the whole pipeline (`dvc repro`) on the built-in synthetic corpus, stage by stage, and print each
    stage's wall time, the comparison table, the unimodal heads beside the encoders trained alone, and where
    the figures are. Needs no dataset, no weights and no network."""
    import typer

    raise typer.Exit(main())
