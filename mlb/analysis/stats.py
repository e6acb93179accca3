"""Is one method's test accuracy really higher than another's? Paired intervals over test groups and runs.

Every run of `mlbpipe compare` writes `RUN/test_predictions.json`: the class each head predicted for every
test clip. Two methods trained on the same fold (same data split and seed) saw the same test clips, so
their predictions can be compared clip by clip: per clip, `correct_a - correct_b` is 1, 0 or -1.

- The statistic is the mean over runs (folds or seeds) of each run's mean difference (every run weighs the
  same, as in the mean ± std tables of `mlb.analysis.compare`): the mean accuracy difference.
- **Test-only interval**: a paired cluster bootstrap. The corpus's groups of test clips (CREMA-D's actors,
  AVE's videos, UCF101's groups: `groups` in test_predictions.json, from the shards' records) are drawn with
  replacement, each with all its clips, the same for both methods ("paired"). Clips of one group are
  correlated, so resampling clips as if independent gives intervals too narrow by up to the root of the
  group size. Each fold with its own test set draws G − 1 of its G groups (the with-replacement bootstrap
  of stratified samples with n − 1 draws: McCarthy & Snowden 1985; Rao & Wu 1988), which makes the
  resampled variance unbiased instead of (G − 1)/G too small: that matters with CREMA-D's 14 test actors.
  Runs that share one test set (seeds on one split) draw the same groups for all runs: their per-clip
  differences are averaged over the runs first. `unit="clip"` resamples clips (all N), and so do runs that
  recorded no groups. This interval says how much the difference could move if the test groups had been
  drawn again; it ignores retraining.
- **Interval with retraining** (what the verdict uses): a Student interval over the runs,
  `mean ± t(df) · SE`, `SE² = s²/K + V_test`, where s² is the sample variance of the K runs' differences
  (retraining: seed, fold split; and each fold's own test draw where the folds' test sets are disjoint)
  and V_test the test-only bootstrap variance, added unless the test sets are disjoint (runs that share
  test clips share that noise, which s² cannot see). df by Welch–Satterthwaite (s² has K − 1 degrees of
  freedom, V_test is taken as known); with V_test = 0 this is the one-sample t interval over runs
  (Dietterich 1998; Nadeau & Bengio 2003 show that overlapping training sets make s² an underestimate, so
  even this errs narrow). Why not a bootstrap over runs: with 3 to 5 runs it has 10 to 126 distinct
  resamples and its percentile interval is about [min, max] of the runs, a test at ~25% rather than 5%.
  One run: no retraining spread, no interval, never resolved.
- **Many comparisons**: the p-values of one table (every method against `BASELINES`, every fusion, one
  head) are adjusted together by Holm's step-down method, which holds the chance of any false "better" or
  "worse" among them at 1 − confidence. Verdict: "better"/"worse" when the Holm-adjusted p is below
  1 − confidence (the sign of the mean says which), else "not resolved".

`accuracy_interval` gives one method's mean accuracy and its test-only interval, for the error bars of
Figure 3. numpy and scipy only: this module never imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.stats

from mlb.analysis.compare import FIRST_METHODS, group_settings, settings_label

PREDICTIONS = "test_predictions.json"

# Resampled indices are drawn in chunks of at most this many, so 10000 resamples of 5000 clips need
# ~30 MB at a time instead of 400 MB.
CHUNK_ELEMENTS = 1 << 22
DISCRETE_VALUES = 16  # at most this many distinct values: resample value counts (see _resampled_means)
UNITS = ("group", "clip")
# what every method is compared with: Joint, MLB, and the two baselines without balancing that train each
# encoder alone first (rows only where the comparison has their runs)
BASELINES = ("joint", "mlb", "ensemble", "uni-pre-finetuned")
TEST_SETS = ("one", "disjoint", "overlapping")  # how the runs' test clip sets relate (`test_set_relation`)


def _check_settings(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}: resample by {' or '.join(UNITS)}")


# --- the test-only bootstrap --------------------------------------------------------------------------


def bootstrap_statistics(
    diffs_by_fold: Sequence[np.ndarray],
    n_resamples: int = 10000,
    seed: int = 0,
    groups_by_fold: Sequence[Sequence] | None = None,
) -> tuple[float, np.ndarray]:
    """(estimate, resampled statistics `[n_resamples]`) of the mean over folds of the per-fold mean.

    Each array holds one fold's per-clip values (paired differences, or 0/1 correctness). Within each fold
    clips (all N, with replacement) or, with `groups_by_fold` (each clip's group, per fold), whole groups
    (G − 1 of the G, with replacement) are drawn; folds are not resampled. The same inputs and `seed` give
    the same statistics.
    """
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
    return estimate, stats / len(folds)


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap(
    diffs_by_fold: Sequence[np.ndarray],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    groups_by_fold: Sequence[Sequence] | None = None,
) -> tuple[float, float, float]:
    """(estimate, low, high): `bootstrap_statistics`' estimate and the percentile interval of its resampled
    statistics at `confidence`. With one fold of clips this is the ordinary percentile bootstrap of the mean.
    """
    _check_settings(n_resamples, confidence)
    estimate, stats = bootstrap_statistics(diffs_by_fold, n_resamples, seed, groups_by_fold)
    return (estimate, *_percentiles(stats, confidence))


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
    """Means of `n_resamples` cluster resamples of `d` -> [n_resamples]: G − 1 of the G groups drawn with
    replacement (how often each is drawn: a multinomial draw), each bringing all its clips; a resample's
    mean is its clip sum over its clip count."""
    if len(groups) != d.size:
        raise ValueError(f"{len(groups)} groups for {d.size} clips")
    _, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)  # [N] group of each clip
    sums = np.bincount(index, weights=d)  # [G]
    counts = np.bincount(index).astype(float)  # [G]
    g = counts.size
    if g < 2:
        raise ValueError("a fold with one group has no group-to-group spread: resample clips instead")
    chunk = max(1, CHUNK_ELEMENTS // g)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        drawn = rng.multinomial(g - 1, np.full(g, 1.0 / g), size=size)  # [R, G] times each group is drawn
        means[start : start + size] = (drawn @ sums) / (drawn @ counts)
    return means


def test_set_relation(ids_by_fold: Sequence[Sequence[str]]) -> str:
    """ "one" when every run was tested on the same clips (seeds on one split; also a single run),
    "disjoint" when no clip is in two runs' test sets (folds of a partition), else "overlapping"."""
    sets = [frozenset(ids) for ids in ids_by_fold]
    if all(s == sets[0] for s in sets):
        return "one"
    seen: set[str] = set()
    for s in sets:
        if seen & s:
            return "overlapping"
        seen |= s
    return "disjoint"


def pool_one_test_set(
    values_by_fold: Sequence[np.ndarray], ids_by_fold: Sequence[Sequence[str]], groups: Sequence | None
) -> tuple[list[np.ndarray], list | None]:
    """Runs tested on the same clips as one fold: the per-clip mean over the runs `[N]` (in the first run's
    clip order), so that a resample draws the same clips (groups) for every run. Its mean is the mean of the
    runs' means."""
    order = {clip: i for i, clip in enumerate(ids_by_fold[0])}
    aligned = np.zeros(len(order))
    for values, ids in zip(values_by_fold, ids_by_fold):
        aligned[[order[clip] for clip in ids]] += values
    return [aligned / len(values_by_fold)], None if groups is None else [groups]


# --- the interval with retraining and the many-comparisons adjustment ----------------------------------


def retraining_interval(
    run_diffs: Sequence[float], test_variance: float, confidence: float = 0.95, test_sets: str = "one"
) -> dict | None:
    """The Student interval over runs (see the module docstring): {"low", "high", "p", "df", "se"}, or None
    for fewer than two runs. `test_variance`: the test-only bootstrap variance of the mean difference,
    added to s²/K unless `test_sets` is "disjoint". p: two-sided, for "the mean difference is 0"."""
    if test_sets not in TEST_SETS:
        raise ValueError(f"test_sets={test_sets!r}: one of {', '.join(TEST_SETS)}")
    d = np.asarray(run_diffs, dtype=float)
    k = d.size
    if k < 2:
        return None
    mean = float(d.mean())
    between = float(d.var(ddof=1)) / k  # s² / K
    within = 0.0 if test_sets == "disjoint" else float(test_variance)
    se2 = between + within
    # Welch–Satterthwaite: only s² is estimated (K − 1 degrees of freedom)
    df = se2**2 / (between**2 / (k - 1)) if between > 0 else math.inf
    if se2 <= 0:  # every run and every resample gives the same difference
        return {"low": mean, "high": mean, "p": 1.0 if mean == 0 else 0.0, "df": df, "se": 0.0}
    se = math.sqrt(se2)
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, df)) * se
    p = float(2 * scipy.stats.t.sf(abs(mean) / se, df))
    return {"low": mean - half, "high": mean + half, "p": min(1.0, p), "df": df, "se": se}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values that are not None (Holm 1979): the i-th smallest of m is
    multiplied by m − i + 1, and adjusted values never fall below an earlier one's; None stays None."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


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
    "correct_diff" (per clip, in run a's clip order: correct_a - correct_b), "ids" (run a's clip ids in that
    order), "groups" (each clip's group in the same order, or None when neither run recorded groups)}. Rows are matched by clip id; different clip
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
                "ids": ids_a,
                "groups": groups_a,
            }
        )
    return out


