"""Metrics per subgroup of the test images (sex, age band, anatomic site, source, Fitzpatrick type), the worst
group, the best-worst gap, and whether a regime narrows or widens that gap against real-only.

A group below ``min_images`` test images, or below ``min_per_class`` of any class, is reported as too small and
never as a number: on a handful of images an AUROC is noise. Intervals are the same two-level bootstrap as the
overall metrics (over seeds and the group's test images). A regime's gap change is the mean over seeds of
(its gap - real-only's gap at the same seed), with a t-interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from dermsynth.errors import DermsynthError
from dermsynth.evaluate.stats import RunPredictions, run_metrics, summarize, t_interval

ATTRIBUTES = ("sex", "age_band", "anatom_site", "source", "fitzpatrick")
SUBGROUP_METRICS = ("auroc", "balanced_accuracy", "sensitivity", "specificity")
GAP_METRIC = "auroc"
AGE_BANDS = ((30, "<30"), (50, "30-49"), (70, "50-69"), (math.inf, ">=70"))


@dataclass(frozen=True)
class GroupRule:
    min_images: int = 30
    min_per_class: int = 10


def subgroup_labels(test: pd.DataFrame, fields: list[str] | None = None, where: str = "the test split",
                    absent: list[str] | None = None) -> dict[str, pd.Series]:
    """Per attribute, each image's group (NaN where unknown); age in bands. ``fields`` names the attributes; None
    takes those of ATTRIBUTES the metadata has. A named field the metadata lacks is an error (a typo must not pass
    unseen), unless ``absent`` is a list: then that field, and a field with no known value (a class-folder tree
    has empty sex/age/site columns), is skipped for this set and appended to ``absent``."""
    if fields is not None:
        columns = {*test.columns, "age_band"} if "age_approx" in test else set(test.columns)
        missing = [f for f in fields if f not in columns and not any(c.lower().startswith(f) for c in test.columns)]
        if missing and absent is None:
            raise DermsynthError(f"subgroups: no field {', '.join(map(repr, missing))} in the metadata of {where} "
                                 f"(it has: {', '.join(sorted(columns - {'path', 'prompt', 'image_id'}))})")
    labels: dict[str, pd.Series] = {}
    for attribute in fields if fields is not None else ATTRIBUTES:
        values = _attribute_values(test, attribute)
        if values is None or (absent is not None and not values.notna().any()):
            if fields is not None and absent is not None:
                absent.append(attribute)
            continue
        if fields is not None or (values.notna().any() and values.dropna().nunique() > 1):  # one group: no comparison
            labels[attribute] = values.reset_index(drop=True)
    return labels


def _attribute_values(test: pd.DataFrame, attribute: str) -> pd.Series | None:
    """Each image's group for one attribute (NaN where unknown), or None when the metadata has no such column."""
    if attribute == "age_band":
        if "age_approx" not in test:
            return None
        age = pd.to_numeric(test["age_approx"], errors="coerce")
        return age.map(lambda a: next(name for top, name in AGE_BANDS if a < top) if a == a else np.nan)
    column = next((c for c in test.columns if c.lower().startswith(attribute)), None)
    if column is None:
        return None
    return test[column].where(test[column].notna()).astype("object").map(
        lambda v: str(v) if v == v and v is not None else np.nan)


def _subset(run: RunPredictions, mask: np.ndarray) -> RunPredictions:
    return replace(run, targets=run.targets[mask], probs=run.probs[mask])


def subgroup_rows(regime: str, source: str, runs: Sequence[RunPredictions], labels: dict[str, pd.Series],
                  classes: list[str], rule: GroupRule, n_boot: int, confidence: float) -> list[dict]:
    """One row per (attribute, group): size, class counts, and the metrics or 'too small'."""
    rows = []
    for attribute, values in labels.items():
        for group in sorted(values.dropna().unique()):
            mask = (values == group).to_numpy()
            counts = np.bincount(runs[0].targets[mask], minlength=len(classes))
            row = {"regime": regime, "source": source, "attribute": attribute, "group": group,
                   "images": int(mask.sum()), **{f"n_{name}": int(n) for name, n in zip(classes, counts, strict=True)}}
            if mask.sum() < rule.min_images or counts.min() < rule.min_per_class:
                rows.append(row | {"status": "too small"})
                continue
            summary = summarize([_subset(run, mask) for run in runs], n_boot, confidence)
            metrics = {k: v for k, v in summary.items() if _metric_of(k) in SUBGROUP_METRICS}
            rows.append(row | {"status": "ok"} | metrics)
    return rows


def _metric_of(key: str) -> str:
    for suffix in ("_seed_ci_lo", "_seed_ci_hi", "_ci_lo", "_ci_hi", "_mean", "_sd"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _seed_gaps(runs: Sequence[RunPredictions], masks: dict[str, np.ndarray]) -> dict[int, float]:
    """Per seed: best minus worst group AUROC over the groups ``masks``."""
    gaps = {}
    for run in runs:
        values = [run_metrics(_subset(run, mask))[GAP_METRIC] for mask in masks.values()]
        values = [v for v in values if not math.isnan(v)]
        gaps[run.seed] = max(values) - min(values) if len(values) >= 2 else math.nan
    return gaps


def gap_rows(groups: dict[tuple[str, str], Sequence[RunPredictions]], labels: dict[str, pd.Series],
             rows: list[dict], confidence: float) -> list[dict]:
    """Per regime and attribute: the worst group, the best-worst gap in AUROC, and its change from real-only."""
    table = pd.DataFrame(rows)
    out: list[dict] = []
    if table.empty:  # no attribute with a known group in this set: nothing to compare
        return out
    for attribute, values in labels.items():
        for (regime, source), runs in groups.items():
            mine = table[(table["regime"] == regime) & (table["source"] == source)
                         & (table["attribute"] == attribute) & (table["status"] == "ok")]
            if len(mine) < 2:
                continue
            masks = {g: (values == g).to_numpy() for g in mine["group"]}
            worst, best = mine.loc[mine[f"{GAP_METRIC}_mean"].idxmin()], mine.loc[mine[f"{GAP_METRIC}_mean"].idxmax()]
            row = {"regime": regime, "source": source, "attribute": attribute, "metric": GAP_METRIC,
                   "groups": len(mine), "worst_group": worst["group"], "worst": worst[f"{GAP_METRIC}_mean"],
                   "best_group": best["group"], "best": best[f"{GAP_METRIC}_mean"],
                   "gap": best[f"{GAP_METRIC}_mean"] - worst[f"{GAP_METRIC}_mean"]}
            real = groups.get(("real", ""))
            if regime != "real" and real:
                mine_gaps, real_gaps = _seed_gaps(runs, masks), _seed_gaps(real, masks)
                diffs = [mine_gaps[s] - real_gaps[s] for s in mine_gaps if s in real_gaps]
                lo, hi = t_interval(diffs, confidence)
                row |= {"gap_change": float(np.nanmean(diffs)) if diffs else math.nan, "gap_change_seed_ci_lo": lo,
                        "gap_change_seed_ci_hi": hi, "reading": _reading(lo, hi)}
            out.append(row)
    return out


def _reading(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "one seed: no interval"
    if hi < 0:
        return "narrows the gap"
    if lo > 0:
        return "widens the gap"
    return "no clear change"
