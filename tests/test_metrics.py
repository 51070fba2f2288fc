"""Metrics against hand-computed values and against sklearn called directly."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from asit import metrics


def test_accuracy_and_top_k_by_hand():
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.05],  # predicts 0, true 0: top-1 hit
            [0.5, 0.3, 0.2],  # predicts 0, true 1: second best -> top-2 hit
            [0.6, 0.3, 0.1],  # predicts 0, true 2: third -> top-2 miss
            [0.1, 0.1, 0.8],  # predicts 2, true 2: hit
        ]
    )
    targets = torch.tensor([0, 1, 2, 2])
    assert metrics.accuracy(scores, targets) == pytest.approx(2 / 4)
    assert metrics.top_k_accuracy(scores, targets, k=2) == pytest.approx(3 / 4)
    assert metrics.top_k_accuracy(scores, targets, k=10) == 1.0  # k clipped to the class count


def test_confusion_matrix_rows_are_true_classes():
    scores = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float)
    targets = np.array([0, 1, 2, 2])
    cm = metrics.confusion_matrix(scores, targets, num_classes=3)
    expected = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(cm, expected)
    np.testing.assert_array_equal(metrics.confusion_matrix(np.array([0, 0, 2, 1]), targets, 3), expected)


def test_map_by_hand_and_against_sklearn():
    # Class 0: positives ranked 1st and 3rd -> AP = (1/1 + 2/3) / 2 = 5/6.
    # Class 1: single positive (score 0.2) ranked 3rd after 0.9 and 0.7 -> AP = 1/3.
    # Class 2: no positive at all -> left out and counted.
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.4, 0.2, 0.1], [0.1, 0.9, 0.5]])
    targets = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    m_ap, missing = metrics.mean_average_precision(scores, targets)
    assert missing == 1
    assert m_ap == pytest.approx((5 / 6 + 1 / 3) / 2)
    direct = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1)])
    assert m_ap == pytest.approx(direct)


def test_mean_auc_by_hand_and_against_sklearn():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.4, 0.2, 0.1], [0.1, 0.9, 0.5]])
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]])  # class 2 all positive: no AUC
    auc, missing = metrics.mean_auc(scores, targets)
    assert missing == 1
    # class 0: positive scores {0.9, 0.4} vs negatives {0.8, 0.1}: 3 of 4 pairs ordered -> 0.75
    # class 1: positive {0.2} vs negatives {0.1, 0.7, 0.9}: 1 of 3 -> 1/3
    assert auc == pytest.approx((0.75 + 1 / 3) / 2)
    direct = np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in (0, 1)])
    assert auc == pytest.approx(direct)


def test_d_prime():
    assert metrics.d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    # Phi^-1(0.8413447) = 1 (one standard deviation) -> d' = sqrt(2)
    assert metrics.d_prime(0.8413447460685429) == pytest.approx(math.sqrt(2), rel=1e-6)
    assert metrics.d_prime(0.3) == pytest.approx(-metrics.d_prime(0.7))
    with pytest.raises(ValueError):
        metrics.d_prime(1.5)


def test_classification_metrics_reports_percent():
    scores = torch.eye(6)[[0, 1, 2, 3, 4, 0]]
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    result = metrics.classification_metrics(scores, targets, multilabel=False)
    assert result["accuracy"] == pytest.approx(100 * 5 / 6)
    assert "top5_accuracy" in result
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.4], [0.3, 0.3]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    multi = metrics.classification_metrics(scores, targets, multilabel=True)
    # class 0 ranks perfectly (AP 1, AUC 1); class 1: positives 0.8 and 0.3 vs negatives 0.1 and 0.4
    # -> AUC 3/4, AP (1/1 + 2/3) / 2
    assert multi["mAP"] == pytest.approx(100 * (1 + 5 / 6) / 2)
    assert multi["mean_auc"] == pytest.approx(100 * (1 + 0.75) / 2)
    assert multi["d_prime"] == pytest.approx(metrics.d_prime((1 + 0.75) / 2))
    assert multi["classes_without_positives"] == 0