def _test_resampling(
    values: list[np.ndarray], ids: list[list[str]], groups: list | None, unit: str
) -> tuple[list[np.ndarray], list | None, str, str]:
    """What the test-only bootstrap draws from: (values by fold, groups by fold or None, the unit resampled,
    the runs' test-set relation). Groups where `unit` is "group" and every fold has two or more; runs on
    one test set pooled into one fold (`pool_one_test_set`)."""
    grouped = (
        unit == "group" and groups is not None and all(g is not None and len(set(g)) > 1 for g in groups)
    )
    use = groups if grouped else None
    relation = test_set_relation(ids)
    if relation == "one" and len(values) > 1:
        values, use = pool_one_test_set(values, ids, use[0] if use else None)
    return values, use, "group" if grouped else "clip", relation


def accuracy_interval(
    runs: list[dict],
    head: str = "fused",
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    unit: str = "group",
) -> tuple[float, float, float]:
    """(estimate, low, high): the mean accuracy over the runs of one group (one method and fusion) and its
    test-only interval.

    Per clip the value is 1 when `head` is right, 0 when not; the corpus's groups of clips (`unit="group"`,
    where every run recorded them) or clips are resampled as in `compare_to_baselines`. Raises
    FileNotFoundError when a run has no predictions file.
    """
    _check_settings(n_resamples, confidence)
    _check_unit(unit)
    if not runs:
        raise ValueError("runs is empty: at least one run is needed")
    correct, ids, groups = [], [], []
    for _, run in sorted(_by_fold(runs).items()):
        clip_ids, labels, predicted, by_row = load_predictions(run["path"], head)
        order = np.argsort(clip_ids)  # by clip id: the interval must not depend on the file's row order
        correct.append((predicted[order] == labels[order]).astype(float))
        ids.append([clip_ids[i] for i in order])
        groups.append(None if by_row is None else [by_row[i] for i in order])
    values, use, _, _ = _test_resampling(correct, ids, groups, unit)
    return paired_bootstrap(values, n_resamples, confidence, seed, use)


