"""The bench that can rank methods on a CPU: every method x {Late-Linear, Mid-MLP} x 5 seeds (and each encoder
trained alone, which Ensemble and Uni-Pre start from) on the synthetic feature corpus (`mlbpipe synth features`), then the fold table and the paired
statistics against Joint and MLB.

    python bench/bench_rank.py --out /tmp/rank            # synthesise, train everything, write the tables
    python bench/bench_rank.py --out /tmp/rank --report   # only aggregate what is there

Runs go two at a time, one thread each (the machine's 2 cores), through `mlb.experiment.sweep.run_comparison`, so a
killed bench resumes where it stopped. Writes OUT/runs/compare.{md,csv,json}, OUT/runs/compare_stats.{md,json},
OUT/bench.json (wall time, test-set size, the phenomenon figures) and OUT/phenomenon.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FUSIONS = ("late-linear", "mid-mlp")
SEEDS = (0, 1, 2, 3, 4)
# The training budget of every run (the same for all methods, as `mlbpipe compare` requires).
# in_memory and the eval batch only make it faster (the same batches as streaming).
BUDGET = {
    "size": "tiny",
    "epochs": 5,
    "batch_size": 64,
    "lr": 5e-3,
    "in_memory": True,
    "eval_batch_size": 512,
}


def all_methods(pretrained: bool = True) -> list[str]:
    """Joint, Multi-Loss, MLB, the others by name, then (with `pretrained`) the ones that start from the runs
    alone (Ensemble, Uni-Pre): last, so that every worker reaches them after the runs alone."""
    from mlb.balancing import METHODS

    first = ["joint", "multi-loss", "mlb"]
    rest = sorted(m for m in METHODS if m not in first)
    later = [m for m in rest if METHODS[m].needs_pretrained_encoders]
    return first + [m for m in rest if m not in later] + (later if pretrained else [])


def wait_for_alone_runs(runs: Path, seed: int, every: float = 2.0, limit: float = 3600.0) -> None:
    """Until both runs alone of `seed` have finished (the other worker may be training one); SystemExit after
    `limit` seconds (the worker training them failed: rerunning the bench resumes)."""
    from mlb.balancing.unipre import RUNS_ALONE

    alone = [runs / "cached" / m / "late-linear" / f"seed{seed}" / "metrics.json" for m in RUNS_ALONE]
    waited = 0.0
    while not all(p.is_file() for p in alone):
        if waited > limit:
            sys.exit(f"waited {limit:g} s for {', '.join(map(str, alone))}: rerun the same command to resume")
        time.sleep(every)
        waited += every


def combos(fusions_wanted=FUSIONS, pretrained: bool = True) -> list[tuple[str, str, int]]:
    """(method, fusion, seed) of the bench; a method that refuses a fusion is left out; the alone runs once
    (Late-Linear: their fused head is not used; Ensemble and Uni-Pre read them for every fusion)."""
    from mlb.balancing import METHODS

    out = []
    for method in all_methods(pretrained):
        supported = METHODS[method].supported_fusions
        fusions = ("late-linear",) if method.endswith("-only") else fusions_wanted
        for fusion in fusions:
            if supported is None or fusion in supported:
                out += [(method, fusion, seed) for seed in SEEDS]
    return out


def base_config(data: Path, runs: Path):
    from mlb.train import TrainConfig

    return TrainConfig(data=data, out=runs, features="cached", device="cpu", dvclive=False, **BUDGET)


def worker(out: Path, index: int, count: int, tuned: Path | None) -> None:
    """Train this worker's share of the combos (every count-th, so costly methods spread over workers)."""
    import torch

    from mlb.balancing import METHODS
    from mlb.experiment.sweep import run_comparison
    from mlb.experiment.tune import read_tuned

    torch.set_num_threads(1)
    data, runs = out / "shards" / "cached", out / ("runs_tuned" if tuned else "runs")
    tree = read_tuned(tuned) if tuned else None
    # the tuned bench leaves out Ensemble and Uni-Pre: tuning them needs the runs alone on the tuning seed
    mine = combos(("late-linear",) if tuned else FUSIONS, pretrained=not tuned)[index::count]
    for i, (method, fusion, seed) in enumerate(mine, 1):
        print(f"[worker {index}: {i}/{len(mine)}] {method} / {fusion} / seed {seed}", flush=True)
        if METHODS[method].needs_pretrained_encoders:
            wait_for_alone_runs(runs, seed)
        run_comparison(
            base_config(data, runs), [method], [fusion], [seed], runs, log=lambda *_: None, tuned=tree,
            tuned_file=str(tuned) if tuned else None,
            allow_untuned=method.endswith("-only"),  # the encoders alone are references, not tuned here
        )  # fmt: skip


