"""Classification metrics for the validation stage, in plain numpy (fast enough to bootstrap thousands of times).

Definitions (binary: class 1 = positive = malignant; ``score`` = predicted probability of class 1):

- ``accuracy``, ``balanced_accuracy``: of the arg-max prediction (malignant when its probability exceeds 0.5),
  as the reference study reports accuracy. Balanced accuracy = mean of per-class recalls
  (= ``sklearn.metrics.balanced_accuracy_score``).
- ``auroc``: area under the ROC curve, ties counted one half (= ``sklearn.metrics.roc_auc_score``).
- ``pauc_sens80``: partial AUC above 80 % sensitivity: the area between the ROC curve and the line TPR = 0.8,
  i.e. the integral of (1 - FPR) over TPR from 0.8 to 1 (range 0 to 0.2; chance 0.02). This is the ISIC 2024
  challenge's pAUC; in scikit-learn terms it is ``roc_auc_score(1 - y, -score, max_fpr=0.2)`` with the McClish
  standardisation undone (see :func:`unstandardize_mcclish`): swapping the classes and negating the score turns
  "TPR >= 0.8" into "FPR' <= 0.2".
- ``auc_sens_80``: isic-challenge-scoring's (ISIC 2018-2020) metric of that name: the area under the ROC curve
  over the part of the curve where TPR >= 0.8, integrated over FPR (range 0 to 1; chance 0.18). It equals
  ``pauc_sens80 + 0.8 * (1 - FPR at TPR = 0.8)``.
- ``sensitivity``, ``specificity``, ``f1``, ``balanced_accuracy_at_threshold``: at a threshold chosen on the
  validation split (Youden's J, which is the same as maximising balanced accuracy), never on the test split.

Multi-class (``label_scheme: diagnosis``): accuracy and balanced accuracy of the arg-max; ``auroc``,
``pauc_sens80`` and ``auc_sens_80`` are one-vs-rest macro averages; ``f1`` is macro F1 of the arg-max; the
threshold metrics are NaN. A metric that is undefined on the given labels (AUROC with one class present) is
NaN, never an exception.
"""

from __future__ import annotations

import math

import numpy as np

MIN_TPR = 0.8
THRESHOLD_METRICS = ("sensitivity", "specificity", "f1", "balanced_accuracy_at_threshold")
METRICS = ("accuracy", "balanced_accuracy", "auroc", "pauc_sens80", "auc_sens_80", *THRESHOLD_METRICS)


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score, from (0, 0) to (1, 1); thresholds decreasing (first is +inf).

    NaN arrays when ``y`` holds a single class.
    """
    y = np.asarray(y, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        nan = np.array([math.nan])
        return nan, nan, nan
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    sorted_score, sorted_y = np.asarray(score, dtype=np.float64)[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_score)), sorted_y.size - 1]
    tps = np.cumsum(sorted_y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    return fpr, tpr, np.r_[np.inf, sorted_score[last_of_tie]]


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _fpr_at_tpr(fpr: np.ndarray, tpr: np.ndarray, min_tpr: float) -> tuple[float, int]:
    """FPR where the curve first reaches ``min_tpr`` (linear interpolation) and the index of the first point at
    or above it."""
    index = int(np.searchsorted(tpr, min_tpr, side="left"))  # >= 1: tpr[0] == 0 < min_tpr
    lo = index - 1
    return float(fpr[lo] + (fpr[index] - fpr[lo]) * (min_tpr - tpr[lo]) / (tpr[index] - tpr[lo])), index


def curve_metrics(y: np.ndarray, score: np.ndarray, min_tpr: float = MIN_TPR) -> dict[str, float]:
    """AUROC, ``pauc_sens80`` and ``auc_sens_80`` from one ROC curve (see the module docstring)."""
    fpr, tpr, _ = roc_curve(y, score)
    if math.isnan(fpr[0]):
        return {"auroc": math.nan, "pauc_sens80": math.nan, "auc_sens_80": math.nan}
    fpr_star, index = _fpr_at_tpr(fpr, tpr, min_tpr)
    seg_fpr, seg_tpr = np.r_[fpr_star, fpr[index:]], np.r_[min_tpr, tpr[index:]]
    isic = _area(seg_fpr, seg_tpr)
    return {"auroc": _area(fpr, tpr), "pauc_sens80": isic - min_tpr * (1.0 - fpr_star), "auc_sens_80": isic}


def unstandardize_mcclish(standardized: float, max_fpr: float) -> float:
    """Undo scikit-learn's McClish correction of ``roc_auc_score(..., max_fpr=m)``: the raw partial area."""
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return min_area + (2.0 * standardized - 1.0) * (max_area - min_area)


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity - 1 (ties: the highest threshold).

    Predictions are positive when ``score >= threshold``. 0.5 when ``y`` holds a single class.
    """
    fpr, tpr, thresholds = roc_curve(y, score)
    if math.isnan(fpr[0]):
        return 0.5
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1  # skip the +inf point (nothing predicted positive)
    return float(thresholds[best])


def _binary_counts(y: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum(predicted & y))
    fp = int(np.sum(predicted & ~y))
    fn = int(np.sum(~predicted & y))
    return tp, fp, fn, int(y.size) - tp - fp - fn


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def threshold_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, F1 and balanced accuracy of ``score >= threshold``."""
    y = np.asarray(y, dtype=bool)
    tp, fp, fn, tn = _binary_counts(y, np.asarray(score) >= threshold)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy_at_threshold": (sensitivity + specificity) / 2,
    }


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's definition)."""
    recalls = [np.mean(predicted[y == c] == c) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else math.nan


def macro_f1(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp, fp, fn, _ = _binary_counts(y == c, predicted == c)
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan


def classification_metrics(y: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """All metrics of ``METRICS`` for integer labels ``y`` (N,) and class probabilities ``probs`` (N, K).

    ``threshold`` (binary only) is the validation-chosen threshold on ``probs[:, 1]``; None leaves the
    threshold metrics NaN.
    """
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    predicted = np.argmax(probs, axis=1)
    out = {"accuracy": float(np.mean(predicted == y)) if y.size else math.nan,
           "balanced_accuracy": balanced_accuracy(y, predicted, n_classes)}
    if n_classes == 2:
        out |= curve_metrics(y == 1, probs[:, 1])
        nan_threshold = dict.fromkeys(THRESHOLD_METRICS, math.nan)
        out |= threshold_metrics(y == 1, probs[:, 1], threshold) if threshold is not None else nan_threshold
        return out
    per_class = [curve_metrics(y == c, probs[:, c]) for c in range(n_classes)]
    for key in ("auroc", "pauc_sens80", "auc_sens_80"):
        values = [m[key] for m in per_class if not math.isnan(m[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    out |= dict.fromkeys(THRESHOLD_METRICS, math.nan)
    out["f1"] = macro_f1(y, predicted, n_classes)
    return out


def cross_entropy(y: np.ndarray, probs: np.ndarray) -> float:
    picked = np.clip(np.asarray(probs)[np.arange(len(y)), np.asarray(y)], 1e-12, 1.0)
    return float(-np.mean(np.log(picked)))
