"""mlb.metrics against numbers computed by hand, and against scikit-learn as an independent reference."""

import warnings

import numpy as np
import pytest
import scipy.special
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from mlb.metrics import (
    accuracy,
    agreement_table,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    head_metrics,
    macro_f1,
    reliability_bins,
    softmax,
)

pytestmark = pytest.mark.unit


def test_ece_hand_example():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    # bin (13/15, 14/15]: two clips, accuracy 0.5, confidence 0.9 -> 2/4 * 0.4 = 0.2
    # bin (10/15, 11/15]: two clips, accuracy 1.0, confidence 0.7 -> 2/4 * 0.3 = 0.15
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.35)


def test_ece_bin_edges_are_right_closed():
    # Confidence exactly 1/3 lies in bin (4/15, 5/15]; with 2 bins 0.5 lies in (0, 0.5], 0.75 in (0.5, 1].
    p = np.array([[0.5, 0.5], [0.75, 0.25]])
    assert expected_calibration_error(p, np.array([0, 1]), num_bins=2) == pytest.approx(
        0.5 * 0.5 + 0.5 * 0.75
    )
    perfect = np.eye(3)
    assert expected_calibration_error(perfect, np.arange(3)) == 0.0


def test_macro_f1_hand_example():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    # F1: class 0 = 2/(2+1+1) = 0.5, class 1 = 4/(4+1+0) = 0.8, class 2 = 0; class 3 absent everywhere.
    assert macro_f1(labels, predictions, num_classes=4) == pytest.approx(1.3 / 3)
    assert accuracy(labels, predictions) == pytest.approx(0.6)
    assert confusion_matrix(labels, predictions, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_agreement_table_two_heads():
    audio = np.array([1, 1, 0, 0, 1], bool)
    video = np.array([1, 0, 1, 0, 0], bool)
    fused = np.array([1, 1, 0, 0, 0], bool)
    rows = agreement_table({"audio": audio, "video": video}, fused)
    assert rows == [
        {"audio_correct": False, "video_correct": False, "count": 1, "fused_accuracy": 0.0},
        {"audio_correct": False, "video_correct": True, "count": 1, "fused_accuracy": 0.0},
        {"audio_correct": True, "video_correct": False, "count": 2, "fused_accuracy": 0.5},
        {"audio_correct": True, "video_correct": True, "count": 1, "fused_accuracy": 1.0},
    ]


def test_agreement_table_three_heads_and_empty_groups():
    rows = agreement_table(
        {"a": np.array([1, 0]), "b": np.array([1, 0]), "c": np.array([0, 0])}, np.array([1, 1])
    )
    assert len(rows) == 8 and sum(r["count"] for r in rows) == 2
    by_key = {(r["a_correct"], r["b_correct"], r["c_correct"]): r for r in rows}
    assert by_key[(True, True, False)] == {
        "a_correct": True,
        "b_correct": True,
        "c_correct": False,
        "count": 1,
        "fused_accuracy": 1.0,
    }
    assert by_key[(True, True, True)]["fused_accuracy"] is None


def test_evaluate_bundles_every_head():
    labels = np.array([0, 1, 2, 1])
    fused = np.log(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]))
    audio = np.eye(3)[[0, 0, 2, 1]] * 5.0
    result = evaluate(labels, fused, {"audio": audio}, num_classes=3)
    assert result["num_samples"] == 4
    assert result["fused"]["accuracy"] == pytest.approx(0.75)
    # all four clips have confidence 0.8 (bin (11/15, 12/15]), accuracy 0.75 -> ECE 0.05
    assert result["fused"]["ece"] == pytest.approx(0.05)
    assert result["unimodal"]["audio"]["accuracy"] == pytest.approx(0.75)
    assert [r["count"] for r in result["agreement"]] == [1, 3]
    assert np.allclose(softmax(fused), np.exp(fused))