def _method_order(method: str) -> tuple:
    """Joint, Multi-Loss, MLB first, then the other methods by name (as `mlb.analysis.compare`'s tables)."""
    return (FIRST_METHODS.index(method) if method in FIRST_METHODS else len(FIRST_METHODS), method)


def _tuning_label(runs: list[dict]) -> str:
    return settings_label(group_settings([run.get("tuning") or {} for run in runs]))


def compare_to_baselines(
    runs: list[dict],
    baselines: Sequence[str] = BASELINES,
    head: str = "fused",
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    unit: str = "group",
) -> list[dict]:
    """Every method against every baseline trained with the same features and fusion head.

    One row per (features, fusion, method, baseline) with both present, the method not the baseline and
    not a `*-only` run (its fused output is untrained). Differences are method − baseline in accuracy
    (fractions), over the runs (folds) both have. Each row: features, fusion, method, baseline, head,
    confidence, folds, fold_diffs, mean_diff; the test-only interval test_low, test_high (resampling
    `unit`: the corpus's groups where every run of the pair recorded them, else clips; the row's `unit` says
    which) and the runs' `test_sets` ("one", "disjoint", "overlapping"); the interval with retraining
    ci_low, ci_high (None with one run), its df, p and p_holm (Holm over this call's rows); verdict
    ("better"/"worse" when p_holm < 1 − confidence, else "not resolved"; "no predictions" or
    "no common folds" with the reason); method_settings and baseline_settings
    (`mlb.analysis.compare.settings_label` of each one's runs: tuned or untuned).
    """
    _check_settings(n_resamples, confidence)
    _check_unit(unit)
    by_key: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for run in runs:
        key = (str(run["features"]), str(run["fusion"]))
        by_key.setdefault(key, {}).setdefault(str(run["method"]), []).append(run)
    rows = []
    done: dict[tuple, dict] = {}  # {(features, fusion, method, baseline): figures}: a mirrored pair is reused
    for (features, fusion), by_method in sorted(by_key.items()):
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
                    "head": head,
                    "confidence": confidence,
                    "folds": 0,
                    "fold_diffs": [],
                    "reason": None,
                }
                row |= dict.fromkeys(("mean_diff", "test_low", "test_high", "ci_low", "ci_high"))
                row |= dict.fromkeys(("df", "p", "p_holm"))
                try:
                    folds = per_fold_differences(by_method[method], by_method[baseline], head)
                except FileNotFoundError as err:  # a run trained before predictions were written
                    rows.append(row | {"verdict": "no predictions", "reason": str(err)})
                    continue
                if not folds:
                    reason = f"{method} and {baseline} share no fold"
                    rows.append(row | {"verdict": "no common folds", "reason": reason})
                    continue
                mirrored = done.get((features, fusion, baseline, method))
                if mirrored is not None:  # the same comparison the other way: the same p, the figures negated
                    figures = _negated(mirrored)
                else:
                    figures = _difference(folds, n_resamples, seed, confidence, unit)
                done[(features, fusion, method, baseline)] = figures
                rows.append(row | figures)
    return _holm_verdicts(rows, 1.0 - confidence)


