"""The validate stage's summary: per test set (the internal test split, then each external set) one row per
regime with every metric's mean, sd and intervals, the paired differences against real-only and against each
control regime with as many made images (augment, lowpass, reconstruct, mixup: those that were run), and the
subgroup tables; written as summary.csv|json|md, comparisons.csv, subgroups.csv and subgroup_gaps.csv (each with
a ``test_set`` column)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.regimes import controls_for, parse_regime
from dermsynth.evaluate.stats import RunPredictions, compare, summarize
from dermsynth.evaluate.subgroups import GroupRule, gap_rows, subgroup_rows
from dermsynth.utils import json_safe, write_csv_atomic, write_json_atomic, write_text_atomic

TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "pauc_sens80", "sensitivity", "specificity", "f1")
Groups = dict[tuple[str, str], list[tuple[pd.DataFrame, RunPredictions]]]  # (regime, source) -> (train, run)


@dataclass
class TestSetSummary:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    subgroups: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)


def summarise_test_set(name: str, groups: Groups, labels: dict[str, pd.Series], classes: list[str],
                       config: ValidateConfig) -> TestSetSummary:
    """Every regime's metrics on one test set, its paired differences, and its subgroups."""
    out = TestSetSummary(name)
    runs = {key: [run for _, run in members] for key, members in groups.items()}
    baseline = runs.get(("real", ""), [])
    for (regime, source), members in groups.items():
        train = members[0][0]
        out.rows.append({"regime": regime, "source": source, "test_set": name, "seeds": len(members),
                         "train_images": len(train), "train_synthetic": int(train["synthetic"].sum()),
                         **summarize(runs[(regime, source)], config.bootstrap, config.confidence)})
        # Diffusion images vs each control with as many made images (a lowpass control of this source first).
        bases = [("real", baseline if regime != "real" else [])]
        bases += [(control, runs.get((control, source)) or runs.get((control, ""), []))
                  for control in controls_for(parse_regime(regime))]
        for base_name, base_runs in bases:
            for row in compare(runs[(regime, source)], base_runs, config.bootstrap, config.confidence):
                out.comparisons.append({"regime": regime, "source": source, "test_set": name,
                                        "baseline": base_name, **row})
    rule = GroupRule(config.subgroup_min_images, config.subgroup_min_per_class)
    out.subgroups = [{"test_set": name, **row} for (regime, source), members in runs.items()
                     for row in subgroup_rows(regime, source, members, labels, classes, rule, config.bootstrap,
                                              config.confidence)]
    plain = [{k: v for k, v in row.items() if k != "test_set"} for row in out.subgroups]
    out.gaps = [{"test_set": name, **row} for row in gap_rows(runs, labels, plain, config.confidence)]
    return out