# --- scikit-learn as an independent reference (a test-only dependency, the `dev` extra) ---------------
# Conventions of mlb.metrics that these tests pin down:
# - predictions are the argmax of the (softmax of the) logits; on a tie the FIRST maximal class wins (numpy's
#   argmax; softmax keeps exact ties exact). `_first_max` below re-derives that without numpy's argmax.
# - macro_f1 averages F1 = 2TP/(2TP+FP+FN) over the classes that occur as a label or a prediction; a class
#   that is neither has 0/0 and is left out of the mean. That is scikit-learn's zero_division=np.nan (an
#   undefined F1 is NaN and excluded from the macro average), not zero_division=0 or 1, which would count
#   such a class as F1 = 0 or 1. A class that is predicted but never true (or the reverse) has F1 = 0 in both.
# - ECE / reliability bins: M equal-width bins, bin m (0-based) = (m/M, (m+1)/M], right-closed, with a
#   confidence of exactly 0 in the first bin. sklearn.calibration.calibration_curve(strategy="uniform") uses
#   the same right-closed bins (np.searchsorted on np.linspace(0, 1, M + 1), side="left") but only returns
#   the mean outcome and mean confidence of the non-empty bins, so the tests check those against it, and
#   the per-bin counts (which it does not return) against `_reference_bins`, a plain loop written here.
#   Float edges: mlb bins by ceil(conf * M) - 1, sklearn compares with np.linspace edges. Both agree on every
#   exact float edge for M in (1, 2, 3, 4, 8, 11, 15, 16). For other M, or one ulp from an edge, they can
#   disagree (e.g. M = 10: linspace's 3rd edge is 0.30000000000000004, which mlb puts in the bin above).
#   That is float rounding, not a different convention, so the random cases stay 1e-9 away from every
#   edge they do not hit exactly.

REFERENCE_CASES = [
    # (kind, seed, number of samples, number of classes, number of ECE bins)
    ("random", 0, 200, 6, 15),
    ("random", 1, 37, 2, 15),
    ("random", 2, 500, 10, 10),
    ("random", 3, 1, 4, 15),  # a single sample
    ("labels_miss_classes", 4, 120, 7, 15),
    ("never_predicted", 5, 150, 5, 15),
    ("neither_true_nor_predicted", 6, 90, 8, 4),
    ("single_class", 7, 25, 1, 15),  # C = 1
    ("single_class", 8, 40, 4, 15),  # C = 4, only class 3 anywhere
    ("ties", 9, 300, 3, 15),
    ("ties", 10, 64, 5, 8),
    ("all_correct", 11, 80, 5, 15),
    ("all_wrong", 12, 80, 5, 15),
    ("all_wrong", 13, 33, 2, 10),
]


def _case_id(case: tuple) -> str:
    kind, seed, n, c, bins = case
    return f"{kind}-seed{seed}-n{n}-c{c}-m{bins}"


def _reference_case(kind: str, seed: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labels [n] and logits [n, c] of one kind of case (see REFERENCE_CASES)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0.0, 2.0, (n, c))
    if kind == "labels_miss_classes":  # classes 1 and C-1 are never a label, but are predicted
        labels = rng.choice([k for k in range(c) if k not in (1, c - 1)], n)
    elif kind == "never_predicted":  # classes 0 and 2 are labels, but never win the argmax
        logits[:, [0, 2]] -= 100.0
    elif kind == "neither_true_nor_predicted":  # classes 3.. occur nowhere
        labels = rng.integers(0, 3, n)
        logits[:, 3:] -= 100.0
    elif kind == "single_class":  # only the last class, as label and as prediction
        labels = np.full(n, c - 1)
        logits[:, c - 1] += 10.0
    elif kind == "ties":  # small integer logits: many ties; the first quarter of the rows tie everywhere
        logits = rng.integers(0, 2, (n, c)).astype(np.float64)
        logits[: n // 4] = 1.0
    elif kind == "all_correct":
        logits[np.arange(n), labels] += 10.0
    elif kind == "all_wrong":
        wrong = (labels + rng.integers(1, c, n)) % c  # any class but the label
        logits[np.arange(n), wrong] += 10.0
    else:
        assert kind == "random", kind
    return labels, logits


def _first_max(scores: np.ndarray) -> np.ndarray:
    """Index of the first maximal entry of each row, in plain Python (not numpy's argmax). [N, C] -> [N]"""
    return np.array([row.index(max(row)) for row in scores.tolist()], dtype=np.int64)


def _reference_probabilities(logits: np.ndarray) -> np.ndarray:
    return scipy.special.softmax(logits, axis=1)


def _reference_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int) -> dict[str, np.ndarray]:
    """Count, correct count and confidence sum per bin [0, 1/M], (1/M, 2/M], ..., ((M-1)/M, 1], by masks."""
    confidence = probabilities.max(axis=1)
    correct = _first_max(probabilities) == labels
    edges = np.arange(num_bins + 1) / num_bins
    count, hits, confidence_sum = [], [], []
    for m in range(num_bins):
        in_bin = (confidence <= edges[m + 1]) & ((confidence > edges[m]) if m else True)
        count.append(int(in_bin.sum()))
        hits.append(int(correct[in_bin].sum()))
        confidence_sum.append(float(confidence[in_bin].sum()))
    assert sum(count) == len(labels)
    return {"count": np.array(count), "correct": np.array(hits), "confidence_sum": np.array(confidence_sum)}