def _difference(folds: list[dict], n_resamples: int, seed: int, confidence: float, unit: str) -> dict:
    """One pair's figures from its per-fold differences (`per_fold_differences`): see `compare_to_baselines`."""
    values, groups, resampled, relation = _test_resampling(
        [f["correct_diff"] for f in folds], [f["ids"] for f in folds], [f["groups"] for f in folds], unit
    )
    _, stats = bootstrap_statistics(values, n_resamples, seed, groups)
    test_low, test_high = _percentiles(stats, confidence)
    diffs = [f["diff"] for f in folds]
    test_variance = float(stats.var(ddof=1)) if stats.size > 1 else 0.0
    retrain = retraining_interval(diffs, test_variance, confidence, relation) or {}
    return {
        "folds": len(folds),
        "fold_diffs": diffs,
        "mean_diff": float(np.mean(diffs)),
        "unit": resampled,
        "test_sets": relation,
        "test_low": test_low,
        "test_high": test_high,
        "ci_low": retrain.get("low"),
        "ci_high": retrain.get("high"),
        "df": retrain.get("df"),
        "p": retrain.get("p"),
    }


def _negated(figures: dict) -> dict:
    """`_difference`'s figures for the pair the other way round (baseline − method)."""
    flip = {"mean_diff": -figures["mean_diff"], "fold_diffs": [-d for d in figures["fold_diffs"]]}
    for low, high in (("test_low", "test_high"), ("ci_low", "ci_high")):
        flip[low] = None if figures[high] is None else -figures[high]
        flip[high] = None if figures[low] is None else -figures[low]
    return figures | flip


