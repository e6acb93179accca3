"""Aggregate many training runs into one comparison table: mean ± std over folds or seeds.

A run is a folder with `metrics.json` as the trainer writes it. Runs are grouped by
(features, method, fusion); every numeric leaf of the metrics (e.g. `test.fused.accuracy`) is averaged
over the group's seeds/folds. Tables come out as Markdown (for people), CSV and JSON (for programs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from mlb.atomic import atomic_write_text

GROUP_KEYS = ("features", "method", "fusion")

# The columns of the human-readable table, in order: (title, dotted key into a run's flattened metrics).
TABLE_COLUMNS = (
    ("test acc", "test.fused.accuracy"),
    ("test macro-F1", "test.fused.macro_f1"),
    ("audio head acc", "test.unimodal.audio.accuracy"),
    ("video head acc", "test.unimodal.video.accuracy"),
    ("ECE", "test.fused.ece"),
    ("val acc", "validation.fused.accuracy"),
)


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a.b.c": value}; lists and strings are skipped."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


@dataclass
class GroupSummary:
    group: dict[str, str]  # features, method, fusion
    runs: int
    mean: dict[str, float]
    std: dict[str, float]  # sample std (ddof=1); 0 for a single run


def load_runs(root: Path) -> list[dict]:
    """Every `metrics.json` under `root` that `mlbpipe train` wrote (sorted by path)."""
    runs = []
    for path in sorted(Path(root).rglob("metrics.json")):
        run = json.loads(path.read_text())
        if not all(k in run for k in GROUP_KEYS) or "test" not in run:
            continue  # e.g. dvclive/metrics.json beside the trainer's own
        run["path"] = str(path.parent)
        runs.append(run)
    return runs


FIRST_METHODS = ("joint", "multi-loss", "mlb")  # tables and figures list these first, the rest by name


def _display_order(key: tuple) -> tuple:
    """(features, method, fusion) in reading order: Joint, Multi-Loss, MLB, then the others by name."""
    features, method, fusion = key
    rank = FIRST_METHODS.index(method) if method in FIRST_METHODS else len(FIRST_METHODS)
    return features, rank, method, fusion


def aggregate(runs: list[dict]) -> list[GroupSummary]:
    """Group runs by (features, method, fusion) and average every numeric metric over the group."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for run in runs:
        key = tuple(str(run[k]) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(
            flatten({k: run[k] for k in ("validation", "test", "training") if k in run})
        )
    summaries = []
    for key in sorted(groups, key=_display_order):
        flats = groups[key]
        names = sorted(set().union(*flats))
        mean, std = {}, {}
        for name in names:
            values = [f[name] for f in flats if name in f and math.isfinite(f[name])]
            if not values:
                continue
            m = sum(values) / len(values)
            mean[name] = m
            std[name] = (
                math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            )
        summaries.append(GroupSummary(dict(zip(GROUP_KEYS, key)), len(flats), mean, std))
    return summaries


def _cell(s: GroupSummary, key: str, scale: float) -> str:
    if key not in s.mean:
        return "n/a"
    return f"{s.mean[key] * scale:.1f} ± {s.std[key] * scale:.1f}"


def to_markdown(summaries: list[GroupSummary]) -> str:
    """Accuracies and ECE in percent, mean ± std over the runs of each group."""
    head = ["features", "method", "fusion", "runs"] + [title for title, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s.group["features"], s.group["method"], s.group["fusion"], str(s.runs)]
        # a "*-only" run trains one encoder alone: its fused output is untrained, so only that head counts
        alone = s.group["method"].endswith("-only")
        cells += ["-" if alone and ".fused." in key else _cell(s, key, 100.0) for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + "\n\nAccuracy, macro-F1 and ECE in %, mean ± std over seeds/folds; test metrics at the "
        "checkpoint selected on validation accuracy.\n\n" + heads_markdown(summaries)
    )


def heads_markdown(summaries: list[GroupSummary]) -> str:
    """Every head (fused and each unimodal one) of every group: test accuracy, macro-F1 and ECE."""
    head = ["features", "method", "fusion", "head", "test acc", "test macro-F1", "ECE"]
    lines = ["Per head (test, %, mean ± std over seeds/folds):", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for s in summaries:
        names = sorted({k.split(".")[2] for k in s.mean if k.startswith("test.unimodal.")})
        alone = s.group["method"].endswith("-only")
        for name, prefix in [("fused", "test.fused")] * (not alone) + [
            (m, f"test.unimodal.{m}") for m in names
        ]:
            cells = [s.group["features"], s.group["method"], s.group["fusion"], name]
            cells += [_cell(s, f"{prefix}.{metric}", 100.0) for metric in ("accuracy", "macro_f1", "ece")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(summaries: list[GroupSummary]) -> str:
    keys = sorted(set().union(*(s.mean for s in summaries))) if summaries else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(GROUP_KEYS) + ["runs"] + [f"{k}.{stat}" for k in keys for stat in ("mean", "std")])
    for s in summaries:
        row = [s.group[k] for k in GROUP_KEYS] + [s.runs]
        for k in keys:
            row += [f"{s.mean[k]:.6g}" if k in s.mean else "", f"{s.std[k]:.6g}" if k in s.std else ""]
        writer.writerow(row)
    return out.getvalue()


def to_json(summaries: list[GroupSummary]) -> str:
    return json.dumps([s.__dict__ for s in summaries], indent=1, sort_keys=True)


def to_metrics(summaries: list[GroupSummary]) -> str:
    """Nested {features: {method: {fusion: {column: mean}}}} for `dvc metrics show` / `dvc exp show`."""
    tree: dict = {}
    for s in summaries:
        leaf = (
            tree.setdefault(s.group["features"], {})
            .setdefault(s.group["method"], {})
            .setdefault(s.group["fusion"], {})
        )
        for title, key in TABLE_COLUMNS:
            if key in s.mean:
                leaf[title.replace(" ", "_").replace("-", "_")] = round(s.mean[key], 6)
    return json.dumps(tree, indent=1, sort_keys=True)


def write_tables(summaries: list[GroupSummary], out_dir: Path) -> dict[str, Path]:
    """Write compare.md, .csv, .json and compare_metrics.json into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "md": ("compare.md", to_markdown(summaries)),
        "csv": ("compare.csv", to_csv(summaries)),
        "json": ("compare.json", to_json(summaries)),
        "metrics": ("compare_metrics.json", to_metrics(summaries)),
    }
    paths = {}
    for name, (filename, text) in texts.items():
        paths[name] = out_dir / filename
        atomic_write_text(paths[name], text)
    return paths


# --- the runner: methods x fusion heads x seeds, one budget for all ----------------------------------


def run_dir_for(root: Path, features: str, method: str, fusion: str, seed: int, kind: str = "seed") -> Path:
    """RUNS/<features>/<method>/<fusion>/seed<k> (seeds on one data folder) or fold<k> (one data folder per
    fold)."""
    return Path(root) / features / method / fusion / f"{kind}{seed}"


def run_comparison(
    base,
    methods: list[str],
    fusions: list[str],
    seeds: list[int],
    root: Path,
    method_params: dict[str, dict] | None = None,
    log=print,
    *,
    fold_data: dict[int, Path] | None = None,
    tuned: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """Train every (method, fusion, seed or fold) with the same budget as `base` (an `mlb.train.TrainConfig`).

    Every run gets the same epochs, batch size and early stopping; only the method, its own hyper-parameters,
    the fusion head and the seed (or fold) change. Settings per run, later ones winning: the paper's lr and
    weight decay (or `base`'s), the tuned ones of `tuned` (`mlb.tune.read_tuned`: lr, weight_decay and the
    method's parameters for this input path, method and fusion), then `method_params[method]` and
    `method_params["shared"]` (lr, weight_decay) given by hand.

    Folds: with `fold_data` ({fold: shard folder}), each k of `seeds` is a fold trained with seed k on its own
    data, into RUNS/.../fold<k>; otherwise every seed trains on `base.data`, into RUNS/.../seed<k>.
    A run whose metrics.json exists is not redone; an interrupted one resumes from its last checkpoint. A
    method that refuses a fusion head (OGM-GE needs Late-Linear) is recorded as skipped with its reason.
    Returns (finished runs, skipped combinations).
    """
    import dataclasses

    from mlb.balancing import METHODS
    from mlb.train import train
    from mlb.tune import tuned_settings

    method_params = method_params or {}
    runs, skipped = [], []
    combos = [(m, f, s) for m in methods for f in fusions for s in seeds]
    kind = "fold" if fold_data is not None else "seed"
    for i, (method, fusion, seed) in enumerate(combos, 1):
        where = f"[{i}/{len(combos)}] {method} / {fusion} / {kind} {seed}"
        run_dir = run_dir_for(root, base.features, method, fusion, seed, kind)
        done = run_dir / "metrics.json"
        if done.is_file():
            log(f"{where}: done before, kept")
            runs.append({**json.loads(done.read_text()), "path": str(run_dir)})
            continue
        if method not in METHODS:
            raise ValueError(f"compare methods: unknown method {method!r}; choose from {sorted(METHODS)}")
        supported = METHODS[method].supported_fusions
        if supported is not None and fusion not in supported:  # e.g. OGM-GE needs Late-Linear's halves
            reason = f"{method} supports only {sorted(supported)}"
            skipped.append({"method": method, "fusion": fusion, "seed": seed, "reason": reason})
            log(f"{where}: skipped ({reason})")
            continue
        settings = {"lr": base.lr, "weight_decay": base.weight_decay, "method_params": {}}
        if tuned is not None:
            found = tuned_settings(tuned, base.features, method, fusion)
            if found is None:
                log(f"{where}: no tuned settings for it, using the defaults")
            else:
                settings |= {k: found[k] for k in ("lr", "weight_decay") if k in found}
                settings["method_params"] = dict(found.get("method_params") or {})
        by_hand = dict(method_params.get("shared", {})) | dict(method_params.get(method, {}))
        settings |= {k: by_hand.pop(k) for k in ("lr", "weight_decay") if k in by_hand}
        config = dataclasses.replace(
            base,
            method=method,
            fusion=fusion,
            seed=seed,
            fold=seed if fold_data is not None else None,
            data=fold_data[seed] if fold_data is not None else base.data,
            out=run_dir,
            resume=True,
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            method_params=settings["method_params"] | by_hand,
        )
        log(f"{where} -> {run_dir}")
        runs.append({**train(config), "path": str(run_dir)})
    return runs, skipped
