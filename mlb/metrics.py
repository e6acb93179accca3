"""Evaluation metrics as pure numpy functions (the paper's training protocol).

Accuracy and macro-F1 of the fused output and of each unimodal head, Expected Calibration Error with 15
equal-width bins (Guo et al. 2017), the agreement table of the paper's Figure 4 for any number of heads,
and confusion matrices. `evaluate` bundles them into one JSON-ready dict.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits. [N, C] -> [N, C]"""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean()) if labels.size else float("nan")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts; rows are the true class, columns the predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in `labels` or `predictions`.

    (A class that is neither true nor predicted anywhere has no defined F1 and is left out, as
    scikit-learn does without `labels=`.) F1 = 2 TP / (2 TP + FP + FN).
    """
    matrix = confusion_matrix(labels, predictions, num_classes)
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp  # predicted as c, not c
    fn = matrix.sum(axis=1) - tp  # c, predicted as something else
    present = (tp + fp + fn) > 0
    if not present.any():
        return float("nan")
    return float((2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])).mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over bins of |B_m|/n * |acc(B_m) - conf(B_m)|.

    Confidence = the top probability; bins are equal-width, B_m = confidences in ((m-1)/M, m/M] (a
    confidence of exactly 0 goes to the first bin). Empty bins add nothing. [N, C], [N] -> float
    """
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if not len(labels):
        return float("nan")
    rel = reliability_bins(probabilities, labels, num_bins)
    count, correct, confidence = (
        np.asarray(rel[k], dtype=np.float64) for k in ("count", "correct", "confidence_sum")
    )
    used = count > 0
    # |B_m|/n * |acc(B_m) - conf(B_m)| = |correct_m - confidence_sum_m| / n
    return float(np.abs(correct[used] - confidence[used]).sum() / len(labels))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict[str, list]:
    """Per equal-width confidence bin: clip count, correct count and the sum of confidences.

    Sums (not means) so that bins pool exactly over runs (the reliability diagram over seeds).
    Bin m holds confidences in ((m-1)/M, m/M]; a confidence of exactly 0 goes to the first bin.
    """
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    confidence = probabilities.max(axis=1)  # [N]
    correct = probabilities.argmax(axis=1) == labels  # [N]
    # ceil(conf * M) - 1 is the index of the bin ((m-1)/M, m/M]; clip puts 0 into bin 0.
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)  # [N]
    return {
        "count": np.bincount(bins, minlength=num_bins).tolist(),
        "correct": np.bincount(bins, weights=correct, minlength=num_bins).astype(np.int64).tolist(),
        "confidence_sum": np.bincount(bins, weights=confidence, minlength=num_bins).tolist(),
    }


def agreement_table(head_correct: Mapping[str, np.ndarray], fused_correct: np.ndarray) -> list[dict]:
    """Paper Figure 4, for M heads: clips grouped by which unimodal heads are right.

    One row per combination of (head 1 correct?, ..., head M correct?), all 2^M of them in a fixed order
    (all wrong first), with the clip count and the fused accuracy in the group (None when empty).
    """
    names = list(head_correct)
    fused_correct = np.asarray(fused_correct, dtype=bool)
    rows = []
    for combination in itertools.product([False, True], repeat=len(names)):
        in_group = np.ones_like(fused_correct)
        for name, want in zip(names, combination):
            in_group &= np.asarray(head_correct[name], dtype=bool) == want
        count = int(in_group.sum())
        rows.append(
            {
                **{f"{name}_correct": want for name, want in zip(names, combination)},
                "count": count,
                "fused_accuracy": float(fused_correct[in_group].mean()) if count else None,
            }
        )
    return rows


def head_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1, ECE and confusion matrix of one head's logits. [N, C], [N] -> dict"""
    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    predictions = probabilities.argmax(axis=1)
    return {
        "accuracy": accuracy(labels, predictions),
        "macro_f1": macro_f1(labels, predictions, num_classes),
        "ece": expected_calibration_error(probabilities, labels),
        "reliability": reliability_bins(probabilities, labels),
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
    }


def evaluate(
    labels: np.ndarray, fused_logits: np.ndarray, unimodal_logits: Mapping[str, np.ndarray], num_classes: int
) -> dict:
    """All metrics of one split: `fused`, one entry per unimodal head, and the agreement table."""
    labels = np.asarray(labels)
    fused_correct = np.asarray(fused_logits).argmax(axis=1) == labels
    result = {"num_samples": len(labels), "fused": head_metrics(fused_logits, labels, num_classes)}
    result["unimodal"] = {m: head_metrics(lg, labels, num_classes) for m, lg in unimodal_logits.items()}
    if unimodal_logits:
        correct = {m: np.asarray(lg).argmax(axis=1) == labels for m, lg in unimodal_logits.items()}
        result["agreement"] = agreement_table(correct, fused_correct)
    return result