def _sklearn_confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    with warnings.catch_warnings():  # sklearn warns on a 1x1 matrix even when `labels` is given (C = 1)
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return sk_confusion_matrix(labels, predictions, labels=range(num_classes))


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=_case_id)
def test_reference_cases_have_the_property_they_are_named_for(case):
    kind, seed, n, c, _ = case
    labels, logits = _reference_case(kind, seed, n, c)
    predictions = _first_max(logits)
    assert labels.shape == (n,) and logits.shape == (n, c)
    seen_labels, seen_predictions = set(labels.tolist()), set(predictions.tolist())
    if kind == "labels_miss_classes":
        assert {1, c - 1}.isdisjoint(seen_labels) and {1, c - 1} & seen_predictions
    elif kind == "never_predicted":
        assert {0, 2} <= seen_labels and {0, 2}.isdisjoint(seen_predictions)
    elif kind == "neither_true_nor_predicted":
        assert (seen_labels | seen_predictions) == {0, 1, 2}
    elif kind == "single_class":
        assert seen_labels == seen_predictions == {c - 1}
    elif kind == "ties":
        tied = (logits == logits.max(axis=1, keepdims=True)).sum(axis=1) > 1
        assert tied.mean() > 0.5
        # the tie-break decides: some tied rows are right only if the first maximal class wins
        last_max = c - 1 - _first_max(logits[:, ::-1])
        assert ((predictions == labels) != (last_max == labels)).sum() > 5
    elif kind == "all_correct":
        assert (predictions == labels).all()
    elif kind == "all_wrong":
        assert (predictions != labels).all()


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=_case_id)
def test_classification_metrics_match_sklearn(case):
    kind, seed, n, c, _ = case
    labels, logits = _reference_case(kind, seed, n, c)
    predictions = _first_max(logits)
    want_accuracy = accuracy_score(labels, predictions)
    # zero_division=np.nan: a class that is neither true nor predicted is left out of the mean (see above)
    want_f1 = f1_score(labels, predictions, average="macro", labels=range(c), zero_division=np.nan)
    want_matrix = _sklearn_confusion_matrix(labels, predictions, c)

    assert accuracy(labels, predictions) == pytest.approx(want_accuracy, abs=1e-12)
    assert macro_f1(labels, predictions, c) == pytest.approx(want_f1, abs=1e-12)
    assert confusion_matrix(labels, predictions, c).tolist() == want_matrix.tolist()
    # head_metrics takes the argmax itself (of the softmax), with the same first-maximum tie-break
    head = head_metrics(logits, labels, c)
    assert head["accuracy"] == pytest.approx(want_accuracy, abs=1e-12)
    assert head["macro_f1"] == pytest.approx(want_f1, abs=1e-12)
    assert head["confusion_matrix"] == want_matrix.tolist()


