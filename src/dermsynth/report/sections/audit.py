"""The report's audit section: fidelity, C2ST, domain gap, diversity and memorization."""

from __future__ import annotations

from typing import Any

from dermsynth.report import figures
from dermsynth.report.folder import AUDIT, RunFolder, Section, figure
from dermsynth.report.format import finite, fmt, pct, table

FIDELITY_ROWS = (("fid", "FID ↓", 2), ("kid_mean", "KID ↓", 3), ("precision", "precision ↑", 3),
                 ("recall", "recall ↑", 3), ("density", "density ↑", 3), ("coverage", "coverage ↑", 3))


def audit_section(run: RunFolder) -> Section | None:
    report = run.json(AUDIT, "audit.json")
    if report is None:
        return None
    fidelity, memo = report.get("fidelity", {}), report.get("memorization", {})
    overall = fidelity.get("overall", {})
    syn, ref = overall.get("synthetic_vs_train", {}), overall.get("real_test_vs_train", {})
    rows = [(label, _metric(syn, key, digits), _metric(ref, key, digits)) for key, label, digits in FIDELITY_ROWS]
    if "n_fake" in syn:  # sample sizes: FID and KID are biased by them, so both columns use the same number
        rows.insert(0, ("images compared (train vs other)", f"{syn.get('n_real')} vs {syn.get('n_fake')}",
                        f"{ref.get('n_real')} vs {ref.get('n_fake')}"))
    per_class = []
    for name, pair in (fidelity.get("per_class") or {}).items():
        if pair:
            s, r = pair["synthetic_vs_train"], pair["real_test_vs_train"]
            per_class.append((name, fmt(s.get("fid"), 2), fmt(r.get("fid"), 2), fmt(s.get("precision")),
                              fmt(r.get("precision")), fmt(s.get("recall")), fmt(r.get("recall"))))
        else:
            per_class.append((name, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"))
    return {
        "feature_space": {"name": report.get("feature_space", {}).get("name", "not recorded"),
                          "description": report.get("feature_space", {}).get("description", "")},
        "counts": report.get("counts", {}),
        "fidelity": table(["metric", "synthetic vs real train", "real test vs real train (reference)"], rows),
        "fid_ratio": fmt(overall.get("fid_ratio"), 2),
        "resolution": _fidelity_resolution(fidelity, report.get("image_size")),
        "per_class": table(["class", "FID synthetic", "FID real test", "precision synthetic", "precision real test",
                            "recall synthetic", "recall real test"], per_class),
        "diversity": table(["class", "synthetic mean pairwise cosine", "real train mean pairwise cosine"],
                           [(k, fmt(v.get("synthetic_mean_pairwise_cosine")), fmt(v.get("real_train_mean_pairwise_"
                                                                                         "cosine")))
                            for k, v in (report.get("diversity") or {}).items()]),
        **_differences(report),
        "memorization": _memorization(run, memo, report.get("counts", {}).get("synthetic")),
        "notes": report.get("notes", []),
        "partial": report.get("partial", False),
        "pairs": figure(figures.embed_png_file(run.path(AUDIT, "top_pairs.png")),
                        "The synthetic images closest to a training image, each above its nearest training image.",
                        "closest synthetic and training image pairs"),
        "histogram": figure(figures.embed_png_file(run.path(AUDIT, "similarity.png")),
                            "Similarity to the nearest training image: synthetic vs held-out real images.",
                            "similarity histograms"),
    }


def _fidelity_resolution(fidelity: dict[str, Any], audit_size: int | None) -> str:
    """Where fidelity was measured, and the FID ratio at the audit size when it was matched to a smaller generator."""
    size = fidelity.get("resolution", audit_size)
    at_audit = fidelity.get("at_audit_size")
    if not at_audit:
        return f"Images compared at {size} px." if size else ""
    ratio = fmt((at_audit.get("overall") or {}).get("fid_ratio"), 2)
    return (f"The synthetic images are {size} px, so the real images were brought to {size} px and back to "
            f"{at_audit.get('resolution')} px before their features, as the synthetic ones are: the figures judge "
            f"what the generator draws at its own size. Compared at {at_audit.get('resolution')} px as they are, "
            f"the FID ratio is {ratio}: the resolution itself counts against the generator there.")


def _differences(report: dict[str, Any]) -> dict[str, Any]:
    """C2ST per class beside its real-vs-real reference, and the ranked domain-gap statistics in words."""
    c2st, gap = report.get("c2st") or {}, report.get("domain_gap") or {}

    def auroc(result: dict[str, Any] | None) -> str:
        if not result or not finite(result.get("auroc")):
            return "n/a (too few images)"
        return f"{result['auroc']:.3f} [{fmt(result.get('ci_low'))}, {fmt(result.get('ci_high'))}] (n = " \
               f"{result.get('n_per_set')} per set)"

    c2st_rows = [(name, auroc(entry.get("synthetic_vs_real")), auroc(entry.get("real_held_out_vs_real")))
                 for name, entry in (c2st.get("per_class") or {}).items()]
    gap_tables = []
    for name, entry in (gap.get("per_class") or {}).items():
        rows = [(r["statistic"], fmt(r.get("real_mean")), fmt(r.get("synthetic_mean")), fmt(r.get("std_diff"), 2),
                 fmt(r.get("ks"), 2), "yes" if r["statistic"] in entry.get("material", []) else "")
                for r in entry.get("rows", [])[:8]]
        gap_tables.append({"name": name, "summary": entry.get("summary", ""),
                           "table": table(["statistic", "real", "synthetic", "std. difference", "KS", "material"],
                                          rows)})
    return {
        "c2st": table(["class", "C2ST AUROC synthetic vs real train", "real held-out vs real train (reference)"],
                      c2st_rows) if c2st_rows else None,
        "c2st_method": c2st.get("method", ""), "compare_size": c2st.get("image_size") or gap.get("image_size"),
        "domain_gap": gap_tables, "domain_gap_method": gap.get("method", ""),
    }


def _metric(values: dict[str, Any], key: str, digits: int) -> str:
    if key != "kid_mean":
        return fmt(values.get(key), digits)
    # KID spans orders of magnitude (1e-3 for close sets, 1e3 for noise): significant digits, not decimals
    mean, sd = values.get("kid_mean"), values.get("kid_sd")
    text = f"{mean:.3g}" if finite(mean) else "n/a"
    return text + (f" ± {sd:.2g}" if finite(mean) and finite(sd) else "")


def _memorization(run: RunFolder, memo: dict[str, Any], total: int | None) -> dict[str, Any]:
    thresholds, controls = memo.get("thresholds", {}), memo.get("positive_controls", {})
    flagged = run.csv(AUDIT, "flagged.csv")
    flagged_rows = [] if flagged is None else [
        (r.get("image_id", ""), r.get("label", ""), r.get("nearest_pixel_train_id", ""),
         fmt(r.get("pixel_similarity"), 3)) for r in flagged.sort_values("pixel_similarity", ascending=False)
        .head(10).to_dict("records")]
    detection = controls.get("overall")
    return {
        "flagged": memo.get("synthetic_flagged", "n/a"), "total": total if total is not None else "n/a",
        "rate": pct(memo.get("synthetic_flagged_rate")),
        "held_out_rate": pct(memo.get("held_out_real_flagged_rate")),
        "thresholds": table(["", ""], [("pixel similarity", fmt(thresholds.get("pixel"))),
                                       ("feature cosine (for review)", fmt(thresholds.get("feature"))),
                                       ("quantile of held-out real similarity", thresholds.get("quantile", "n/a")),
                                       ("calibrated on", thresholds.get("calibrated_on", "n/a"))]),
        "controls": table(["light copy of a training image", "detected"],
                          [(k, pct(v, 0)) for k, v in controls.get("flagged_rate", {}).items()]),
        "detection": pct(detection, 0),
        "weak_detector": finite(detection) and detection < 0.9,
        "control_images": controls.get("images", "n/a"),
        "flagged_table": table(["synthetic image", "class", "nearest training image", "pixel similarity"],
                               flagged_rows),
        "method": memo.get("method", ""),
    }
