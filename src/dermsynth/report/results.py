"""The classifier results: Table 1 (extended), the paired differences regime − real, and verdicts that never
claim more than their confidence intervals allow."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dermsynth.errors import DermsynthError
from dermsynth.evaluate.regimes import parse_regime
from dermsynth.report.format import finite, fmt, interval, table

METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auroc": "AUROC",
                "pauc_sens80": "pAUC (sens. ≥ 80 %)", "sensitivity": "sensitivity", "specificity": "specificity",
                "f1": "F1"}
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1")
VERDICT_METRICS = ("accuracy", "auroc")  # the reference study's metric, and the threshold-free one
REFERENCE_STUDY = ("The reference study (DreamBooth on Stable Diffusion 1.5, a ViT trained on real images vs a 50/50 "
                   "real + synthetic mix) reported 81.73 % → 84.06 % test accuracy from one run per regime, "
                   "without an interval.")


@dataclass(frozen=True)
class Verdict:
    kind: str  # "higher" | "lower" | "inconclusive" | "undefined"
    text: str


# How each control is named in a verdict, and what beating it would mean.
CONTROL_WORDS = {"augment": "augmentation", "lowpass": "low-pass", "reconstruct": "reconstruction",
                 "mixup": "class-mean"}
CONTROL_CLAIMS = {"augment": "cheap augmentation of the same real images",
                  "lowpass": "real images given the synthetic set's sharpness and colour",
                  "reconstruct": "the same real images through the generator's autoencoder",
                  "mixup": "same-class mixes of the real images"}


def _method(regime: str) -> str | None:
    """The control method of a regime's name (None for real and synthetic regimes, and for a name not known)."""
    try:
        return parse_regime(regime).method
    except DermsynthError:
        return None


def verdict(regime: str, metric: str, diff: float | None, lo: float | None, hi: float | None,
            confidence: float = 0.95, seeds: int | None = None, baseline: str = "real") -> Verdict:
    """A plain-language reading of the paired difference ``regime - baseline`` that never outruns its interval
    (``baseline`` is real-only, or a control regime a synthetic regime is judged against)."""
    name, level = METRIC_NAMES.get(metric, metric), f"{confidence * 100:.0f} %"
    control = _method(baseline)
    against = "real-only" if control is None else f"the {CONTROL_WORDS.get(control, control)} control {baseline}"
    method = _method(regime)
    made = f"the {method} copies" if method else "the synthetic images"
    if not (finite(diff) and finite(lo) and finite(hi)):
        return Verdict("undefined", f"{regime} − {baseline}, {name}: no confidence interval could be computed "
                                    "(for example a single-class test split), so no conclusion is drawn.")
    numbers = (f"{regime} − {baseline}, {name}: {diff * 100:+.1f} points, {level} CI "
               f"[{lo * 100:+.1f}, {hi * 100:+.1f}].")
    caveat = (f" Only {seeds} seed{'s' if seeds != 1 else ''}: the interval says little about training randomness."
              if seeds is not None and seeds < 3 else "")
    if lo > 0:
        return Verdict("higher", f"{numbers} The {level} CI of the difference lies above 0: training on {regime} "
                                 f"gave a higher {name} than {against} on this test set.{caveat}")
    if hi < 0:
        return Verdict("lower", f"{numbers} The {level} CI of the difference lies below 0: training on {regime} "
                                f"gave a lower {name} than {against} on this test set.{caveat}")
    if baseline == "real":
        claim = f"no evidence that {made} help at this scale (nor that they hurt)"
    else:
        claim = (f"no evidence that {made} beat {CONTROL_CLAIMS.get(control or '', 'the control')} (nor that they "
                 "do worse)")
    return Verdict("inconclusive", f"{numbers} The {level} CI of the difference includes 0: {claim}.{caveat}")


def majority(counts: dict[str, int]) -> str:
    """The accuracy of always predicting the most frequent class (the floor any accuracy must beat)."""
    total = sum(counts.values())
    if not total:
        return "n/a"
    name = max(counts, key=counts.get)
    return f"{counts[name] / total * 100:.1f} % ({name})"


