"""How sure is the answer: intervals over seeds, over test images, and both; paired regime comparisons.

Three intervals per metric and regime (all at ``confidence``, default 95 %):

- ``image`` (per run, in metrics.json): percentile bootstrap over test images, the run's model fixed;
- ``seed``: Student-t interval of the per-seed values (training randomness only; NaN with one seed);
- ``ci`` (the headline): two-level percentile bootstrap: each replicate draws the seeds with replacement *and*
  the test images with replacement (the same images for every drawn seed, since all runs share the test set),
  and averages the metric over the drawn seeds. It covers both sources of uncertainty.

A comparison ``regime - real`` is paired: within a replicate both regimes use the same drawn seeds (a seed
fixes the real training subset, initialisation and data order in both) and the same drawn test images, and the
replicate's value is the mean over drawn seeds of the per-seed difference. ``p_boot`` is the two-sided
bootstrap p-value 2 * min(P(diff <= 0), P(diff >= 0)).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from dermsynth.classify.metrics import METRICS, classification_metrics


@dataclass
class RunPredictions:
    """One finished run's test predictions, rows in the same image order for every run."""

    seed: int
    targets: np.ndarray
    probs: np.ndarray
    threshold: float | None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if values.size < 2:
        return math.nan, math.nan
    half = scipy_stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def run_metrics(run: RunPredictions, index: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one run on all test images, or on the rows ``index`` (a bootstrap resample)."""
    if index is None:
        return classification_metrics(run.targets, run.probs, run.threshold)
    return classification_metrics(run.targets[index], run.probs[index], run.threshold)


def _replicates(runs: Sequence[RunPredictions], baseline: Sequence[RunPredictions] | None, n_boot: int,
                seed: int) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the seed-mean metric (or of the seed-mean paired difference)."""
    rng = np.random.default_rng(seed)
    n_images = runs[0].targets.size
    out = {name: np.empty(n_boot) for name in METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-one-class resample gives NaN, counted as such
        for b in range(n_boot):
            drawn = rng.integers(0, len(runs), len(runs))
            index = rng.integers(0, n_images, n_images)
            per_seed = {}
            for s in set(drawn.tolist()):
                value = run_metrics(runs[s], index)
                if baseline is not None:
                    base = run_metrics(baseline[s], index)
                    value = {k: value[k] - base[k] for k in METRICS}
                per_seed[s] = value
            for name in METRICS:
                out[name][b] = np.mean([per_seed[s][name] for s in drawn])
    return out


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size < 0.5 * values.size:  # mostly undefined (e.g. single-class test split)
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


def image_intervals(run: RunPredictions, n_boot: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, list[float]]:
    """Per-run bootstrap over test images: {metric: [lo, hi]}."""
    replicates = _replicates([run], None, n_boot, seed)
    return {name: list(_percentile(replicates[name], confidence)) for name in METRICS}


def summarize(runs: Sequence[RunPredictions], n_boot: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> dict[str, float]:
    """Mean, sd, seed interval and two-level bootstrap interval of every metric over ``runs``."""
    per_seed = [run_metrics(run) for run in runs]
    replicates = _replicates(runs, None, n_boot, seed)
    row: dict[str, float] = {}
    for name in METRICS:
        values = np.array([m[name] for m in per_seed])
        row[f"{name}_mean"] = float(np.mean(values))
        row[f"{name}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        row[f"{name}_seed_ci_lo"], row[f"{name}_seed_ci_hi"] = t_interval(values, confidence)
        row[f"{name}_ci_lo"], row[f"{name}_ci_hi"] = _percentile(replicates[name], confidence)
    return row


def compare(runs: Sequence[RunPredictions], baseline: Sequence[RunPredictions], n_boot: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> list[dict[str, float]]:
    """Paired ``runs - baseline`` per metric over the seeds both have; one dict per metric."""
    by_seed = {run.seed: run for run in baseline}
    pairs = [(run, by_seed[run.seed]) for run in runs if run.seed in by_seed]
    if not pairs:
        return []
    mine, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    replicates = _replicates(mine, theirs, n_boot, seed)
    full = [(run_metrics(a), run_metrics(b)) for a, b in pairs]
    rows = []
    for name in METRICS:
        diffs = np.array([a[name] - b[name] for a, b in full])
        lo, hi = _percentile(replicates[name], confidence)
        finite = replicates[name][~np.isnan(replicates[name])]
        p_boot = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))) if finite.size else math.nan
        seed_lo, seed_hi = t_interval(diffs, confidence)
        rows.append({"metric": name, "seeds": len(pairs), "diff": float(np.mean(diffs)), "ci_lo": lo, "ci_hi": hi,
                     "seed_ci_lo": seed_lo, "seed_ci_hi": seed_hi, "p_boot": float(p_boot),
                     "seeds_better": int(np.sum(diffs > 0)), "per_seed_diff": diffs.round(6).tolist()})
    return rows
