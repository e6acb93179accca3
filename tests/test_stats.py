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
    assert better["mean_diff"] == pytest.approx(0.25)
    # per fold 15 of 60 clips differ by +1: the mean of 3 folds has bootstrap sd ~0.032, so the
    # interval is about 0.25 ± 0.063
    assert 0.17 < better["ci_low"] < 0.22 and 0.28 < better["ci_high"] < 0.33
    unresolved = got[("mlb", "joint")]
    # above 0, but 33 of 60 clips per fold disagree: the interval is about ±0.1 wide
    assert (
        unresolved["mean_diff"] == pytest.approx(1 / 60) and unresolved["ci_low"] < 0 < unresolved["ci_high"]
    )
    missing = got[("ogm-ge", "joint")]
    assert "no test_predictions.json in" in missing["reason"] and "ogm-ge" in missing["reason"]
    assert missing["mean_diff"] is None
    json.dumps(rows)  # plain data: the rows go into a JSON file as they are


def test_compare_on_another_head(runs):
    rows = compare_to_baselines(runs, baselines=("joint",), head="audio", n_resamples=200)
    agm = next(r for r in rows if r["method"] == "agm")
    assert (agm["head"], agm["mean_diff"], agm["ci_low"], agm["ci_high"]) == ("audio", 0.0, 0.0, 0.0)
    assert agm["verdict"] == "not resolved"


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
        "| features | fusion | method | baseline | folds | resampled | Δ acc [CI] | Δ per fold | same sign | verdict "
        "| settings |"
    )
    assert lines[0] == head
    agm = next(line for line in lines if line.startswith("| raw | late-linear | agm | joint |"))
    assert re.fullmatch(
        r"\| raw \| late-linear \| agm \| joint \| 3 \| clip \| \+25\.0 \[\+\d\d\.\d, \+\d\d\.\d\] "
        r"\| \+25\.0, \+25\.0, \+25\.0 \| 3/3 \| better \| - / - \|",  # settings not recorded
        agm,
    )
    assert "| ogm-ge | joint | 0 | - | - | - | - | no predictions: no test_predictions.json in" in text
    assert "95% paired bootstrap percentile interval over the test set" in text  # these runs have no groups
    assert "drawn with replacement within each fold" in text and "whole interval is above 0" in text


def test_accuracy_interval_is_the_bootstrap_of_per_clip_correctness(runs):
    joint = _of(runs, "joint")
    estimate, low, high = accuracy_interval(joint, n_resamples=3000, seed=5)
    correct = [np.array([1.0] * 30 + [0.0] * 30)] * 3
    assert (estimate, low, high) == paired_bootstrap(correct, n_resamples=3000, seed=5)
    assert estimate == 0.5 and 0.39 < low < 0.45 and 0.55 < high < 0.61  # sd ~ sqrt(.25 / 180) ~ 0.037
    assert accuracy_interval(joint, head="audio", n_resamples=100) == (1.0, 1.0, 1.0)
    with pytest.raises(FileNotFoundError, match="no test_predictions.json"):
        accuracy_interval(_of(runs, "ogm-ge"))
    with pytest.raises(ValueError, match="runs is empty"):
        accuracy_interval([])


def test_figure_3_draws_intervals_when_every_run_has_predictions(runs, tmp_path):
    with_predictions = [r for r in runs if r["method"] != "ogm-ge"]
    bars, what = accuracy_bars(aggregate(with_predictions), runs=with_predictions)
    assert "95% bootstrap interval over test clips" in what
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
    assert row["ci_high"] - row["ci_low"] > clip["ci_high"] - clip["ci_low"]  # 6 groups, not 60 clips
    assert old["ci_low"] == clip["ci_low"] and old["ci_high"] == clip["ci_high"]
    assert "| mlb | joint | 1 | group |" in stats_markdown(grouped)
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