def _label(row: dict[str, Any], many_sources: bool) -> str:
    return row["regime"] + (f" @{row['source']}" if many_sources and row.get("source") else "")


def results_table(summary: dict[str, Any]) -> dict[str, Any]:
    rows = summary.get("regimes", [])
    many = len({r.get("source") for r in rows if r.get("source")}) > 1
    body = [[_label(r, many), r.get("seeds", ""), f"{r.get('train_images', '')} ({r.get('train_synthetic', 0)})",
             *(interval(r.get(f"{m}_mean"), r.get(f"{m}_ci_lo"), r.get(f"{m}_ci_hi")) for m in TABLE_METRICS)]
            for r in rows]
    return table(["regime", "seeds", "train images (synthetic)", *(METRIC_NAMES[m] for m in TABLE_METRICS)], body)


def paired_differences(summary: dict[str, Any], n_classes: int = 2
                       ) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """The regime − real table and, for accuracy and AUROC, a verdict per regime, with a caution where either
    classifier does not beat chance (then a difference says little about the synthetic images)."""
    comparisons = summary.get("comparisons", [])
    if not comparisons:
        return None, []
    confidence = float(summary.get("confidence", 0.95))
    many = len({c.get("source") for c in comparisons if c.get("source")}) > 1
    regimes = {(r["regime"], r.get("source") or ""): r for r in summary.get("regimes", [])}
    body, verdicts = [], []
    for row in comparisons:
        if row["metric"] not in TABLE_METRICS:
            continue
        name, baseline = _label(row, many), row.get("baseline") or "real"
        reading = verdict(name, row["metric"], row.get("diff"), row.get("ci_lo"), row.get("ci_hi"), confidence,
                          row.get("seeds"), baseline)
        short = {"higher": "higher (CI above 0)", "lower": "lower (CI below 0)",
                 "inconclusive": "CI includes 0", "undefined": "no interval"}[reading.kind]
        body.append([f"{name} − {baseline}", METRIC_NAMES[row["metric"]],
                     interval(row.get("diff"), row.get("ci_lo"), row.get("ci_hi"), signed=True),
                     fmt(row.get("p_boot"), 2), f"{row.get('seeds_better', '?')}/{row.get('seeds', '?')}", short])
        if row["metric"] in VERDICT_METRICS:
            pair = ((name, regimes.get((row["regime"], row.get("source") or ""), {})),
                    (baseline, regimes.get((baseline, ""), {})))
            text = reading.text + chance_caution(row["metric"], pair, n_classes)
            verdicts.append({"regime": name, "metric": row["metric"], "kind": reading.kind, "text": text,
                             "baseline": baseline})
    header = ["comparison", "metric", f"difference, points [{confidence * 100:.0f} % CI]", "p (bootstrap)",
              "seeds better", "reading"]
    return table(header, body), verdicts


def chance_caution(metric: str, regimes: Iterable[tuple[str, dict[str, Any]]], n_classes: int) -> str:
    """A sentence when a compared classifier's interval contains chance, else "".

    Accuracy is checked through balanced accuracy (chance 1/K): a classifier that predicts the majority class
    gains accuracy on an imbalanced test set without learning anything. AUROC's chance level is 0.5.
    """
    column, chance = ("balanced_accuracy", 1 / n_classes) if metric == "accuracy" else (metric, 0.5)
    names = [name for name, row in regimes if _contains(row.get(f"{column}_ci_lo"), row.get(f"{column}_ci_hi"),
                                                        chance)]
    if not names:
        return ""
    who = f"{' and '.join(names)} {'does' if len(names) == 1 else 'do'}"
    if metric == "accuracy":
        return (f" Caution: the balanced accuracy of {who} not differ from chance ({chance * 100:.0f} %), so "
                "accuracy here mostly reflects the test set's class mix; AUROC and balanced accuracy are the "
                "better guide.")
    return (f" Caution: the {METRIC_NAMES.get(metric, metric)} of {who} not differ from chance "
            f"({chance * 100:.0f} %): a classifier that has not learned the task says little about what the "
            "synthetic images are worth.")


