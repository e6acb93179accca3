"""Is one method's test accuracy really higher than another's? Paired bootstrap intervals over test clips.

Every run of `mlbpipe compare` writes `RUN/test_predictions.json`: the class each head predicted for every
test clip. Two methods trained on the same fold (same data split and seed) saw the same test clips, so
their predictions can be compared clip by clip: per clip, `correct_a - correct_b` is 1, 0 or -1.

- The statistic is the mean over folds of each fold's mean difference (every fold weighs the same, as in
  the mean ± std tables of `mlb.analysis.compare`); in points of accuracy it is the mean accuracy difference.
- Its interval is a stratified paired bootstrap: the corpus's groups of test clips (CREMA-D's actors, AVE's
  videos, UCF101's groups: `groups` in test_predictions.json, from the shards' records) are resampled with
  replacement within each fold, with all their clips, the same for both methods (that is what "paired"
  means); folds are kept as they are, and the interval is the percentile interval of the resampled
  statistic. Clips of one group are correlated (a method that gets one actor right gets a dozen clips
  right together), so resampling clips as if independent gives intervals too narrow by up to the square
  root of the group size. `unit="clip"` resamples clips instead, and so do runs that recorded no groups.
  The interval says how much the difference could move if the test groups had been drawn again; it does
  not cover the spread from retraining on new folds.
- The verdict: "better" when the whole interval is above 0, "worse" when it is below, else "not resolved".

`accuracy_interval` does the same for one method's mean accuracy (per clip: correct 1 or 0), for the error
bars of Figure 3. numpy and scipy only: this module never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlb.analysis.compare import FIRST_METHODS, group_settings, settings_label

PREDICTIONS = "test_predictions.json"

# Resampled indices are drawn in chunks of at most this many, so 10000 resamples of 5000 clips need
# ~30 MB at a time instead of 400 MB.
CHUNK_ELEMENTS = 1 << 22
DISCRETE_VALUES = 16  # at most this many distinct values: resample value counts (see _resampled_means)


def _check_settings(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")


def paired_bootstrap(
    diffs_by_fold: Sequence[np.ndarray],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    groups_by_fold: Sequence[Sequence] | None = None,
) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean over folds of the per-fold mean of `diffs_by_fold`.

    Each array holds one fold's per-clip values (paired differences, or 0/1 correctness). Clips are
    resampled with replacement within each fold, folds are not resampled; (low, high) is the percentile
    interval of the resampled statistic at `confidence`. With one fold this is the ordinary percentile
    bootstrap of the mean. With `groups_by_fold` (each clip's group, per fold), whole groups are resampled
    instead (a cluster bootstrap: a resampled fold's mean is its drawn groups' clip sum over their clip
    count). The same inputs and `seed` give the same interval.
    """
    _check_settings(n_resamples, confidence)
    if isinstance(diffs_by_fold, np.ndarray) and diffs_by_fold.ndim == 1:
        raise ValueError("diffs_by_fold must be a sequence of per-fold arrays, got one flat array")
    folds = [np.asarray(d, dtype=float) for d in diffs_by_fold]
    if not folds:
        raise ValueError("diffs_by_fold is empty: at least one fold is needed")
    for i, d in enumerate(folds):
        if d.ndim != 1 or d.size == 0:
            raise ValueError(f"diffs_by_fold[{i}] must be a non-empty 1-D array, got shape {d.shape}")
        if not np.all(np.isfinite(d)):
            raise ValueError(f"diffs_by_fold[{i}] holds NaN or infinite values")

    if groups_by_fold is not None and len(groups_by_fold) != len(folds):
        raise ValueError(f"groups_by_fold has {len(groups_by_fold)} folds, diffs_by_fold {len(folds)}")
    estimate = float(np.mean([d.mean() for d in folds]))
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_resamples)
    for i, d in enumerate(folds):
        if groups_by_fold is None:
            stats += _resampled_means(d, n_resamples, rng)
        else:
            stats += _resampled_group_means(d, groups_by_fold[i], n_resamples, rng)
    stats /= len(folds)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return estimate, float(low), float(high)