def write_summary_files(root: Path, tables: list[TestSetSummary], config: ValidateConfig,
                        external: dict[str, dict[str, Any]], missing: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write every summary file; returns the summary and comparison tables (all test sets). ``missing``: runs
    of the plan not finished yet (a job-array shard not run, or killed), named so that none is lost silently."""
    internal, others = tables[0], tables[1:]
    summary = pd.DataFrame([row for t in tables for row in t.rows])
    comparisons = pd.DataFrame([row for t in tables for row in t.comparisons])
    write_csv_atomic(root / "summary.csv", summary)
    write_csv_atomic(root / "comparisons.csv", comparisons.drop(columns="per_seed_diff", errors="ignore"))
    write_csv_atomic(root / "subgroups.csv", pd.DataFrame([row for t in tables for row in t.subgroups]))
    write_csv_atomic(root / "subgroup_gaps.csv", pd.DataFrame([row for t in tables for row in t.gaps]))
    write_json_atomic(root / "summary.json", json_safe({
        "regimes": internal.rows, "comparisons": internal.comparisons, "subgroups": internal.subgroups,
        "subgroup_gaps": internal.gaps,
        "external": {t.name: {"regimes": t.rows, "comparisons": t.comparisons, "subgroups": t.subgroups,
                              "subgroup_gaps": t.gaps, **external.get(t.name, {})} for t in others},
        "confidence": config.confidence, "bootstrap": config.bootstrap, "missing_runs": missing}))
    text = _missing_markdown(missing)
    text += summary_markdown(pd.DataFrame(internal.rows), pd.DataFrame(internal.comparisons), config.confidence)
    text += subgroup_markdown(internal.gaps, internal.subgroups)
    for t in others:
        removed = len(external.get(t.name, {}).get("removed", []))
        text += (f"\n## External test set {t.name} ({external.get(t.name, {}).get('images', '?')} images; "
                 f"{removed} removed as duplicates of training images)\n\n")
        text += summary_markdown(pd.DataFrame(t.rows), pd.DataFrame(t.comparisons), config.confidence)
        absent = external.get(t.name, {}).get("absent_subgroups", [])
        if absent:
            text += f"\nSubgroups: no field {', '.join(absent)} in this set's metadata.\n"
        text += subgroup_markdown(t.gaps, t.subgroups)
    write_text_atomic(root / "summary.md", text)
    return summary, comparisons


def _missing_markdown(missing: list[str]) -> str:
    if not missing:
        return ""
    return (f"**Incomplete: {len(missing)} run(s) not finished yet** (rerun the same command, or the missing "
            f"shards, to add them): {', '.join(missing)}\n\n")


def subgroup_markdown(gaps: list[dict], rows: list[dict]) -> str:
    """The worst-group table: per regime and attribute, the worst and best group's AUROC and the gap."""
    if not rows:
        return ""
    small = sorted({f"{r['attribute']}={r['group']} ({r['images']})" for r in rows if r["status"] != "ok"})
    lines = ["", "Subgroups of the test split, AUROC x 100 (mean over seeds); the gap change is this regime's "
             "best-worst gap minus real-only's, mean over seeds [t-interval over seeds].", "",
             "| regime | attribute | worst group | best group | gap | gap change | reading |",
             "|---|---|---|---|---|---|---|"]
    for g in gaps:
        name = g["regime"] + (f" @{g['source']}" if g["source"] else "")
        change = "" if "gap_change" not in g else _fmt(g["gap_change"], g["gap_change_seed_ci_lo"],
                                                         g["gap_change_seed_ci_hi"], 100)
        lines.append(f"| {name} | {g['attribute']} | {g['worst_group']} {g['worst'] * 100:.1f} | {g['best_group']} "
                     f"{g['best'] * 100:.1f} | {g['gap'] * 100:.1f} | {change} | {g.get('reading', '')} |")
    if small:
        lines += ["", "Too small to report (test images): " + ", ".join(small) + "."]
    return "\n".join(lines) + "\n"


def _fmt(mean: float, lo: float, hi: float, scale: float) -> str:
    if math.isnan(mean):
        return "n/a"
    interval = "" if math.isnan(lo) else f" [{lo * scale:.1f}, {hi * scale:.1f}]"
    return f"{mean * scale:.1f}{interval}"


def summary_markdown(summary: pd.DataFrame, comparisons: pd.DataFrame, confidence: float) -> str:
    """The reference study's Table 1, extended: every metric with its two-level bootstrap interval (in %)."""
    level = f"{confidence:.0%}"
    lines = [f"Test metrics x 100, mean over seeds [{level} CI, bootstrap over seeds and test images]. "
             "pauc_sens80 x 100 ranges 0-20 (chance 2).", "",
             "| regime | seeds | train (synthetic) | " + " | ".join(TABLE_METRICS) + " |",
             "|---|---|---|" + "---|" * len(TABLE_METRICS)]
    for row in summary.to_dict("records"):
        name = row["regime"] + (f" @{row['source']}" if row["source"] else "")
        cells = [_fmt(row[f"{m}_mean"], row[f"{m}_ci_lo"], row[f"{m}_ci_hi"], 100) for m in TABLE_METRICS]
        lines.append(f"| {name} | {row['seeds']} | {row['train_images']} ({row['train_synthetic']}) | "
                     + " | ".join(cells) + " |")
    if not comparisons.empty:
        lines += ["", f"Paired difference regime - baseline (real-only, or a control with as many "
                  f"images made from the same real ones), x 100 (percentage points): {level} CI from the two-level "
                  "bootstrap, and the t-interval over seeds alone (with few seeds the bootstrap understates the seed "
                  "variance; trust the wider of the two).", "",
                  "| regime | baseline | metric | difference [bootstrap CI] | t-interval over seeds | p_boot "
                  "| seeds better |", "|---|---|---|---|---|---|---|"]
        for row in comparisons[comparisons["metric"].isin(TABLE_METRICS)].to_dict("records"):
            name = row["regime"] + (f" @{row['source']}" if row["source"] else "")
            seed_ci = "n/a" if math.isnan(row["seed_ci_lo"]) else \
                f"[{row['seed_ci_lo'] * 100:.1f}, {row['seed_ci_hi'] * 100:.1f}]"
            lines.append(f"| {name} | {row['baseline']} | {row['metric']} | "
                         f"{_fmt(row['diff'], row['ci_lo'], row['ci_hi'], 100)} | "
                         f"{seed_ci} | {row['p_boot']:.3f} | {row['seeds_better']}/{row['seeds']} |")
    return "\n".join(lines) + "\n"
