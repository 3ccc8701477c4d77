"""The report's dataset section: counts, splits, grouping, skipped images and duplicates."""

from __future__ import annotations

from dermsynth.report import figures
from dermsynth.report.folder import PREPARED, RunFolder, Section, figure
from dermsynth.report.format import fmt, table
from dermsynth.report.sections.provenance import _source_name


def dataset_section(run: RunFolder) -> Section | None:
    summary = run.json(PREPARED, "prepare.json")
    if summary is None:
        return None
    classes = list(summary["classes"])
    counts = []
    for name, part in summary["splits"].items():
        counts.append([name, part["groups"], *(part["labels"].get(c, 0) for c in classes), part["images"]])
    totals = [sum(part["labels"].get(c, 0) for part in summary["splits"].values()) for c in classes]
    counts.append(["all", sum(p["groups"] for p in summary["splits"].values()), *totals, summary["images"]])
    meta = run.csv(PREPARED, "metadata.csv")
    settings = summary.get("settings", {})
    return {
        "source": _source_name(summary, meta),
        "images": summary["images"],
        "classes": classes,
        "counts": table(["split", "groups", *classes, "images"], counts),
        "grouping": summary["grouping"],
        "guarantee": grouping_guarantee(summary["grouping"]) + (
            " Images with the same content under different ids were found by image similarity and kept in one split."
            if settings.get("group_duplicates") else ""),
        "split_seed": settings.get("split", {}).get("seed"),
        "skipped": table(["reason", "images"], summary.get("skipped_by_reason", {}).items()),
        "skipped_count": summary.get("skipped_count", 0),
        "duplicates": table(["image", "same content as", "similarity"],
                            [(d["image_id_1"], d["image_id_2"], fmt(d.get("similarity"), 3))
                             for d in summary.get("content_duplicates", [])]),
        "missing": table(["field", "missing"], summary.get("missing_values", {}).items()),
        "figure": figure(figures.metadata_figure(meta, classes) if meta is not None and len(meta) else None,
                         "Metadata distributions of the prepared images, stacked by class.",
                         "age histogram, sex and anatomic site counts"),
    }


def grouping_guarantee(grouping: str) -> str:
    level = grouping.split(" (")[0]
    if level == "patient":
        return "No patient has images in two splits: the test set is patient-disjoint from training."
    if level.startswith("lesion"):
        return ("No lesion has images in two splits. There are no patient ids, so a patient with several lesions "
                "may still appear in both training and test.")
    if level.startswith("patient, else"):
        return ("Images are grouped by patient where a patient id exists, else by lesion, else by image: only the "
                "rows with a patient id are guaranteed patient-disjoint.")
    return ("Each image is its own group: without patient or lesion ids, the same patient or lesion may appear in "
            "training and test.")