def _resampled_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of the 1-D array `d` -> [n_resamples].

    Per-clip differences (-1, 0, 1) and correctness (0, 1) take few values: a resample is then fully
    described by how often it drew each value, a multinomial draw (the same distribution as drawing
    indices, at a fraction of the cost for thousands of clips). Other data: indices, drawn in chunks."""
    values, counts = np.unique(d, return_counts=True)
    if values.size <= DISCRETE_VALUES:
        draws = rng.multinomial(d.size, counts / d.size, size=n_resamples)  # [R, K] counts per value
        return draws @ values / d.size
    chunk = max(1, CHUNK_ELEMENTS // d.size)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[start : start + size] = d[rng.integers(0, d.size, size=(size, d.size))].mean(axis=1)
    return means


def _resampled_group_means(
    d: np.ndarray, groups: Sequence, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of `n_resamples` cluster resamples of `d` -> [n_resamples]: the G groups drawn with replacement
    (how often each is drawn: a multinomial draw), each bringing all its clips."""
    if len(groups) != d.size:
        raise ValueError(f"{len(groups)} groups for {d.size} clips")
    _, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)  # [N] group of each clip
    sums = np.bincount(index, weights=d)  # [G]
    counts = np.bincount(index).astype(float)  # [G]
    g = counts.size
    chunk = max(1, CHUNK_ELEMENTS // g)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        drawn = rng.multinomial(g, np.full(g, 1.0 / g), size=size)  # [R, G] times each group is drawn
        means[start : start + size] = (drawn @ sums) / (drawn @ counts)
    return means


# --- runs and their predictions ---------------------------------------------------------------------


def fold_of(run: dict) -> int:
    """The run's fold: `fold` in metrics.json, or `seed` for runs written before folds were recorded."""
    for key in ("fold", "seed"):
        if run.get(key) is not None:
            return int(run[key])
    raise ValueError(f"run {run.get('path', '?')} has neither 'fold' nor 'seed' in its metrics.json")


def load_predictions(
    run_dir: Path | str, head: str = "fused"
) -> tuple[list[str], np.ndarray, np.ndarray, list[str] | None]:
    """(clip ids, labels, predicted classes of `head`, each clip's group) from `run_dir/test_predictions.json`.

    `head` is "fused" or a modality name ("audio", "video"). The groups are None when the run recorded none
    (runs written before they were, or shards whose records have none). Raises FileNotFoundError when the
    run has no predictions file, ValueError when the file is malformed.
    """
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"no {PREDICTIONS} in {run_dir}")
    data = json.loads(path.read_text())
    try:
        ids, labels = [str(i) for i in data["ids"]], np.asarray(data["label"], dtype=int)
        if head == "fused":
            predicted = data["fused"]
        elif head in data.get("unimodal", {}):
            predicted = data["unimodal"][head]
        else:
            raise ValueError(f"{path}: no head {head!r}; it has fused and {sorted(data.get('unimodal', {}))}")
        predicted = np.asarray(predicted, dtype=int)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a predictions file ({err!r}); expected ids, label, fused, unimodal")
    if not (len(ids) == labels.size == predicted.size) or labels.ndim != 1 or predicted.ndim != 1:
        raise ValueError(f"{path}: ids, label and {head} must be lists of the same length")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: clip ids are not unique")
    groups = data.get("groups")
    if not groups or any(g is None for g in groups) or len(groups) != len(ids):
        groups = None
    return ids, labels, predicted, None if groups is None else [str(g) for g in groups]


def _by_fold(runs: list[dict]) -> dict[int, dict]:
    """{fold: run}; two runs on the same fold (of one method) are an error."""
    out: dict[int, dict] = {}
    for run in runs:
        fold = fold_of(run)
        if fold in out:
            raise ValueError(f"two runs on fold {fold}: {out[fold].get('path')} and {run.get('path')}")
        out[fold] = run
    return out


def per_fold_differences(runs_a: list[dict], runs_b: list[dict], head: str = "fused") -> list[dict]:
    """Pair runs of two methods by fold and compare their predictions clip by clip.

    Runs are dicts as `mlb.analysis.compare.load_runs` returns them (with "path"). Only folds that both lists have
    are used, in fold order. Per fold: {"fold", "clips", "acc_a", "acc_b", "diff" (acc_a - acc_b),
    "correct_diff" (per clip, in run a's clip order: correct_a - correct_b), "groups" (each clip's group in
    the same order, or None when neither run recorded groups)}. Rows are matched by clip id; different clip
    sets or labels raise ValueError naming both run folders.
    """
    a_by_fold, b_by_fold = _by_fold(runs_a), _by_fold(runs_b)
    out = []
    for fold in sorted(set(a_by_fold) & set(b_by_fold)):
        dir_a, dir_b = a_by_fold[fold]["path"], b_by_fold[fold]["path"]
        ids_a, label_a, pred_a, groups_a = load_predictions(dir_a, head)
        ids_b, label_b, pred_b, groups_b = load_predictions(dir_b, head)
        if set(ids_a) != set(ids_b):
            only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
            raise ValueError(
                f"fold {fold}: {dir_a} and {dir_b} predicted different test clips "
                f"({len(only_a)} only in the first, e.g. {only_a[:3]}; {len(only_b)} only in the second, "
                f"e.g. {only_b[:3]}): they were not evaluated on the same data"
            )
        order = {clip: i for i, clip in enumerate(ids_b)}
        take = np.array([order[clip] for clip in ids_a])
        label_b, pred_b = label_b[take], pred_b[take]  # run b's rows in run a's order
        if groups_a is None and groups_b is not None:
            groups_a = [groups_b[i] for i in take]
        if not np.array_equal(label_a, label_b):
            raise ValueError(f"fold {fold}: {dir_a} and {dir_b} give different labels to the same clips")
        correct_a = (pred_a == label_a).astype(float)
        correct_b = (pred_b == label_a).astype(float)
        out.append(
            {
                "fold": fold,
                "clips": len(ids_a),
                "acc_a": float(correct_a.mean()),
                "acc_b": float(correct_b.mean()),
                "diff": float(correct_a.mean() - correct_b.mean()),
                "correct_diff": correct_a - correct_b,
                "groups": groups_a,
            }
        )
    return out


