"""mlb.metrics against numbers computed by hand."""

import numpy as np
import pytest

from mlb.metrics import (
    accuracy,
    agreement_table,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    macro_f1,
    softmax,
)


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
