"""Aggregate many training runs into one comparison table: mean ± std over folds or seeds.

A run is a folder with `metrics.json` as the trainer writes it. Runs are grouped by
(features, method, fusion); every numeric leaf of the metrics (e.g. `test.fused.accuracy`) is averaged
over the group's seeds/folds. Each group also says where its settings came from (`tuning` in its runs'
run.json, as `mlbpipe compare` records it): tuned (file, trial count) or untuned. Tables come out as Markdown
(for people), CSV and JSON (for programs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mlb.common.atomic import atomic_write_text

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
    # where the runs' settings came from: one run.json `tuning` record ({"tuned": ...}) when they agree,
    # {"mixed": [records]} when not, {} when not recorded
    settings: dict = field(default_factory=dict)


def load_runs(root: Path) -> list[dict]:
    """Every `metrics.json` under `root` that `mlbpipe train` wrote (sorted by path), with `tuning` from the
    run's run.json ({} when it has none)."""
    runs = []
    for path in sorted(Path(root).rglob("metrics.json")):
        run = json.loads(path.read_text())
        if not all(k in run for k in GROUP_KEYS) or "test" not in run:
            continue  # e.g. dvclive/metrics.json beside the trainer's own
        run["path"] = str(path.parent)
        run_json = path.parent / "run.json"
        info = json.loads(run_json.read_text()) if run_json.is_file() else {}
        run["tuning"] = (info.get("config") or {}).get("tuning") or {}
        runs.append(run)
    return runs


def group_settings(records: list[dict]) -> dict:
    """The runs' `tuning` records as one: the record when they agree, {"mixed": [records]} when not."""
    distinct = {json.dumps(r, sort_keys=True) for r in records}
    if len(distinct) == 1:
        return records[0]
    return {"mixed": [json.loads(r) for r in sorted(distinct)]}


def settings_label(settings: dict) -> str:
    """A group's `settings` in a table cell: `tuned (20 trials)`, `untuned`, `mixed` or `-` (not recorded)."""
    if not settings:
        return "-"
    if "mixed" in settings:
        return "mixed"
    if not settings.get("tuned"):
        return "untuned"
    return f"tuned ({settings.get('trials')} trials)" if settings.get("trials") is not None else "tuned"


def _settings_legend(summaries: list[GroupSummary]) -> str:
    files = sorted(
        {s.settings["file"] for s in summaries if s.settings.get("tuned") and s.settings.get("file")}
    )
    source = f" (from {', '.join(files)})" if files else ""
    return (
        f"Settings: tuned = lr, weight decay and the method's own settings tuned on validation{source}; "
        "untuned = the defaults; mixed = the group's runs differ; - = not recorded (e.g. `mlbpipe train` runs)."
    )


FIRST_METHODS = ("joint", "multi-loss", "mlb")  # tables and figures list these first, the rest by name


def _display_order(key: tuple) -> tuple:
    """(features, method, fusion) in reading order: Joint, Multi-Loss, MLB, then the others by name."""
    features, method, fusion = key
    rank = FIRST_METHODS.index(method) if method in FIRST_METHODS else len(FIRST_METHODS)
    return features, rank, method, fusion


def aggregate(runs: list[dict]) -> list[GroupSummary]:
    """Group runs by (features, method, fusion) and average every numeric metric over the group."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    records: dict[tuple, list[dict]] = {}
    for run in runs:
        key = tuple(str(run[k]) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(
            flatten({k: run[k] for k in ("validation", "test", "training") if k in run})
        )
        records.setdefault(key, []).append(run.get("tuning") or {})
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
        settings = group_settings(records[key])
        summaries.append(GroupSummary(dict(zip(GROUP_KEYS, key)), len(flats), mean, std, settings))
    return summaries


def _cell(s: GroupSummary, key: str, scale: float) -> str:
    if key not in s.mean:
        return "n/a"
    return f"{s.mean[key] * scale:.1f} ± {s.std[key] * scale:.1f}"


def to_markdown(summaries: list[GroupSummary]) -> str:
    """Accuracies and ECE in percent, mean ± std over the runs of each group."""
    head = ["features", "method", "fusion", "runs"] + [title for title, _ in TABLE_COLUMNS] + ["settings"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s.group["features"], s.group["method"], s.group["fusion"], str(s.runs)]
        # a "*-only" run trains one encoder alone: its fused output is untrained, so only that head counts
        alone = s.group["method"].endswith("-only")
        cells += ["-" if alone and ".fused." in key else _cell(s, key, 100.0) for _, key in TABLE_COLUMNS]
        cells.append(settings_label(s.settings))
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + "\n\nAccuracy, macro-F1 and ECE in %, mean ± std over seeds/folds; test metrics at the "
        "checkpoint selected on validation accuracy. "
        + _settings_legend(summaries)
        + "\n\n"
        + heads_markdown(summaries)
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
    head = list(GROUP_KEYS) + ["runs", "settings", "tuned_file"]
    writer.writerow(head + [f"{k}.{stat}" for k in keys for stat in ("mean", "std")])
    for s in summaries:
        row = [s.group[k] for k in GROUP_KEYS] + [
            s.runs,
            settings_label(s.settings),
            s.settings.get("file", ""),
        ]
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