def accuracy_interval(
    runs: list[dict],
    head: str = "fused",
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    unit: str = "group",
) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean accuracy over the folds of one group (one method and fusion).

    Per clip the value is 1 when `head` is right, 0 when not; the corpus's groups of clips (`unit="group"`,
    where every run recorded them) or clips are resampled within folds as in `paired_bootstrap`. Raises
    FileNotFoundError when a run has no predictions file.
    """
    _check_settings(n_resamples, confidence)
    _check_unit(unit)
    if not runs:
        raise ValueError("runs is empty: at least one run is needed")
    correct, groups = [], []
    for _, run in sorted(_by_fold(runs).items()):
        ids, labels, predicted, by_row = load_predictions(run["path"], head)
        order = np.argsort(ids)  # by clip id: the interval must not depend on the file's row order
        correct.append((predicted[order] == labels[order]).astype(float))
        groups.append(None if by_row is None or unit != "group" else [by_row[i] for i in order])
    use = None if any(g is None for g in groups) else groups
    return paired_bootstrap(correct, n_resamples, confidence, seed, use)


UNITS = ("group", "clip")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}: resample by {' or '.join(UNITS)}")


def _method_order(method: str) -> tuple:
    """Joint, Multi-Loss, MLB first, then the other methods by name (as `mlb.analysis.compare`'s tables)."""
    return (FIRST_METHODS.index(method) if method in FIRST_METHODS else len(FIRST_METHODS), method)


def _tuning_label(runs: list[dict]) -> str:
    return settings_label(group_settings([run.get("tuning") or {} for run in runs]))


def compare_to_baselines(
    runs: list[dict],
    baselines: Sequence[str] = ("joint", "mlb"),
    head: str = "fused",
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    unit: str = "group",
) -> list[dict]:
    """Every method against every baseline trained with the same features and fusion head.

    One row per (features, fusion, method, baseline) with both present, the method not the baseline and
    not a `*-only` run (its fused output is untrained): {features, fusion, method, baseline, head,
    confidence, folds, fold_diffs, mean_diff, ci_low, ci_high, verdict, reason, method_settings,
    baseline_settings} (the settings: `mlb.analysis.compare.settings_label` of each one's runs, tuned or
    untuned). Differences are method - baseline in accuracy (fractions), over the folds both have. verdict: "better" if ci_low > 0,
    "worse" if ci_high < 0, else "not resolved"; "no predictions" (with the reason) when a run lacks
    test_predictions.json, "no common folds" when the two share no fold. `unit`: what the bootstrap
    resamples, the corpus's groups of clips (where every run of the pair recorded them; else clips) or clips;
    each row's `unit` says which it was.
    """
    _check_settings(n_resamples, confidence)
    _check_unit(unit)
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for run in runs:
        key = (str(run["features"]), str(run["fusion"]))
        groups.setdefault(key, {}).setdefault(str(run["method"]), []).append(run)
    rows = []
    for (features, fusion), by_method in sorted(groups.items()):
        for method in sorted(by_method, key=_method_order):
            if method.endswith("-only"):
                continue
            for baseline in baselines:
                if baseline == method or baseline not in by_method:
                    continue
                row = {"features": features, "fusion": fusion, "method": method, "baseline": baseline}
                row |= {
                    "method_settings": _tuning_label(by_method[method]),
                    "baseline_settings": _tuning_label(by_method[baseline]),
                }
                row |= {"head": head, "confidence": confidence, "folds": 0, "fold_diffs": []}
                row |= {"mean_diff": None, "ci_low": None, "ci_high": None, "reason": None}
                try:
                    folds = per_fold_differences(by_method[method], by_method[baseline], head)
                except FileNotFoundError as err:  # a run trained before predictions were written
                    rows.append(row | {"verdict": "no predictions", "reason": str(err)})
                    continue
                if not folds:
                    reason = f"{method} and {baseline} share no fold"
                    rows.append(row | {"verdict": "no common folds", "reason": reason})
                    continue
                grouped = unit == "group" and all(f["groups"] is not None for f in folds)
                estimate, low, high = paired_bootstrap(
                    [f["correct_diff"] for f in folds],
                    n_resamples,
                    confidence,
                    seed,
                    [f["groups"] for f in folds] if grouped else None,
                )
                row["unit"] = "group" if grouped else "clip"
                verdict = "better" if low > 0 else "worse" if high < 0 else "not resolved"
                row |= {"folds": len(folds), "fold_diffs": [f["diff"] for f in folds]}
                rows.append(row | {"mean_diff": estimate, "ci_low": low, "ci_high": high, "verdict": verdict})
    return rows


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def stats_markdown(rows: list[dict]) -> str:
    """The rows of `compare_to_baselines` as a Markdown table (differences in accuracy points) + legend."""
    head = [
        "features",
        "fusion",
        "method",
        "baseline",
        "folds",
        "resampled",
        "Δ acc [CI]",
        "Δ per fold",
        "same sign",
        "verdict",
        "settings",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["mean_diff"] is None:
            interval, per_fold, same, verdict = "-", "-", "-", f"{r['verdict']}: {r['reason']}"
        else:
            interval = f"{_points(r['mean_diff'])} [{_points(r['ci_low'])}, {_points(r['ci_high'])}]"
            per_fold, verdict = ", ".join(_points(d) for d in r["fold_diffs"]), r["verdict"]
            # how many folds point the way of the mean: the spread over retraining that the interval omits
            same = f"{sum(d * r['mean_diff'] > 0 for d in r['fold_diffs'])}/{r['folds']}"
        cells = [r["features"], r["fusion"], r["method"], r["baseline"], str(r["folds"]), r.get("unit", "-")]
        settings = f"{r.get('method_settings', '-')} / {r.get('baseline_settings', '-')}"
        lines.append("| " + " | ".join(cells + [interval, per_fold, same, verdict, settings]) + " |")
    confidence = rows[0]["confidence"] if rows else 0.95
    heads = sorted({r["head"] for r in rows}) or ["fused"]
    legend = (
        f"Δ acc: test accuracy of the method minus that of the baseline ({'/'.join(heads)} head), in "
        "points, averaged over the folds both were trained on (each fold weighs the same); Δ per fold "
        "lists the folds' own differences, and same sign how many of them point the way of the mean. "
        f"The interval is a {100 * confidence:g}% paired bootstrap "
        "percentile interval over the test set: the resampled unit (group: the corpus's groups of clips, "
        "such as CREMA-D's actors, each with all its clips; clip: clips one by one, where no groups were "
        "recorded) is drawn with replacement within each fold, the same for both methods, and the resampled "
        "folds are pooled into one mean; it covers the test-set sampling noise, not the spread from "
        "retraining. Verdict: better when the whole interval "
        "is above 0, worse when it is below 0, otherwise not resolved. Settings: where the method's and the "
        "baseline's lr, weight decay and own settings came from (tuned on validation, or untuned: the defaults); "
        "a difference between a tuned and an untuned method is not a fair comparison."
    )
    return "\n".join(lines) + "\n\n" + legend + "\n"


def write_stats(
    runs: list[dict], out_dir: Path, n_resamples: int = 10000, seed: int = 0, unit: str = "group"
) -> dict[str, Path]:
    """RUNS/compare_stats.md (fused head) and .json (the fused head and every unimodal head) of
    `compare_to_baselines` against Joint and MLB, resampling `unit`; returns their paths."""
    from mlb.common.atomic import atomic_write_json, atomic_write_text

    heads = ["fused"] + sorted({m for run in runs for m in run.get("test", {}).get("unimodal", {})})
    rows = {
        head: compare_to_baselines(runs, head=head, n_resamples=n_resamples, seed=seed, unit=unit)
        for head in heads
    }
    paths = {"md": Path(out_dir) / "compare_stats.md", "json": Path(out_dir) / "compare_stats.json"}
    atomic_write_text(paths["md"], stats_markdown(rows["fused"]))
    atomic_write_json(paths["json"], rows)
    return paths
