"""mlb.analysis.stats: the stratified paired bootstrap (checked against hand-enumerated exact distributions and
scipy), the method-vs-baseline rows on hand-written run folders, and Figure 3's error bars."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest
import scipy.stats

import mlb.analysis.stats
from mlb.analysis.compare import aggregate, load_runs
from mlb.analysis.report import accuracy_bars, figure_accuracy
from mlb.analysis.stats import (
    accuracy_interval,
    compare_to_baselines,
    paired_bootstrap,
    per_fold_differences,
    stats_markdown,
)

pytestmark = pytest.mark.unit

# --- the bootstrap itself -------------------------------------------------------------------------------


def test_one_fold_of_two_clips_gives_the_hand_computed_interval():
    # resampling [1, 0] gives means 0, .5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # percentiles are 0 and 1 (a quarter of the mass sits on each end), the estimate is .5
    assert paired_bootstrap([np.array([1.0, 0.0])], n_resamples=4000) == (0.5, 0.0, 1.0)


def test_a_constant_difference_has_a_zero_width_interval():
    estimate, low, high = paired_bootstrap([np.full(50, 1.0), np.full(7, -0.5)], n_resamples=500)
    assert estimate == low == high == pytest.approx(0.25, abs=1e-12)


def _exact_quantile(distribution: Counter, q: float) -> float:
    """The smallest value whose exact CDF reaches q; asserts q is far (> 0.01) from any CDF step, so that
    a Monte-Carlo percentile of 20000 resamples (CDF error ~0.002 sd) lands on that same value."""
    total, cumulative = sum(distribution.values()), 0
    for value in sorted(distribution):
        cumulative += distribution[value]
        assert abs(cumulative / total - q) > 0.01, "choose a level away from the CDF's steps"
        if cumulative / total >= q:
            return value
    raise AssertionError


# (chunk size, distinct-value limit): resampled value counts (multinomial); drawn indices in the default
# chunks; drawn indices in chunks of 10 resamples
PATHS = [
    (mlb.analysis.stats.CHUNK_ELEMENTS, mlb.analysis.stats.DISCRETE_VALUES),
    (mlb.analysis.stats.CHUNK_ELEMENTS, 0),
    (40, 0),
]


@pytest.mark.parametrize("chunk_elements, discrete_values", PATHS)
def test_two_folds_match_the_exact_bootstrap_distribution(monkeypatch, chunk_elements, discrete_values):
    """Fold A = [1, 0], fold B = [1, 0, 0, 0]: all 2^2 * 4^4 = 1024 equally likely index tuples of the
    stratified bootstrap, enumerated. The statistic (mean_A + mean_B) / 2 takes the values 0, 1/8, ..., 1
    with exact CDF .079, .185, .396, .618, .804, .933, .987, .999, 1; so the 10%/90% percentiles are
    .125/.625 and the 2.5%/97.5% ones 0/.75. The estimate weighs folds equally: (.5 + .25) / 2 = .375,
    not the pooled 2/6. Both ways of resampling, and a small chunk size, must give this distribution."""
    monkeypatch.setattr(mlb.analysis.stats, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(mlb.analysis.stats, "DISCRETE_VALUES", discrete_values)
    a, b = np.array([1.0, 0.0]), np.array([1.0, 0.0, 0.0, 0.0])
    exact = Counter(
        (a[list(ia)].mean() + b[list(ib)].mean()) / 2
        for ia in itertools.product(range(2), repeat=2)
        for ib in itertools.product(range(4), repeat=4)
    )
    assert sum(exact.values()) == 1024 and exact[0.0] == 81 and exact[1.0] == 1
    for confidence, (low, high) in ((0.8, (0.125, 0.625)), (0.95, (0.0, 0.75))):
        tail = (1 - confidence) / 2
        assert (_exact_quantile(exact, tail), _exact_quantile(exact, 1 - tail)) == (low, high)
        got = paired_bootstrap([a, b], n_resamples=20000, confidence=confidence, seed=3)
        assert got == pytest.approx((0.375, low, high), abs=1e-12)


@pytest.mark.parametrize("discrete_values", [mlb.analysis.stats.DISCRETE_VALUES, 0])
def test_one_fold_agrees_with_scipy_percentile_bootstrap(monkeypatch, discrete_values):
    monkeypatch.setattr(mlb.analysis.stats, "DISCRETE_VALUES", discrete_values)
    d = np.random.default_rng(7).choice([-1.0, 0.0, 1.0], size=200, p=[0.2, 0.5, 0.3])
    ours = paired_bootstrap([d], n_resamples=20000, seed=1)
    theirs = scipy.stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=20000,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(2),
    ).confidence_interval
    # Tolerance: the bootstrap mean has sd ~ std(d) / sqrt(200) ~ 0.05; the sample 2.5% percentile of
    # 20000 draws then has sd ~ sqrt(.025 * .975 / 20000) / density ~ 0.0011 / 1.0 ~ 0.001, so two
    # independent estimates differ by ~0.0015 sd: 0.01 is over 6 sd, while a wrong scheme (e.g. an
    # interval half or twice as wide, ~0.05 off) fails it.
    assert ours[0] == pytest.approx(d.mean(), abs=1e-12)
    assert ours[1] == pytest.approx(theirs.low, abs=0.01)
    assert ours[2] == pytest.approx(theirs.high, abs=0.01)
    assert paired_bootstrap([d], n_resamples=20000, seed=1) == ours  # the seed fixes the result


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"diffs_by_fold": []}, "diffs_by_fold is empty"),
        ({"diffs_by_fold": [np.array([1.0]), np.array([])]}, r"diffs_by_fold\[1\] must be a non-empty"),
        ({"diffs_by_fold": [np.array([1.0, np.nan])]}, "NaN"),
        ({"diffs_by_fold": np.array([1.0, 0.0])}, "one flat array"),
        ({"n_resamples": 0}, "n_resamples must be an integer >= 1, got 0"),
        ({"n_resamples": 2.5}, "n_resamples must be an integer >= 1, got 2.5"),
        ({"confidence": 1.0}, r"confidence must be a number in \(0, 1\), got 1.0"),
        ({"confidence": 0}, r"confidence must be a number in \(0, 1\), got 0"),
    ],
)
def test_bad_inputs_are_refused_naming_the_argument(kwargs, message):
    args = {"diffs_by_fold": [np.array([1.0, 0.0])], **kwargs}
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(**args)


# --- run folders ----------------------------------------------------------------------------------------

CLIPS = 60


def _write_run(root, method, fold, right, *, predictions=True, fold_key=True, reverse=False, ids=None):
    """A run folder with metrics.json and (optionally) test_predictions.json; the fused head is right on
    the clips in `right`, the audio head on every clip. `reverse` writes the rows in reverse order."""
    ids = ids or [f"clip{i:03d}" for i in range(CLIPS)]
    labels = [i % 6 for i in range(CLIPS)]
    fused = [label if i in right else (label + 1) % 6 for i, label in enumerate(labels)]
    run_dir = root / "raw" / method / "late-linear" / f"fold{fold}"
    run_dir.mkdir(parents=True)
    acc = len(right) / CLIPS
    metrics = {"method": method, "fusion": "late-linear", "features": "raw", "seed": fold}
    metrics["test"] = {"fused": {"accuracy": acc}, "unimodal": {"audio": {"accuracy": 1.0}}}
    if fold_key:
        metrics["fold"] = fold
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if predictions:
        rows = list(zip(ids, labels, fused))[:: -1 if reverse else 1]
        pred = {"ids": [r[0] for r in rows], "label": [r[1] for r in rows], "fused": [r[2] for r in rows]}
        pred["unimodal"] = {"audio": pred["label"], "video": pred["fused"]}
        (run_dir / "test_predictions.json").write_text(json.dumps(pred))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """Three folds of 60 clips. joint is right on clips 0-29 (50%), agm on 0-44 (75%), pmr on 0-14 (25%),
    mlb on 16-46 (51.7%, on other clips than joint: +1.7 points, far from resolved); ogm-ge has no
    predictions; audio-only is alone. joint's fold 2 is an old run (seed, no fold key) with its rows
    reversed; agm has an extra fold 3."""
    right = {"joint": range(30), "agm": range(45), "pmr": range(15), "mlb": range(16, 47)}
    right |= {"ogm-ge": range(30), "audio-only": range(30)}
    for method, clips in right.items():
        for fold in range(4 if method == "agm" else 3):
            old = method == "joint" and fold == 2
            has = method != "ogm-ge"
            _write_run(tmp_path, method, fold, set(clips), predictions=has, fold_key=not old, reverse=old)
    return load_runs(tmp_path)


def _of(runs, method):
    return [r for r in runs if r["method"] == method]


def test_per_fold_differences_pair_by_fold_and_match_clips_by_id(runs):
    folds = per_fold_differences(_of(runs, "agm"), _of(runs, "joint"))
    assert [f["fold"] for f in folds] == [0, 1, 2]  # agm's fold 3 has no partner
    expected = np.zeros(CLIPS)
    expected[30:45] = 1.0  # agm right, joint wrong
    for f in folds:
        assert (f["acc_a"], f["acc_b"], f["clips"]) == (0.75, 0.5, CLIPS)
        assert f["diff"] == pytest.approx(0.25)
        np.testing.assert_array_equal(f["correct_diff"], expected)  # also for the reversed fold 2
    audio = per_fold_differences(_of(runs, "agm"), _of(runs, "joint"), head="audio")
    assert all(f["diff"] == 0.0 for f in audio)
    with pytest.raises(ValueError, match="no head 'depth'"):
        per_fold_differences(_of(runs, "agm"), _of(runs, "joint"), head="depth")


def test_compare_to_baselines_gives_each_verdict(runs):
    rows = compare_to_baselines(runs, n_resamples=2000)
    got = {(r["method"], r["baseline"]): r for r in rows}
    assert list(got) == [
        ("joint", "mlb"),
        ("mlb", "joint"),
        ("agm", "joint"),
        ("agm", "mlb"),
        ("ogm-ge", "joint"),
        ("ogm-ge", "mlb"),
        ("pmr", "joint"),
        ("pmr", "mlb"),
    ]  # display order; no row for audio-only or a method against itself
    verdicts = {pair: r["verdict"] for pair, r in got.items()}
    assert verdicts == {
        ("joint", "mlb"): "not resolved",
        ("mlb", "joint"): "not resolved",
        ("agm", "joint"): "better",
        ("agm", "mlb"): "better",
        ("ogm-ge", "joint"): "no predictions",
        ("ogm-ge", "mlb"): "no predictions",
        ("pmr", "joint"): "worse",
        ("pmr", "mlb"): "worse",
    }
    better = got[("agm", "joint")]
    assert better["folds"] == 3 and better["fold_diffs"] == pytest.approx([0.25] * 3)
    assert better["mean_diff"] == pytest.approx(0.25) and better["test_sets"] == "one"
    # the three folds share one test set: a resample draws the same 60 clips for all of them, so the test
    # sd is that of one fold, sqrt(.25 * .75 / 60) ~ 0.056 (not 0.056 / sqrt(3)): about 0.25 ± 0.11
    assert 0.13 < better["test_low"] < 0.16 and 0.34 < better["test_high"] < 0.37
    # no spread over the runs: the interval with retraining is the normal one on the test sd (df infinite)
    assert better["df"] == float("inf") and better["p"] < 1e-4
    assert better["ci_low"] == pytest.approx(better["test_low"], abs=0.01)
    unresolved = got[("mlb", "joint")]
    # above 0, but 33 of 60 clips disagree: the intervals are about ±0.19 wide
    assert unresolved["mean_diff"] == pytest.approx(1 / 60)
    assert (
        unresolved["test_low"] < 0 < unresolved["test_high"]
        and unresolved["ci_low"] < 0 < unresolved["ci_high"]
    )
    assert unresolved["p"] > 0.5 and unresolved["p_holm"] >= unresolved["p"]
    missing = got[("ogm-ge", "joint")]
    assert "no test_predictions.json in" in missing["reason"] and "ogm-ge" in missing["reason"]
    assert missing["mean_diff"] is None
    json.dumps(rows)  # plain data: the rows go into a JSON file as they are


def test_compare_on_another_head(runs):
    rows = compare_to_baselines(runs, baselines=("joint",), head="audio", n_resamples=200)
    agm = next(r for r in rows if r["method"] == "agm")
    assert (agm["head"], agm["mean_diff"], agm["test_low"], agm["test_high"]) == ("audio", 0.0, 0.0, 0.0)
    assert (agm["ci_low"], agm["ci_high"], agm["p"], agm["verdict"]) == (0.0, 0.0, 1.0, "not resolved")


def test_different_clip_sets_raise_naming_both_run_folders(tmp_path):
    a = _write_run(tmp_path, "joint", 0, set(range(30)))
    b = _write_run(tmp_path, "mlb", 0, set(range(30)), ids=[f"other{i}" for i in range(CLIPS)])
    runs = load_runs(tmp_path)
    for call in (
        lambda: per_fold_differences(_of(runs, "mlb"), _of(runs, "joint")),
        lambda: compare_to_baselines(runs, n_resamples=10),
    ):
        with pytest.raises(ValueError, match="predicted different test clips") as err:
            call()
        assert str(a) in str(err.value) and str(b) in str(err.value)


def test_two_runs_on_one_fold_are_an_error(tmp_path):
    a = _write_run(tmp_path, "joint", 0, set(range(30)))
    b = _write_run(tmp_path / "again", "joint", 0, set(range(30)))
    with pytest.raises(ValueError, match="two runs on fold 0") as err:
        accuracy_interval(load_runs(tmp_path))
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_stats_markdown_table_and_legend(runs):
    text = stats_markdown(compare_to_baselines(runs, n_resamples=2000))
    lines = text.splitlines()
    head = (
        "| features | fusion | method | baseline | runs | test sets | resampled | Δ acc | test-only CI "
        "| CI with retraining | p | p Holm | Δ per run | verdict | settings |"
    )
    assert lines[0] == head
    agm = next(line for line in lines if line.startswith("| raw | late-linear | agm | joint |"))
    assert re.fullmatch(
        r"\| raw \| late-linear \| agm \| joint \| 3 \| one \| clip \| \+25\.0 \| \[\+1\d\.\d, \+3\d\.\d\] "
        r"\| \[\+1\d\.\d, \+3\d\.\d\] \| <0\.001 \| <0\.001 \| \+25\.0, \+25\.0, \+25\.0 \| better \| - / - \|",
        agm,  # settings not recorded
    )
    assert (
        "| ogm-ge | joint | 0 | - | - | - | - | - | - | - | - | no predictions: no test_predictions.json in"
        in text
    )
    assert "95% paired bootstrap percentile interval" in text and "Holm's method" in text
    assert "not that the methods are equal" in text


def test_accuracy_interval_is_the_bootstrap_of_per_clip_correctness(runs):
    joint = _of(runs, "joint")
    estimate, low, high = accuracy_interval(joint, n_resamples=3000, seed=5)
    # three runs on one test set: the same clips drawn for all, so one fold of the per-clip mean correctness
    correct = [np.array([1.0] * 30 + [0.0] * 30)]
    assert (estimate, low, high) == paired_bootstrap(correct, n_resamples=3000, seed=5)
    assert estimate == 0.5 and 0.35 < low < 0.40 and 0.60 < high < 0.65  # sd ~ sqrt(.25 / 60) ~ 0.065
    assert accuracy_interval(joint, head="audio", n_resamples=100) == (1.0, 1.0, 1.0)
    with pytest.raises(FileNotFoundError, match="no test_predictions.json"):
        accuracy_interval(_of(runs, "ogm-ge"))
    with pytest.raises(ValueError, match="runs is empty"):
        accuracy_interval([])


def test_figure_3_draws_intervals_when_every_run_has_predictions(runs, tmp_path):
    with_predictions = [r for r in runs if r["method"] != "ogm-ge"]
    bars, what = accuracy_bars(aggregate(with_predictions), runs=with_predictions)
    assert "95% bootstrap interval over the test set" in what and "not covering retraining" in what
    assert ("audio-only", "late-linear") not in bars
    estimate, low, high = accuracy_interval(_of(runs, "joint"))
    assert bars[("joint", "late-linear")] == pytest.approx(
        (100 * estimate, 100 * (estimate - low), 100 * (high - estimate))
    )
    assert bars[("agm", "late-linear")][0] == pytest.approx(75.0)  # 4 folds
    # one group without predictions: every bar falls back to mean ± std (from metrics.json)
    bars, what = accuracy_bars(aggregate(runs), runs=runs)
    assert what == "mean ± std over 3/4 runs" and bars[("joint", "late-linear")] == (50.0, 0.0, 0.0)
    assert accuracy_bars(aggregate(with_predictions))[1].startswith("mean ± std")  # no runs given
    png = figure_accuracy(aggregate(with_predictions), tmp_path / "fig3.png", runs=with_predictions)
    assert png.stat().st_size > 10_000 and png.with_suffix(".svg").is_file()


def test_fold_table_mean_and_sample_std(tmp_path):
    for fold, right in enumerate((36, 42, 54)):  # accuracies .6, .7, .9
        _write_run(tmp_path, "mlb", fold, set(range(right)))
    (summary,) = aggregate(load_runs(tmp_path))
    # mean = 2.2 / 3 = .73333; deviations -.13333, -.03333, .16667; squares .017778 + .001111 + .027778
    # = .046667; / (3 - 1) = .023333; sqrt = .152753
    assert summary.runs == 3
    assert summary.mean["test.fused.accuracy"] == pytest.approx(0.733333, abs=1e-6)
    assert summary.std["test.fused.accuracy"] == pytest.approx(0.152753, abs=1e-6)


# --- the corpus's groups as the resampling unit -----------------------------------------------------------


def test_whole_groups_right_or_wrong_widen_the_interval_by_the_root_of_the_group_size():
    """40 groups of 9 clips, each group all right or all wrong: resampled by group the interval is about
    sqrt(9) = 3 times as wide as resampled by clip (which takes the 360 clips for independent)."""
    size, n_groups = 9, 40
    right = np.random.default_rng(1).random(n_groups) < 0.5  # [G]
    correct = np.repeat(right.astype(float), size)  # [N]: a group's clips together
    groups = np.repeat([f"actor{g}" for g in range(n_groups)], size)  # [N]
    _, low_c, high_c = paired_bootstrap([correct], n_resamples=20000, seed=0)
    _, low_g, high_g = paired_bootstrap([correct], n_resamples=20000, seed=0, groups_by_fold=[groups])
    assert 2.6 < (high_g - low_g) / (high_c - low_c) < 3.4


def test_groups_of_one_clip_give_the_clip_bootstrap_distribution():
    """Each clip its own group: the cluster bootstrap is the clip bootstrap (the same 95% interval within
    the resampling noise), checked against the exact normal width of a mean of 0/1 values."""
    correct = np.array([1.0] * 30 + [0.0] * 30)
    groups = [f"g{i}" for i in range(60)]
    _, low, high = paired_bootstrap([correct], n_resamples=40000, seed=3, groups_by_fold=[groups])
    expected = 2 * 1.959964 * np.sqrt(0.25 / 60)  # the bootstrap distribution's normal limit
    assert abs((high - low) - expected) < 0.03


def _grouped_runs(tmp_path, with_groups: bool):
    """joint right on clips 0-29, mlb on 0-44, of 60 clips in 6 groups of 10 (clip i in group i // 10)."""
    for method, right in (("joint", range(30)), ("mlb", range(45))):
        run_dir = _write_run(tmp_path, method, 0, set(right))
        pred = json.loads((run_dir / "test_predictions.json").read_text())
        if with_groups:
            pred["groups"] = [f"actor{int(clip[4:]) // 10}" for clip in pred["ids"]]
        (run_dir / "test_predictions.json").write_text(json.dumps(pred))
    return load_runs(tmp_path)


def test_rows_resample_groups_where_the_runs_recorded_them(tmp_path):
    grouped = compare_to_baselines(_grouped_runs(tmp_path / "a", True), n_resamples=4000)
    plain = compare_to_baselines(_grouped_runs(tmp_path / "b", False), n_resamples=4000)
    as_clips = compare_to_baselines(_grouped_runs(tmp_path / "c", True), n_resamples=4000, unit="clip")
    row, old, clip = (next(r for r in rows if r["method"] == "mlb") for rows in (grouped, plain, as_clips))
    assert (row["unit"], old["unit"], clip["unit"]) == ("group", "clip", "clip")
    assert row["mean_diff"] == old["mean_diff"] == clip["mean_diff"] == pytest.approx(0.25)
    assert row["test_high"] - row["test_low"] > clip["test_high"] - clip["test_low"]  # 6 groups, not 60 clips
    assert old["test_low"] == clip["test_low"] and old["test_high"] == clip["test_high"]
    assert row["ci_low"] is None and row["p"] is None and row["verdict"] == "not resolved"  # one run
    assert "| mlb | joint | 1 | one | group |" in stats_markdown(grouped)
    with pytest.raises(ValueError, match="unit='actor'"):
        compare_to_baselines(_grouped_runs(tmp_path / "d", True), unit="actor")


def test_the_evaluator_records_each_clips_group(tmp_path):
    """test_predictions.json carries the shards' groups beside the ids (the trainer's evaluate)."""
    import torch

    from mlb.train.evaluate import evaluate_split

    class Model(torch.nn.Module):
        def forward(self, batch):
            from types import SimpleNamespace

            logits = torch.nn.functional.one_hot(batch["label"], 6).float()  # [B, 6]
            return SimpleNamespace(fused=logits, unimodal={"audio": logits})

    class Loader:
        def iterate(self, epoch):
            yield {"id": ["a", "b"], "group": ["1001", "1002"], "label": torch.tensor([0, 3])}

    predictions: dict = {}
    evaluate_split(Model(), Loader(), torch.device("cpu"), None, 6, predictions=predictions)
    assert predictions["ids"] == ["a", "b"] and predictions["groups"] == ["1001", "1002"]


# --- small numbers of groups, runs on one test set ------------------------------------------------------


def test_a_few_groups_give_an_unbiased_variance_not_one_too_small_by_g_minus_1_over_g():
    """5 equal groups with means 0, .25, .5, .75, 1: the mean over groups has the textbook variance
    s² / G = .15625 / 5 = .03125 (s² the groups' sample variance). Drawing all G groups would give
    (G − 1) / G of it, .025; drawing G − 1 gives s² / G."""
    groups = np.repeat([f"actor{g}" for g in range(5)], 4)  # [20]
    correct = np.array([v for k in range(5) for v in [1.0] * k + [0.0] * (4 - k)])  # group g: g of 4 right
    _, stats = mlb.analysis.stats.bootstrap_statistics([correct], 40000, 0, [groups])
    assert stats.var() == pytest.approx(0.03125, rel=0.04)  # 0.025 is 20% off
    with pytest.raises(ValueError, match="one group"):
        paired_bootstrap([correct], n_resamples=10, groups_by_fold=[["same"] * 20])


def test_test_sets_are_classified_by_their_clip_ids():
    relation = mlb.analysis.stats.test_set_relation
    assert relation([["a", "b"], ["b", "a"], ["a", "b"]]) == "one"
    assert relation([["a", "b"], ["c"], ["d", "e"]]) == "disjoint"
    assert relation([["a", "b"], ["b", "c"]]) == "overlapping"


def test_runs_on_one_test_set_draw_the_same_clips_for_every_run(tmp_path):
    """Three seeds on one test set whose per-clip differences agree: the test-only interval is as wide as
    one seed's (the noise is shared), not sqrt(3) times narrower as for three independent test sets."""
    for fold in range(3):
        _write_run(tmp_path, "joint", fold, set(range(30)))
        _write_run(tmp_path, "mlb", fold, set(range(45)))
    (row,) = compare_to_baselines(load_runs(tmp_path), baselines=("joint",), n_resamples=20000)
    one_seed = paired_bootstrap([np.array([0.0] * 30 + [1.0] * 15 + [0.0] * 15)], n_resamples=20000)
    independent = paired_bootstrap([np.array([0.0] * 30 + [1.0] * 15 + [0.0] * 15)] * 3, n_resamples=20000)
    width = row["test_high"] - row["test_low"]
    assert width == pytest.approx(one_seed[2] - one_seed[1], abs=0.01)
    assert width / (independent[2] - independent[1]) == pytest.approx(np.sqrt(3), rel=0.08)


# --- the interval with retraining ------------------------------------------------------------------------


def test_without_test_noise_the_interval_is_scipys_one_sample_t_interval():
    diffs = [0.02, 0.05, -0.01, 0.04]
    expected = scipy.stats.ttest_1samp(diffs, 0.0)
    ci = expected.confidence_interval(0.95)
    for relation in ("one", "disjoint"):
        got = mlb.analysis.stats.retraining_interval(diffs, 0.0, 0.95, relation)
        assert (got["low"], got["high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert got["p"] == pytest.approx(expected.pvalue, abs=1e-12) and got["df"] == pytest.approx(3)


def test_the_test_variance_adds_to_the_runs_spread_with_satterthwaite_degrees_of_freedom():
    """Runs 0.01, 0.03, 0.05: s² = 0.0004, s²/K = 0.0004/3; V_test = 0.0002. SE² = 0.00033333;
    df = SE⁴ / ((s²/K)² / 2) = 1.1111e-7 / 8.8889e-9 = 12.5; half-width t(.975, 12.5) · SE."""
    got = mlb.analysis.stats.retraining_interval([0.01, 0.03, 0.05], 0.0002, 0.95, "one")
    se = np.sqrt(0.0004 / 3 + 0.0002)
    assert got["df"] == pytest.approx(12.5) and got["se"] == pytest.approx(se)
    half = scipy.stats.t.ppf(0.975, 12.5) * se
    assert (got["low"], got["high"]) == pytest.approx((0.03 - half, 0.03 + half))
    assert got["p"] == pytest.approx(2 * scipy.stats.t.sf(0.03 / se, 12.5))
    # disjoint test sets: each run's difference already carries its own test draw, V_test is not added
    disjoint = mlb.analysis.stats.retraining_interval([0.01, 0.03, 0.05], 0.0002, 0.95, "disjoint")
    assert disjoint["se"] == pytest.approx(np.sqrt(0.0004 / 3)) and disjoint["df"] == pytest.approx(2)
    assert mlb.analysis.stats.retraining_interval([0.01], 0.0002) is None  # one run: no spread
    with pytest.raises(ValueError, match="test_sets='same'"):
        mlb.analysis.stats.retraining_interval([0.01, 0.02], 0.0, 0.95, "same")


def test_a_difference_resolved_on_the_test_set_alone_is_not_when_the_seeds_disagree(tmp_path):
    """Five seeds on one test set of 60 clips: mlb beats joint by 10, 10, 10, −5, 0 points. On the test set
    alone (the pooled per-clip differences) the interval excludes 0; over the runs it does not."""
    gains = (6, 6, 6, -3, 0)  # clips mlb gets right beyond joint's 30, per seed
    for fold, gain in enumerate(gains):
        _write_run(tmp_path, "joint", fold, set(range(30)))
        _write_run(tmp_path, "mlb", fold, set(range(30 + gain)))
    (row,) = compare_to_baselines(load_runs(tmp_path), baselines=("joint",), n_resamples=20000)
    assert row["mean_diff"] == pytest.approx(0.05) and row["test_low"] > 0
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "not resolved"


# --- many comparisons -------------------------------------------------------------------------------------


def test_holm_adjusts_like_the_hand_computed_step_down():
    """p = .01, .04, .03, .005 (m = 4): sorted .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04 → kept
    from falling: .06. None is no test and does not count."""
    got = mlb.analysis.stats.holm([0.01, 0.04, None, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, None, 0.06, 0.02])
    assert mlb.analysis.stats.holm([0.5, 0.9]) == [1.0, 1.0]  # .5·2 capped at 1, and .9 not below it
    assert mlb.analysis.stats.holm([]) == []


def _runs_with_diffs(root, diffs_by_method: dict[str, tuple[int, ...]]):
    """Seeds on one test set of 60 clips; joint right on 0-29, each method on 30 + gain clips per seed."""
    for fold in range(len(next(iter(diffs_by_method.values())))):
        _write_run(root, "joint", fold, set(range(30)))
        for method, gains in diffs_by_method.items():
            _write_run(root, method, fold, set(range(30 + gains[fold])))
    return load_runs(root)


def test_a_verdict_resolved_alone_is_not_among_many_comparisons(tmp_path):
    """agm vs joint has a raw p a little under .05: alone it is better; beside three unresolved comparisons
    Holm multiplies its p by 4 (it is the smallest) and the verdict becomes not resolved."""
    agm = (4, 6, 2, 5, 3)  # +6.7, +10, +3.3, +8.3, +5 points
    alone = compare_to_baselines(_runs_with_diffs(tmp_path / "a", {"agm": agm}), ("joint",), n_resamples=4000)
    assert alone[0]["p"] == alone[0]["p_holm"] < 0.05 and alone[0]["verdict"] == "better"
    others = {"agm": agm, "pmr": (1, -1, 0, 2, -2), "mmcosine": (0, 1, -1, 0, 0), "mslr": (2, -2, 1, -1, 0)}
    many = compare_to_baselines(_runs_with_diffs(tmp_path / "b", others), ("joint",), n_resamples=4000)
    row = next(r for r in many if r["method"] == "agm")
    assert row["p"] == pytest.approx(alone[0]["p"]) and row["p"] < 0.05
    assert row["p_holm"] == pytest.approx(min(1.0, 4 * row["p"])) and row["p_holm"] >= 0.05
    assert row["verdict"] == "not resolved"


def test_a_pair_compared_both_ways_is_one_hypothesis(tmp_path):
    """mlb against joint and joint against mlb are one comparison: with agm beside them the family has
    three hypotheses (agm-joint, agm-mlb, mlb-joint), not four."""
    runs = _runs_with_diffs(tmp_path, {"mlb": (4, 6, 2, 5, 3), "agm": (1, -1, 0, 2, -2)})
    rows = {(r["method"], r["baseline"]): r for r in compare_to_baselines(runs, n_resamples=2000)}
    assert len(rows) == 4 and rows[("mlb", "joint")]["p"] == rows[("joint", "mlb")]["p"]
    p = {pair: rows[pair]["p"] for pair in (("mlb", "joint"), ("agm", "joint"), ("agm", "mlb"))}
    expected = mlb.analysis.stats.holm(list(p.values()))
    for pair, p_holm in zip(p, expected):
        assert rows[pair]["p_holm"] == pytest.approx(p_holm)
    assert rows[("joint", "mlb")]["p_holm"] == rows[("mlb", "joint")]["p_holm"]