def _holm_verdicts(rows: list[dict], alpha: float) -> list[dict]:
    """p_holm and the verdict of every row with a difference (Holm over all of them). A pair that appears
    both ways (MLB against Joint, Joint against MLB) is one hypothesis: it counts once."""

    def hypothesis(r: dict) -> tuple:
        return r["features"], r["fusion"], frozenset((r["method"], r["baseline"]))

    hypotheses = {}  # {(features, fusion, {method, baseline}): p}, in row order
    for r in rows:
        hypotheses.setdefault(hypothesis(r), r["p"])
    adjusted = dict(zip(hypotheses, holm(list(hypotheses.values()))))
    for row in rows:
        if row["mean_diff"] is None:
            continue
        p_holm = adjusted[hypothesis(row)]
        row["p_holm"] = p_holm
        resolved = p_holm is not None and p_holm < alpha and row["mean_diff"] != 0
        row["verdict"] = ("better" if row["mean_diff"] > 0 else "worse") if resolved else "not resolved"
    return rows


def _points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None else f"[{_points(low)}, {_points(high)}]"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


STATS_COLUMNS = (
    "features",
    "fusion",
    "method",
    "baseline",
    "runs",
    "test sets",
    "resampled",
    "Δ acc",
    "test-only CI",
    "CI with retraining",
    "p",
    "p Holm",
    "Δ per run",
    "verdict",
    "settings",
)


def stats_markdown(rows: list[dict]) -> str:
    """The rows of `compare_to_baselines` as a Markdown table (differences in accuracy points) + legend."""
    lines = ["| " + " | ".join(STATS_COLUMNS) + " |", "|" + "---|" * len(STATS_COLUMNS)]
    for r in rows:
        cells = [r["features"], r["fusion"], r["method"], r["baseline"], str(r["folds"])]
        if r["mean_diff"] is None:
            cells += ["-"] * 8 + [f"{r['verdict']}: {r['reason']}"]
        else:
            cells += [r["test_sets"], r["unit"], _points(r["mean_diff"])]
            cells += [_interval(r["test_low"], r["test_high"]), _interval(r["ci_low"], r["ci_high"])]
            cells += [
                _p(r["p"]),
                _p(r["p_holm"]),
                ", ".join(_points(d) for d in r["fold_diffs"]),
                r["verdict"],
            ]
        cells.append(f"{r.get('method_settings', '-')} / {r.get('baseline_settings', '-')}")
        lines.append("| " + " | ".join(cells) + " |")
    confidence = rows[0]["confidence"] if rows else 0.95
    heads = sorted({r["head"] for r in rows}) or ["fused"]
    level = f"{100 * confidence:g}%"
    legend = (
        f"Δ acc: test accuracy of the method minus that of the baseline ({'/'.join(heads)} head), in points, "
        "averaged over the runs (folds or seeds) both were trained on; Δ per run lists each run's own. "
        f"Test-only CI: {level} paired bootstrap percentile interval, drawing the corpus's groups of test clips "
        "(resampled: group, such as CREMA-D's actors, each with all its clips; clip where no groups were "
        "recorded) the same for both methods, and for all runs where they share one test set (test sets: "
        "one, disjoint or overlapping); it ignores retraining. CI with retraining: "
        f"{level} Student interval over the runs whose standard error adds the runs' spread (retraining) to "
        "the test-only variance (left out where the test sets are disjoint: each run's own test draw is then "
        "in the spread); one run has none. p: its two-sided p-value for no difference; p Holm: adjusted "
        "by Holm's method over every row of this table. Verdict: better or worse when p Holm is below "
        f"{1 - confidence:.2g}, otherwise not resolved: a resolved verdict says the difference would likely "
        "hold on new test groups and new training runs of this protocol, holding the chance of any false "
        f"verdict in the table at {1 - confidence:.2g}; not resolved says these runs cannot tell, not that "
        "the methods are equal. Settings: where the method's and the baseline's lr, weight decay and own "
        "settings came from (tuned on validation, or untuned: the defaults); a difference between a tuned and "
        "an untuned method is not a fair comparison."
    )
    return "\n".join(lines) + "\n\n" + legend + "\n"


def write_stats(
    runs: list[dict], out_dir: Path, n_resamples: int = 10000, seed: int = 0, unit: str = "group"
) -> dict[str, Path]:
    """RUNS/compare_stats.md (fused head) and .json (the fused head and every unimodal head, each its own
    Holm family) of `compare_to_baselines` against `BASELINES` (Joint, MLB, Ensemble, Uni-Pre fine-tuned: those the runs
    have), resampling `unit`; returns their paths."""
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
