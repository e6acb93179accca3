"""`mlbpipe demo` (`make demo`): the whole pipeline on the built-in synthetic corpus with `dvc repro`, stage by
stage.

Runs every stage of dvc.yaml in order (a stage already up to date is skipped by DVC), times each one,
then prints the comparison table, the phenomenon check (the weaker modality's encoder after joint
training against the same encoder trained alone) and where the figures are.
"""

from __future__ import annotations

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
    """Unimodal head accuracies (test) of each method beside the encoders trained alone, each with its 95%
    bootstrap interval over the test set, resampling its groups of clips (mlb.analysis.stats.accuracy_interval)."""
    from mlb.analysis.compare import load_runs
    from mlb.analysis.stats import accuracy_interval

    lines = []
    by_method: dict[str, list[dict]] = {}
    for run in load_runs(runs / features) if (runs / features).is_dir() else []:
        if run["fusion"] == fusion:
            by_method.setdefault(run["method"], []).append(run)
    for method in ("audio-only", "video-only", "joint", "multi-loss", "mlb"):
        group = by_method.get(method)
        if not group:
            continue

        def cell(head: str, group: list[dict] = group, method: str = method) -> str:
            if head not in ("fused", *group[0]["test"]["unimodal"]) or (
                head == "fused" and method.endswith("-only")
            ):
                return f"{'-':>18}"
            try:
                mean, low, high = accuracy_interval(group, head, n_resamples=2000)
            except (FileNotFoundError, ValueError):  # runs from before per-clip predictions: the mean alone
                test = [r["test"]["fused"] if head == "fused" else r["test"]["unimodal"][head] for r in group]
                return f"{100 * sum(t['accuracy'] for t in test) / len(test):5.1f} {'':12}"
            return f"{100 * mean:5.1f} [{100 * low:4.1f}, {100 * high:5.1f}]"

        lines.append(
            f"  {method:<11} fused {cell('fused')}  audio head {cell('audio')}  video head {cell('video')}"
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
            print(
                f"Unimodal heads on test, {features} input path (%, with 95% bootstrap intervals over the test "
                "set's actors, each with all its clips; *-only = that encoder trained alone):"
            )
            print("\n".join(lines) + "\n")
    for stats in (runs / "compare_stats.md", ROOT / "protocol" / "runs" / "compare_stats.md"):
        if stats.exists():
            print(
                f"Paired differences against Joint and MLB ({stats.relative_to(ROOT)}):\n{stats.read_text()}"
            )
    print(
        "Read these with their intervals: the demo corpus has 80 test clips, so one clip is 1.25 points and most "
        "differences are not resolved. A rerun on this machine gives the same numbers bit for bit, but another "
        "machine's floating-point kernels give other single runs (differences of 10 points and more). The "
        "ranking of methods comes from the feature bench (docs/ranking-bench.md).\n"
    )
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
