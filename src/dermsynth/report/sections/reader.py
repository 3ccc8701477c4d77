"""The report's reader-study section: can readers tell the synthetic images from real ones, beside the C2ST."""

from __future__ import annotations

from typing import Any

from dermsynth.layout import RUN_FOLDERS
from dermsynth.reader.build import blinding_sentence
from dermsynth.report.format import table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _auroc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _row(name: str, s: dict[str, Any]) -> list[str]:
    return [name, str(s["answers"]), f"{_pct(s['accuracy'])} [{_pct(s['ci_lo'])}, {_pct(s['ci_hi'])}]",
            f"{s['p_vs_chance']:.3g}", _pct(s["sensitivity"]), _pct(s["specificity"]), _auroc(s["auroc"])]


def reader_section(run) -> dict[str, Any] | None:
    """None when no study was built; the study's facts when it is not scored yet; else the scores."""
    folder = RUN_FOLDERS["reader_study"]
    record = run.json(folder, "key", "study.json")
    if record is None:
        return None
    score = run.json(folder, "score", "score.json")
    facts = {"study_id": record["study_id"], "images": record["images"], "practice": record["practice"],
             "size": record["image_size"], "counts": record["counts"],
             "blinding": blinding_sentence(record["blinding"]) if record.get("blinding") else ""}
    if score is None:
        return {"facts": facts, "scored": False}
    header = ["reader", "answers", "accuracy [exact CI]", "p vs 50 %", "sensitivity (synthetic)", "specificity",
              "AUROC"]
    readers = table(header, [_row(r, s) for r, s in score["per_reader"].items() if s.get("answers")]
                    + [_row("pooled", score["pooled"])])
    classes = table(["class", *header[1:], "kappa"],
                    [[*_row(name, c["pooled"]), "n/a" if c["agreement"].get("kappa") is None
                      else f"{c['agreement']['kappa']:.3f}"] for name, c in score["per_class"].items()
                     if c["pooled"].get("answers")])
    convincing = table(["synthetic image", "class", "called real", "nearest real similarity", "reading"],
                       [[c["source"], c["class"], f"{_pct(c['called_real'])} of {c['readers']}",
                         "n/a" if c["nearest_pixel_similarity"] is None else f"{c['nearest_pixel_similarity']:.3f}",
                         c["reading"]] for c in score["convincing"]])
    agreement = score["agreement"]
    pooled = score["pooled"]
    beside = _beside_c2st(run.json(RUN_FOLDERS["audit"], "audit.json"), pooled)
    return {"facts": facts, "scored": True, "readers": readers, "classes": classes, "convincing": convincing,
            "agreement": f"{agreement['method']} "
                         + ("n/a" if agreement.get("kappa") is None else f"{agreement['kappa']:.3f}"),
            "headline": _headline(pooled, len(score["readers"])), "beside_c2st": beside}


def _headline(pooled: dict[str, Any], readers: int) -> str:
    told = pooled["ci_lo"] > 0.5
    return (f"{readers} reader(s) called {pooled['answers']} images: accuracy {_pct(pooled['accuracy'])} "
            f"[{_pct(pooled['ci_lo'])}, {_pct(pooled['ci_hi'])}] against 50 % for guessing. "
            + ("The readers told synthetic from real images better than chance." if told else
               "The interval includes chance: these readers could not reliably tell the synthetic images from real "
               "ones (which does not show that no reader could)."))


def _beside_c2st(audit: dict[str, Any] | None, pooled: dict[str, Any]) -> str:
    per_class = ((audit or {}).get("c2st") or {}).get("per_class") or {}
    values = [f"{name} {entry['synthetic_vs_real']['auroc']:.3f}" for name, entry in per_class.items()
              if (entry.get("synthetic_vs_real") or {}).get("auroc") is not None]
    if not values:
        return ""
    return (f"Beside it, the classifier two-sample test (section 7) tells them apart at AUROC {', '.join(values)} "
            f"(readers: AUROC {_auroc(pooled['auroc'])}). A machine detector is far stricter than a person: both "
            "measures belong in the verdict.")
