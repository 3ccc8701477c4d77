"""Metric correctness against scikit-learn and (when installed) isic-challenge-scoring; bootstrap statistics."""

import math

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm

from dermsynth.classify.metrics import (
    classification_metrics,
    curve_metrics,
    unstandardize_mcclish,
    youden_threshold,
)
from dermsynth.evaluate.stats import RunPredictions, compare, image_intervals, summarize, t_interval


def _predictions(seed: int, n: int = 400, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels (~25 % positive) and informative, partly tied scores in [0, 1]."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    score = np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0, 1)
    return y, np.round(score, 2) if ties else score


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_scikit_learn(seed):
    y, score = _predictions(seed, ties=seed % 2 == 0)
    probs = np.c_[1 - score, score]
    metrics = classification_metrics(y, probs, threshold=0.5)
    assert metrics["auroc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    predicted = probs.argmax(1)
    assert metrics["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, predicted), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), abs=1e-12)
    # pAUC above 80 % sensitivity = sklearn's McClish-standardised pAUC(FPR <= 0.2) of the swapped problem, undone.
    swapped = skm.roc_auc_score(1 - y, -score, max_fpr=0.2)
    assert metrics["pauc_sens80"] == pytest.approx(unstandardize_mcclish(swapped, 0.2), abs=1e-12)
    at = score >= 0.5
    assert metrics["sensitivity"] == pytest.approx(skm.recall_score(y, at), abs=1e-12)
    assert metrics["specificity"] == pytest.approx(skm.recall_score(1 - y, ~at), abs=1e-12)
    assert metrics["f1"] == pytest.approx(skm.f1_score(y, at), abs=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # its rdp dependency, on numpy 2
def test_metrics_match_isic_challenge_scoring():
    classification = pytest.importorskip("isic_challenge_scoring.classification")
    for seed in range(4):
        y, score = _predictions(seed, ties=seed % 2 == 0)
        index = [f"ISIC_{i:07d}" for i in range(len(y))]
        truth = pd.DataFrame({"benign": 1.0 - y, "malignant": y.astype(float)}, index=index)
        prediction = pd.DataFrame({"benign": 1 - score, "malignant": score}, index=index)
        weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=index)
        isic = classification.ClassificationScore(truth, prediction, weights,
                                                  classification.ClassificationMetric.AUC)
        ours = classification_metrics(y, np.c_[1 - score, score])
        malignant = isic.per_category.loc["malignant"]
        assert abs(ours["auroc"] - malignant["auc"]) < 1e-6
        assert abs(ours["auc_sens_80"] - malignant["auc_sens_80"]) < 1e-6
        if not np.any(score == 0.5):  # isic scores a tied arg-max as wrong; ours picks the first class
            assert abs(ours["balanced_accuracy"] - isic.aggregate["balanced_accuracy"]) < 1e-6


def test_isic_auc_sens_80_relation_to_the_band_pauc():
    y, score = _predictions(11)
    metrics = curve_metrics(y == 1, score)
    fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    fpr_at_80 = np.interp(0.8, tpr, fpr)  # first point reaching 0.8: tpr is non-decreasing
    assert metrics["auc_sens_80"] == pytest.approx(metrics["pauc_sens80"] + 0.8 * (1 - fpr_at_80), abs=1e-9)


def test_perfect_and_chance_partial_auc():
    y = np.r_[np.zeros(50), np.ones(50)].astype(bool)
    assert curve_metrics(y, y.astype(float))["pauc_sens80"] == pytest.approx(0.2)
    assert curve_metrics(y, y.astype(float))["auc_sens_80"] == pytest.approx(1.0)
    assert curve_metrics(y, np.full(100, 0.5))["pauc_sens80"] == pytest.approx(0.02)


def test_single_class_gives_nan_not_an_error():
    y = np.zeros(20, dtype=int)
    probs = np.c_[np.linspace(0, 1, 20), 1 - np.linspace(0, 1, 20)]
    metrics = classification_metrics(y, probs, threshold=0.5)
    assert math.isnan(metrics["auroc"]) and math.isnan(metrics["pauc_sens80"]) and math.isnan(metrics["sensitivity"])
    assert metrics["specificity"] == pytest.approx(np.mean(probs[:, 1] < 0.5))
    assert youden_threshold(y == 1, probs[:, 1]) == 0.5


def test_youden_threshold_maximises_balanced_accuracy():
    y, score = _predictions(3)
    threshold = youden_threshold(y == 1, score)
    best = max(skm.balanced_accuracy_score(y, score >= t) for t in np.unique(score))
    assert skm.balanced_accuracy_score(y, score >= threshold) == pytest.approx(best)


def test_multiclass_macro_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[y] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    metrics = classification_metrics(y, probs)
    assert metrics["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert metrics["f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro"))
    assert math.isnan(metrics["sensitivity"])


def _runs(shift: float, seeds: int = 3) -> list[RunPredictions]:
    y, _ = _predictions(0)
    runs = []
    for s in range(seeds):
        noise = np.random.default_rng(100 + s).normal(0, 0.15, y.size)
        score = np.clip(0.4 + (0.2 + shift) * y + noise, 0, 1)
        runs.append(RunPredictions(s, y, np.c_[1 - score, score], 0.5))
    return runs


def test_t_interval_and_summary_intervals_contain_the_mean():
    assert math.isnan(t_interval([0.7])[0])
    lo, hi = t_interval([0.7, 0.8, 0.75])
    assert lo < 0.75 < hi
    row = summarize(_runs(0.0), n_boot=200)
    assert row["auroc_ci_lo"] < row["auroc_mean"] < row["auroc_ci_hi"]
    assert row["auroc_seed_ci_lo"] < row["auroc_mean"] < row["auroc_seed_ci_hi"]
    interval = image_intervals(_runs(0.0)[0], n_boot=200)["auroc"]
    assert interval[0] < interval[1]


def test_paired_comparison_detects_a_real_gain_and_not_a_null_one():
    baseline = _runs(0.0)
    same = {row["metric"]: row for row in compare(baseline, baseline, n_boot=200)}
    assert same["auroc"]["diff"] == 0 and same["auroc"]["ci_lo"] == 0 == same["auroc"]["ci_hi"]
    better = {row["metric"]: row for row in compare(_runs(0.3), baseline, n_boot=200)}
    assert better["auroc"]["diff"] > 0 and better["auroc"]["ci_lo"] > 0 and better["auroc"]["p_boot"] < 0.05
    assert better["auroc"]["seeds_better"] == 3