def _contains(lo: Any, hi: Any, value: float) -> bool:
    return finite(lo) and finite(hi) and lo - 1e-9 <= value <= hi + 1e-9


def headline(verdicts: list[dict[str, str]]) -> list[dict[str, str]]:
    """The reference study's question, answered first: the 50/50 hybrid (else the first mixed regime, else any)
    against real-only, on accuracy (the study's metric), then on AUROC."""
    verdicts = [v for v in verdicts if v.get("baseline", "real") == "real"]
    regimes = list(dict.fromkeys(v["regime"] for v in verdicts))
    preferred = ([r for r in regimes if r.startswith("hybrid:0.5")] or [r for r in regimes if r != "synthetic"]
                 or regimes)
    if not preferred:
        return []
    chosen = [v for v in verdicts if v["regime"] == preferred[0]]
    return sorted(chosen, key=lambda v: v["metric"] != "accuracy")


def subgroup_table(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Worst group, best group and gap in AUROC per regime and attribute, with the gap's change from real-only."""
    gaps = summary.get("subgroup_gaps") or []
    if not gaps:
        return None
    confidence = float(summary.get("confidence", 0.95))
    body = []
    for g in gaps:
        change = (interval(g.get("gap_change"), g.get("gap_change_seed_ci_lo"), g.get("gap_change_seed_ci_hi"),
                           signed=True) if "gap_change" in g else "")
        body.append([g["regime"] + (f" @{g['source']}" if g.get("source") else ""), g["attribute"],
                     f"{g['worst_group']}: {fmt(g['worst'], 1, 100)}", f"{g['best_group']}: {fmt(g['best'], 1, 100)}",
                     fmt(g["gap"], 1, 100), change, g.get("reading", "")])
    header = ["regime", "attribute", "worst group (AUROC %)", "best group", "gap, points",
              f"gap − real's gap [{confidence * 100:.0f} % t-interval over seeds]", "reading"]
    return table(header, body)


def too_small_groups(summary: dict[str, Any]) -> str:
    small = sorted({f"{r['attribute']} = {r['group']} ({r['images']} images)"
                    for r in summary.get("subgroups") or [] if r.get("status") != "ok"})
    return ", ".join(small)


def external_sections(summary: dict[str, Any], n_classes: int = 2) -> list[dict[str, Any]]:
    """Per external test set: each regime's AUROC and accuracy in-domain and there, the drop, its paired
    differences against real-only (and each control regime), and what was removed as duplicates."""
    internal = {(r["regime"], r.get("source") or ""): r for r in summary.get("regimes", [])}
    sections = []
    for name, ext in (summary.get("external") or {}).items():
        body = []
        for row in ext.get("regimes", []):
            home = internal.get((row["regime"], row.get("source") or ""), {})
            cells = [row["regime"] + (f" @{row['source']}" if row.get("source") else "")]
            for metric in ("auroc", "accuracy"):
                there, here = row.get(f"{metric}_mean"), home.get(f"{metric}_mean")
                drop = there - here if finite(there) and finite(here) else None
                cells += [fmt(here, 1, 100), interval(there, row.get(f"{metric}_ci_lo"), row.get(f"{metric}_ci_hi")),
                          fmt(drop, 1, 100)]
            body.append(cells)
        header = ["regime", "AUROC in-domain", "AUROC external [CI]", "drop, points", "accuracy in-domain",
                  "accuracy external [CI]", "drop, points"]
        differences, verdicts = paired_differences({**ext, "confidence": summary.get("confidence", 0.95)},
                                                   n_classes)
        sections.append({"name": name, "images": ext.get("images"), "removed": len(ext.get("removed") or []),
                         "table": table(header, body), "differences": differences, "verdicts": verdicts})
    return sections
