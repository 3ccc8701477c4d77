"""The report's domain-shift part: does the synthetic set move the training distribution towards each external
site (``dermsynth domain-shift``), and did the classifier trained on that mix gain there (validate's external
results)? The two side by side show a reader whether the margin rule guessed right on this run's sites."""

from __future__ import annotations

from typing import Any

from dermsynth.layout import RUN_FOLDERS
from dermsynth.report.folder import RunFolder, Section
from dermsynth.report.format import finite, fmt, interval, table

# Stated with the table whatever it shows: the rule was measured and failed (docs/validation.md).
CAVEAT = ("On three public sites (UDA-1, Derm7pt, PH2) neither margin predicted the sign of the classifier's "
          "change (docs/validation.md): read the margins as a description of where the images move training, "
          "and trust synthetic data for a site only where a labelled sample of it shows a gain over real-only and "
          "the control regimes.")


def domain_shift_section(run: RunFolder) -> Section | None:
    record = run.json(RUN_FOLDERS["domain_shift"], "domain_shift.json")
    if record is None:
        return None
    regime = f"hybrid:{record['fraction']:g}"
    summary = run.json(RUN_FOLDERS["validate"], "summary.json") or {}
    features = record.get("feature_shift") or {}
    rows, matches = [], []
    for site, info in record["sites"].items():
        stats = info["summary"]
        feature = (features.get(site) or {}).get("summary") or {}
        change = observed_change(summary, site, regime, record.get("synthetic"))
        outcome = _outcome(change)
        guesses = [_guess(stats.get("margin")), *([_guess(feature.get("margin"))] if features else [])]
        matches += [(guess, outcome) for guess in guesses]
        rows.append([site, fmt(stats.get("distance_train"), 2), fmt(stats.get("distance_mix"), 2),
                     fmt(stats.get("margin"), 2), *([_relative(feature.get("relative_margin"))] if features else []),
                     " / ".join(guesses), _observed_text(change), outcome])
    header = ["site", "statistics: from training", "from the mix", "margin",
              *(["features: relative margin"] if features else []), "rule's guess" + (
                  " (statistics / features)" if features else ""), f"{regime} − real, AUROC points [CI]", "observed"]
    return {"regime": regime, "table": table(header, rows), "feature_space": record.get("feature_space"),
            "sentences": [info["sentence"] for info in record["sites"].values()],
            "verdict": _verdict(matches, regime), "caveat": CAVEAT}


def observed_change(summary: dict[str, Any], site: str, regime: str, source: str | None) -> dict[str, Any] | None:
    """The paired AUROC difference ``regime`` − real on ``site`` from validate's summary (the run of the same
    synthetic folder where several were validated), or None when validate did not test that site or regime."""
    rows = [c for c in ((summary.get("external") or {}).get(site) or {}).get("comparisons", [])
            if c.get("regime") == regime and c.get("baseline") == "real" and c.get("metric") == "auroc"]
    if len(rows) > 1:
        rows = [c for c in rows if c.get("source") == source] or rows[:1]
    return rows[0] if rows else None


def _outcome(change: dict[str, Any] | None) -> str:
    if change is None or not finite(change.get("ci_lo")) or not finite(change.get("ci_hi")):
        return "not measured"
    return "gain" if change["ci_lo"] > 0 else "loss" if change["ci_hi"] < 0 else "no clear change"


def _guess(margin: Any) -> str:
    return "n/a" if not finite(margin) else "gain" if margin > 0 else "loss"


def _relative(value: Any) -> str:
    return f"{value * 100:+.0f} %" if finite(value) else "n/a"


def _observed_text(change: dict[str, Any] | None) -> str:
    if change is None:
        return "not run"
    text = interval(change.get("diff"), change.get("ci_lo"), change.get("ci_hi"), signed=True)
    return f"{text} ({change.get('seeds_better')}/{change.get('seeds')} seeds)" if change.get("seeds") else text


def _verdict(matches: list[tuple[str, str]], regime: str) -> str:
    decided = [(guess, outcome) for guess, outcome in matches if outcome in ("gain", "loss") and guess != "n/a"]
    if not decided:
        return (f"No site shows a clear {regime} gain or loss in this run, so the margins' guesses cannot be checked "
                "here.")
    right = sum(guess == outcome for guess, outcome in decided)
    return (f"Where {regime} changed AUROC clearly, the margins guessed the sign {right} of {len(decided)} times "
            "(each margin and site counted once).")
