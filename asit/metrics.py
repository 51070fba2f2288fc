"""Evaluation metrics of the downstream tasks.

Single-label tasks (ESC-50, Speech Commands, VoxCeleb1) report accuracy; AudioSet, a multi-label
task, reports mean average precision (mAP), the mean area under the ROC curve (mean AUC) and the
d-prime derived from it, as AST, SSAST, Audio-MAE and ASiT do.

Every function takes NumPy arrays or torch tensors: ``scores`` is ``(N, C)`` (logits,
probabilities or any monotone score per class), ``targets`` is ``(N,)`` class indices for
single-label tasks or a ``(N, C)`` 0/1 multi-hot matrix for multi-label ones.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def accuracy(scores, targets) -> float:
    """Fraction of clips whose highest-scoring class is the true class (top-1 accuracy)."""
    return top_k_accuracy(scores, targets, k=1)


def top_k_accuracy(scores, targets, k: int = 5) -> float:
    """Fraction of clips whose true class is among the ``k`` highest-scoring classes.

    ``k`` larger than the number of classes is clipped (every clip then counts as correct).
    """
    scores, targets = _numpy(scores), _numpy(targets).astype(np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (N, C) and targets (N,), got {scores.shape} and {targets.shape}")
    if len(targets) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    k = min(k, scores.shape[1])
    # Stable ranking: ties are broken towards the lower class index, as argmax does.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return float((top == targets[:, None]).any(axis=1).mean())


def confusion_matrix(scores_or_predictions, targets, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class (sklearn's convention).

    Accepts either ``(N, C)`` scores (the argmax is taken) or ``(N,)`` predicted indices.
    """
    predictions = _numpy(scores_or_predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    return _sk_confusion_matrix(_numpy(targets).astype(np.int64), predictions.astype(np.int64), labels=np.arange(num_classes))


def _multilabel_inputs(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = _numpy(scores).astype(np.float64), _numpy(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"expected scores and multi-hot targets of the same (N, C) shape, got {scores.shape} and {targets.shape}")
    return scores, (targets > 0.5).astype(np.int64)  # mixup can leave soft targets: threshold at 0.5


def mean_average_precision(scores, targets) -> tuple[float, int]:
    """Mean over classes of the average precision (area under the precision-recall curve).

    Per class, sklearn's ``average_precision_score`` ranks every clip by that class's score and
    averages the precision reached at each true positive. A class with no positive clip in
    ``targets`` has no defined AP: it is left out of the mean and counted.

    Returns:
        ``(mAP, number of classes left out)``.
    """
    scores, targets = _multilabel_inputs(scores, targets)
    present = targets.sum(axis=0) > 0
    if not present.any():
        raise ValueError("no class has a positive example: mAP is undefined")
    ap = [average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)]
    return float(np.mean(ap)), int((~present).sum())


def mean_auc(scores, targets) -> tuple[float, int]:
    """Mean over classes of the ROC AUC: the probability that a random positive clip of the class
    scores higher than a random negative one (0.5 = chance, 1 = perfect ranking).

    A class whose clips are all positive or all negative has no defined AUC: it is left out of
    the mean and counted.

    Returns:
        ``(mean AUC, number of classes left out)``.
    """
    scores, targets = _multilabel_inputs(scores, targets)
    positives = targets.sum(axis=0)
    defined = (positives > 0) & (positives < len(targets))
    if not defined.any():
        raise ValueError("no class has both positive and negative examples: AUC is undefined")
    aucs = [roc_auc_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(defined)]
    return float(np.mean(aucs)), int((~defined).sum())


def d_prime(auc: float) -> float:
    """Sensitivity index d' = sqrt(2) * Phi^-1(AUC).

    The separation, in standard deviations, of two unit-variance Gaussians (positive and negative
    scores) whose ROC curve has this AUC: 0 for chance (AUC 0.5), about 2.33 for AUC 0.95,
    infinite for a perfect ranking (AUC 1). AST and its successors report it from the mean AUC.
    """
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"an AUC lies in [0, 1], got {auc}")
    return float(math.sqrt(2.0) * norm.ppf(auc))


def classification_metrics(scores, targets, multilabel: bool, top_k: int = 5) -> dict[str, float]:
    """The metrics a task reports, as a flat dict of numbers (for the results JSON).

    Accuracies, mAP and mean AUC are in **percent**, as in the paper's tables (the functions
    above return fractions, as sklearn does); d-prime is unitless.

    Single-label: ``accuracy`` and ``top{k}_accuracy`` (when there are more than ``k`` classes).
    Multi-label: ``mAP``, ``mean_auc``, ``d_prime`` and how many classes each left out.
    """
    if multilabel:
        m_ap, ap_missing = mean_average_precision(scores, targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            auc, auc_missing = mean_auc(scores, targets)
        return {
            "mAP": 100 * m_ap,
            "mean_auc": 100 * auc,
            "d_prime": d_prime(auc),
            "classes_without_positives": ap_missing,
            "classes_without_auc": auc_missing,
        }
    result = {"accuracy": 100 * accuracy(scores, targets)}
    num_classes = _numpy(scores).shape[1]
    if num_classes > top_k:
        result[f"top{top_k}_accuracy"] = 100 * top_k_accuracy(scores, targets, top_k)
    return result


__all__ = [
    "accuracy",
    "top_k_accuracy",
    "confusion_matrix",
    "mean_average_precision",
    "mean_auc",
    "d_prime",
    "classification_metrics",
]
