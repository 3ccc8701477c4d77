"""The report's validation section: per-run curves, the results table, differences, external sets, subgroups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dermsynth.report import figures
from dermsynth.report.folder import VALIDATION, RunFolder, Section, figure
from dermsynth.report.format import table
from dermsynth.report.results import (
    REFERENCE_STUDY,
    external_sections,
    headline,
    majority,
    paired_differences,
    results_table,
    subgroup_table,
    too_small_groups,
)


def validation_runs(root: Path) -> list[dict[str, Any]]:
    """Every finished run (as validate reads them): its regime label, seed, metrics and per-epoch history."""
    from dermsynth.evaluate.runs import finished_runs

    runs = [{"folder": r.folder.parent.name, "regime": r.regime, "source": r.source, "seed": r.seed,
             "metrics": r.metrics, "history": r.history} for r in finished_runs(root)]
    many_sources = len({r["source"] for r in runs if r["source"]}) > 1
    for item in runs:
        item["label"] = item["regime"] + (f" @{item['source']}" if many_sources and item["source"] else "")
    return runs


def validation_section(run: RunFolder) -> Section | None:
    root = run.path(VALIDATION)
    summary, info = run.json(VALIDATION, "summary.json"), run.json(VALIDATION, "validate.json")
    runs = validation_runs(root) if root.is_dir() else []
    if summary is None and not runs:
        return None
    confidence = float((summary or {}).get("confidence", 0.95))
    results = results_table(summary) if summary else None
    n_classes = len((info or {}).get("classes") or ["", ""])
    diff_table, verdicts = paired_differences(summary, n_classes) if summary else (None, [])
    return {
        "level": f"{confidence * 100:.0f} %",
        "bootstrap": (summary or {}).get("bootstrap"),
        "facts": table(["", ""], _validation_facts(info, runs)),
        "results": results,
        "differences": diff_table,
        "verdicts": verdicts,
        "headline": headline(verdicts),
        "subgroups": subgroup_table(summary) if summary else None,
        "external": external_sections(summary, n_classes) if summary else [],
        "too_small": too_small_groups(summary) if summary else "",
        "curves": _curves_figure(runs),
        "reference": REFERENCE_STUDY,
        "unfinished": summary is None,
    }


def _validation_facts(info: dict | None, runs: list[dict]) -> list[tuple[str, Any]]:
    info = info or {}
    config = info.get("config", {})
    settings = runs[0]["metrics"].get("settings", {}) if runs else {}
    test_counts = info.get("counts", {}).get("test", {})
    facts = [("classifier", config.get("model", "n/a")), ("input size", info.get("image_size", "n/a")),
             ("epochs (max)", settings.get("epochs", "n/a")),
             ("learning rate", settings.get("learning_rate", settings.get("lr", "n/a"))),  # lr: older runs
             ("batch size", settings.get("batch_size", "n/a")),
             ("seeds", ", ".join(str(s) for s in sorted({r['seed'] for r in runs})) or "n/a"),
             ("regimes", ", ".join(dict.fromkeys(r["label"] for r in runs)) or "n/a"),
             ("test images (real)", ", ".join(f"{k} {v}" for k, v in test_counts.items()) or "n/a"),
             ("accuracy of always predicting the majority class", majority(test_counts)),
             ("checkpoint selection", "best epoch on the real validation split; the test split is used once"),
             ("device", info.get("device", "n/a"))]
    return facts


def _curves_figure(runs: list[dict[str, Any]]) -> dict[str, str] | None:
    frames: dict[str, list[pd.DataFrame]] = {}
    for item in runs:
        if item["history"] is not None and len(item["history"]):
            frames.setdefault(item["label"], []).append(item["history"].assign(seed=item["seed"]))
    if not frames:
        return None
    order = sorted(frames, key=lambda label: label != "real")  # the baseline first, then as the runs appear
    curves = {label: pd.concat(frames[label], ignore_index=True) for label in order}
    every = pd.concat(curves.values(), ignore_index=True)
    panels = [(c, t) for c, t in (("test_accuracy", "test accuracy"), ("test_auroc", "test AUROC"))
              if c in every and every[c].notna().any()]
    note = "Test metrics per epoch are recorded for this plot only; checkpoints are chosen on the validation split."
    if not panels:
        panels = [(c, t) for c, t in (("val_accuracy", "validation accuracy"), ("val_auroc", "validation AUROC"))
                  if c in every and every[c].notna().any()]
        note = "Per-epoch test metrics were not recorded (track_test off): validation metrics are shown instead."
    if not panels:
        return None
    return figure(figures.metric_curves(curves, panels),
                  f"Mean over seeds per epoch, band ± 1 sd (the reference study's Figure 4). {note}",
                  "test accuracy per epoch for each regime")