def tune_worker(out: Path, index: int, count: int, trials: int) -> None:
    """Tune this worker's share of the methods on Late-Linear, into OUT/tune<index>/."""
    import torch

    from mlb.experiment.tune import TuneConfig, run_tune

    torch.set_num_threads(1)
    methods = [m for m in all_methods(pretrained=False) if not m.endswith("-only")][index::count]
    tune_dir = out / f"tune{index}"
    run_tune(base_config(out / "shards" / "cached", tune_dir), methods, ["late-linear"], tune_dir,
             TuneConfig(trials=trials, startup_trials=3, prune_after_epochs=2))  # fmt: skip


def run_workers(args, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--out", str(args.out), "--workers", str(args.workers), *extra]
    procs = [subprocess.Popen([*command, "--worker", str(i)], env=env) for i in range(args.workers)]
    if any(p.wait() != 0 for p in procs):
        sys.exit("a bench worker failed; rerun the same command to resume")


def phenomenon(runs: list[dict], weak: str, strong: str) -> dict:
    """The weak modality's head after each method (Late-Linear) beside its encoder trained alone, with the
    95% intervals over test clips."""
    from mlb.analysis.stats import accuracy_interval

    groups: dict[str, list[dict]] = {}
    for run in runs:
        if run["fusion"] == "late-linear":
            groups.setdefault(run["method"], []).append(run)
    table = {}
    for method, group in groups.items():
        row = {}
        for head in (weak, strong, "fused"):
            if head == "fused" and method.endswith("-only"):
                continue
            if head != "fused" and head not in group[0]["test"]["unimodal"]:
                continue
            row[head] = accuracy_interval(group, head, n_resamples=2000)
        table[method] = row
    return table


NAMES = {"joint": "Joint", "multi-loss": "Multi-Loss", "mlb": "MLB", "agm": "AGM", "dgl": "DGL", "gblending": "G-Blending",
         "mla": "MLA", "mmcosine": "MMCosine", "mmpareto": "MMPareto", "mslr": "MSLR", "ogm": "OGM (no GE)",
         "ogm-ge": "OGM-GE", "pmr": "PMR", "reconboost": "ReconBoost", "mcr": "MCR", "dnr": "D&R", "ensemble": "Ensemble",
         "uni-pre-frozen": "Uni-Pre frozen", "uni-pre-finetuned": "Uni-Pre fine-tuned"}  # fmt: skip


def versus(row: dict | None) -> str:
    """A cell of docs/ranking-bench.md's tables, from one `compare_stats` row: Δ [interval with retraining]
    verdict (Holm p), in points."""
    if row is None or row["mean_diff"] is None:
        return "-"
    interval = "" if row["ci_low"] is None else f" [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"
    p = "" if row["p_holm"] is None else f" (p {row['p_holm']:.2g})"
    return f"{100 * row['mean_diff']:+.1f}{interval} {row['verdict']}{p}"


def rank_table(runs_dir: Path) -> str:
    """The ranking bench's table (docs/ranking-bench.md): per method and fusion the mean ± std of the heads
    over the seeds, and the difference to Joint and to MLB with its interval with retraining, the verdict and its Holm-adjusted p
    (from compare.json and compare_stats.json, as `report` wrote them)."""
    summaries = json.loads((runs_dir / "compare.json").read_text())
    stats = {
        (r["fusion"], r["method"], r["baseline"]): r
        for r in json.loads((runs_dir / "compare_stats.json").read_text())["fused"]
    }

    def cell(s: dict, key: str) -> str:
        return f"{100 * s['mean'][key]:.1f} ± {100 * s['std'][key]:.1f}" if key in s["mean"] else "-"

    from mlb.analysis.stats import BASELINES

    against = [b for b in BASELINES if any(k[2] == b for k in stats)]  # the baselines this bench has
    versus_titles = ["vs Joint: Δ [95% CI] verdict (Holm p)"] + [f"vs {NAMES.get(b, b)}" for b in against[1:]]
    titles = ["method", "fusion", "fused test acc", "audio head", "video head", "ECE", *versus_titles]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for s in summaries:
        method, fusion = s["group"]["method"], s["group"]["fusion"]
        if method.endswith("-only"):
            modality = method.removesuffix("-only")
            heads = ["-", "-", "-", "-"]
            heads[0 if modality == "audio" else 1] = cell(s, f"test.unimodal.{modality}.accuracy")
            cells = [f"{modality} encoder alone", "-", "-", *heads[:2], "-", *["-"] * len(against)]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [NAMES.get(method, method), fusion, cell(s, "test.fused.accuracy")]
        cells += [
            cell(s, "test.unimodal.audio.accuracy"),
            cell(s, "test.unimodal.video.accuracy"),
            cell(s, "test.fused.ece"),
        ]
        cells += [versus(stats.get((fusion, method, baseline))) for baseline in against]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tuned_rank_table(out: Path) -> str:
    """The tuned bench's table (docs/ranking-bench.md): per method (Late-Linear) the tuned settings beside
    the authors' defaults, the best trial's validation accuracy, the fused test accuracy with the defaults (OUT/runs) and
    tuned (OUT/runs_tuned), the tuned video head, and the tuned differences to the tuned Joint and MLB."""
    import yaml

    from mlb.balancing import METHODS

    tuned = yaml.safe_load((out / "tuned_params.yaml").read_text())["cached"]

    def late_linear(path: Path) -> dict[str, dict]:
        summaries = json.loads(path.read_text())
        return {s["group"]["method"]: s for s in summaries if s["group"]["fusion"] == "late-linear"}

    default_runs = late_linear(out / "runs" / "compare.json")
    tuned_runs = late_linear(out / "runs_tuned" / "compare.json")
    stats = json.loads((out / "runs_tuned" / "compare_stats.json").read_text())["fused"]
    stats = {(r["method"], r["baseline"]): r for r in stats if r["fusion"] == "late-linear"}

    def acc(summary: dict | None, key: str) -> str:
        if summary is None or key not in summary["mean"]:
            return "-"
        return f"{100 * summary['mean'][key]:.1f} ± {100 * summary['std'][key]:.1f}"

    head = (
        "| method | tuned settings (authors' default) | val acc of the best trial | fused test acc, defaults "
        "| fused test acc, tuned | video head, tuned | tuned vs tuned Joint | tuned vs tuned MLB |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for method in [m for m in all_methods() if m in tuned and not m.endswith("-only")]:
        best = tuned[method]["late-linear"]
        settings = [f"lr {best['lr']:.2g} ({BUDGET['lr']:g})", f"wd {best['weight_decay']:.2g} (5e-6)"]
        defaults = METHODS[method]().__dict__
        for key, value in sorted(best.get("method_params", {}).items()):
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            settings.append(f"{key} {shown} ({defaults.get(key, '?')})")
        video = tuned_runs.get(method)
        video = f"{100 * video['mean']['test.unimodal.video.accuracy']:.1f}" if video else "-"
        cells = [NAMES.get(method, method), ", ".join(settings), f"{100 * best['val_accuracy']:.1f}"]
        cells += [
            acc(default_runs.get(method), "test.fused.accuracy"),
            acc(tuned_runs.get(method), "test.fused.accuracy"),
        ]
        cells += [video, versus(stats.get((method, "joint"))), versus(stats.get((method, "mlb")))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(table: dict, weak: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Joint, Multi-Loss, MLB, the others, then the encoder alone (the other encoder alone has no weak head)
    methods = [m for m in all_methods() if m in table and weak in table[m] and not m.endswith("-only")]
    methods += [f"{weak}-only"] * (f"{weak}-only" in table)
    means = [100 * table[m][weak][0] for m in methods]
    errors = [[100 * (table[m][weak][0] - table[m][weak][1]) for m in methods],
              [100 * (table[m][weak][2] - table[m][weak][0]) for m in methods]]  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 4))
    colours = ["tab:green" if m == f"{weak}-only" else "tab:blue" for m in methods]
    ax.bar(methods, means, yerr=errors, color=colours, capsize=3)
    alone = table.get(f"{weak}-only", {}).get(weak)
    if alone:
        ax.axhline(100 * alone[0], color="tab:green", linestyle="--", label=f"{weak} encoder trained alone")
        ax.legend()
    ax.set_ylabel(f"{weak} head test accuracy (%)")
    ax.set_title(f"The weak modality ({weak}) after each method, Late-Linear, 5 seeds (95% intervals)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, seconds: float | None) -> dict:
    from mlb.analysis.compare import aggregate, load_runs, write_tables
    from mlb.analysis.stats import write_stats

    runs_dir = out / "runs"
    runs = load_runs(runs_dir)
    write_tables(aggregate(runs), runs_dir)
    write_stats(runs, runs_dir)
    meta = json.loads((out / "shards" / "cached" / "meta.json").read_text())
    sizes = json.loads((out / "shards" / "cached" / "sizes.json").read_text())
    strong = meta["config"]["synth_features"]["strong"]
    weak = "video" if strong == "audio" else "audio"
    table = phenomenon(runs, weak, strong)
    figure(table, weak, out / "phenomenon.png")
    result = {
        "wall_seconds": seconds,
        "runs": len(runs),
        "test_clips": sum(n for name, n in sizes.items() if name.startswith("test-")),
        "weak": weak,
        "phenomenon": {
            m: {h: [round(100 * v, 2) for v in t] for h, t in row.items()} for m, row in table.items()
        },
    }
    if seconds is None and (out / "bench.json").exists():
        result["wall_seconds"] = json.loads((out / "bench.json").read_text()).get("wall_seconds")
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    return result


def tune_then_compare(args) -> None:
    """The protocol on the bench: tune every method (equal budget), then train its tuned settings."""
    import yaml

    from mlb.analysis.compare import aggregate, load_runs, write_tables
    from mlb.analysis.stats import write_stats

    started = time.perf_counter()
    run_workers(args, "--tune", str(args.tune))
    tuned: dict = {"cached": {}}
    for i in range(args.workers):
        part = yaml.safe_load((args.out / f"tune{i}" / "best_params.yaml").read_text())
        tuned["cached"] |= part["cached"]
    path = args.out / "tuned_params.yaml"
    path.write_text(yaml.safe_dump(tuned, sort_keys=True))
    tune_seconds = round(time.perf_counter() - started, 1)
    run_workers(args, "--tuned", str(path))
    runs_dir = args.out / "runs_tuned"
    runs = load_runs(runs_dir)
    write_tables(aggregate(runs), runs_dir)
    write_stats(runs, runs_dir)
    seconds = round(time.perf_counter() - started, 1)
    times = {"tune_seconds": tune_seconds, "wall_seconds": seconds, "trials_per_method": args.tune}
    (args.out / "tune_bench.json").write_text(json.dumps(times))
    print((runs_dir / "compare.md").read_text())
    print((runs_dir / "compare_stats.md").read_text())
    print(tuned_rank_table(args.out))
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only aggregate the runs already there")
    parser.add_argument("--tune", type=int, default=None, help="trials per method: tune, then train tuned")
    parser.add_argument("--tuned", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None and args.tune is not None:
        tune_worker(args.out, args.worker, args.workers, args.tune)
        return
    if args.worker is not None:
        worker(args.out, args.worker, args.workers, args.tuned)
        return
    if args.tune is not None:
        tune_then_compare(args)
        return
    seconds = None
    if not args.report:
        from pipeline.synth_features import FeatureSynthConfig, synthesize_features

        started = time.perf_counter()
        if not (args.out / "shards" / "cached" / "meta.json").exists():
            print(synthesize_features(args.out, FeatureSynthConfig()).describe(), flush=True)
        run_workers(args)
        seconds = round(time.perf_counter() - started, 1)
    result = report(args.out, seconds)
    print((args.out / "runs" / "compare.md").read_text())
    print((args.out / "runs" / "compare_stats.md").read_text())
    print(rank_table(args.out / "runs"))
    print(json.dumps({k: v for k, v in result.items() if k != "phenomenon"}, indent=1))


if __name__ == "__main__":
    main()