def test_macro_f1_zero_division_convention_is_sklearn_nan():
    # class 2: true, never predicted (F1 0); class 3: predicted, never true (F1 0); class 4: nowhere (0/0)
    labels = np.array([0, 0, 1, 1, 2, 1])
    predictions = np.array([0, 1, 1, 1, 0, 3])
    got = macro_f1(labels, predictions, num_classes=5)
    by_zero_division = {
        str(z): f1_score(labels, predictions, average="macro", labels=range(5), zero_division=z)
        for z in (0.0, 1.0, np.nan)
    }
    assert got == pytest.approx(by_zero_division["nan"], abs=1e-12)
    assert got != pytest.approx(by_zero_division["0.0"]) and got != pytest.approx(by_zero_division["1.0"])
    # ... which is also sklearn without `labels=` (the classes seen in either array), as the docstring says
    assert got == pytest.approx(f1_score(labels, predictions, average="macro"), abs=1e-12)


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=_case_id)
def test_reliability_bins_and_ece_match_calibration_curve_and_a_reference(case):
    kind, seed, n, c, num_bins = case
    labels, logits = _reference_case(kind, seed, n, c)
    probabilities = _reference_probabilities(logits)
    confidence = probabilities.max(axis=1)
    inner_edges = np.arange(1, num_bins) / num_bins  # nothing crosses 0 or 1
    off_edge = np.abs(confidence[:, None] - inner_edges) > 1e-9
    assert (off_edge | (confidence[:, None] == inner_edges)).all()  # see "Float edges" above

    want = _reference_bins(probabilities, labels, num_bins)
    got = reliability_bins(probabilities, labels, num_bins)
    assert got["count"] == want["count"].tolist()
    assert got["correct"] == want["correct"].tolist()
    assert np.allclose(got["confidence_sum"], want["confidence_sum"], rtol=1e-12, atol=1e-12)

    # calibration_curve on the binary problem "is the top class right?" with the top probability
    correct = (_first_max(probabilities) == labels).astype(np.int64)
    fraction_right, mean_confidence = calibration_curve(
        correct, confidence, n_bins=num_bins, strategy="uniform", pos_label=1
    )
    used = want["count"] > 0
    count = np.asarray(got["count"], dtype=np.float64)[used]
    assert np.allclose(np.asarray(got["correct"])[used] / count, fraction_right, rtol=0, atol=1e-12)
    assert np.allclose(np.asarray(got["confidence_sum"])[used] / count, mean_confidence, rtol=0, atol=1e-12)

    want_ece = float(np.sum(want["count"][used] / n * np.abs(fraction_right - mean_confidence)))
    assert expected_calibration_error(probabilities, labels, num_bins) == pytest.approx(want_ece, abs=1e-12)
    if num_bins == 15:  # head_metrics uses the default 15 bins, and its own softmax
        head = head_metrics(logits, labels, c)
        assert head["ece"] == pytest.approx(want_ece, abs=1e-9)
        assert head["reliability"]["count"] == want["count"].tolist()
        assert head["reliability"]["correct"] == want["correct"].tolist()


@pytest.mark.parametrize("num_bins", [15, 8, 4])
def test_reliability_bins_on_exact_edges_match_calibration_curve(num_bins):
    # one clip at every edge 0, 1/M, ..., 1: right-closed bins put 0 and 1/M into the first bin, m/M into
    # bin m-1. Only the top probability and its argmax matter here, so rows are [conf, 0] (not normalised).
    confidence = np.linspace(0.0, 1.0, num_bins + 1)
    probabilities = np.stack([confidence, np.zeros_like(confidence)], axis=1)
    labels = np.arange(num_bins + 1) % 2  # every other clip right (argmax 0)
    got = reliability_bins(probabilities, labels, num_bins)
    assert got["count"] == [2] + [1] * (num_bins - 1)
    assert got == {k: v.tolist() for k, v in _reference_bins(probabilities, labels, num_bins).items()}
    fraction_right, mean_confidence = calibration_curve(
        (labels == 0).astype(np.int64), confidence, n_bins=num_bins, strategy="uniform", pos_label=1
    )
    assert len(fraction_right) == num_bins  # every bin non-empty: the same bins as sklearn's
    assert np.allclose(np.array(got["correct"]) / got["count"], fraction_right, rtol=0, atol=1e-12)
    assert np.allclose(np.array(got["confidence_sum"]) / got["count"], mean_confidence, rtol=0, atol=1e-12)
