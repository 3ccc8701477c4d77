"""The report's preprocessing section: examples of raw and prepared images with the lesion box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.report import figures
from dermsynth.report.folder import PREPARED, TILE, RunFolder, Section, figure, open_rgb
from dermsynth.report.format import pct, table


def preprocessing_section(run: RunFolder, count: int = 6) -> Section | None:
    pre, meta = run.csv(PREPARED, "preprocess.csv"), run.csv(PREPARED, "metadata.csv")
    summary = run.json(PREPARED, "prepare.json")
    if pre is None or meta is None or summary is None or pre.empty:
        return None
    table_ = pre.merge(meta[["image_id", "path", "label"]], on="image_id")
    settings = summary.get("settings", {}).get("preprocess", {})
    picked = pick_examples(table_, count)
    examples = [e for e in (_example(run, row) for row in picked) if e is not None]
    centered = pre["centered"].astype(str).str.lower() == "true"
    return {
        "settings": table(["setting", "value"], [(k, v) for k, v in settings.items()
                                                if k in ("image_size", "vignette", "center", "margin",
                                                         "hair_removal", "color_constancy")]),
        "centered_rate": pct(centered.mean()),
        "lesion_fraction_median": pct(pd.to_numeric(pre["lesion_fraction"], errors="coerce").median()),
        "figure": figure(figures.preprocessing_figure(examples) if examples else None,
                         "Before and after: the original image with the crop box (cyan), then the processed image.",
                         "original images with crop boxes beside the processed images"),
        "missing_originals": not examples,
    }


def pick_examples(frame: pd.DataFrame, count: int) -> list[pd.Series]:
    """Up to ``count`` rows whose original is on disk, deterministically: the one hair removal changed most (from
    prepare's ``hair_fraction``, when it removed hair), an uncentred one (centre-crop fallback), then evenly spaced
    rows of each class in turn."""
    frame = frame[[Path(str(p)).is_file() for p in frame["source_path"]]].sort_values("image_id")
    if frame.empty:
        return []
    chosen: list[pd.Series] = []

    def add(row: pd.Series, tag: str | None = None) -> None:
        if len(chosen) < count and all(row["image_id"] != c["image_id"] for c in chosen):
            chosen.append(row.copy())
            chosen[-1]["tag"] = tag

    hair = pd.to_numeric(frame.get("hair_fraction", pd.Series(dtype=float)), errors="coerce")
    if hair.notna().any() and hair.max() > 0.01:
        add(frame.loc[hair.idxmax()], "hair removed")
    uncentred = frame[frame["centered"].astype(str).str.lower() != "true"]
    if len(uncentred):
        add(uncentred.iloc[0], "no lesion found: centre crop")
    spaced = [part.iloc[np.linspace(0, len(part) - 1, min(len(part), count)).astype(int)]
              for _, part in frame.groupby("label")]
    for i in range(count):
        for part in spaced:
            if i < len(part):
                add(part.iloc[i])
    return chosen


def _scaled_box(row: pd.Series, image) -> tuple[float, float, float, float]:
    """The crop box (in the decoded image's pixels, possibly a reduced-scale decode) in ``image``'s pixels."""
    sx, sy = image.width / float(row["decoded_width"]), image.height / float(row["decoded_height"])
    return row["box_x0"] * sx, row["box_y0"] * sy, row["box_x1"] * sx, row["box_y1"] * sy


def _example(run: RunFolder, row: pd.Series) -> dict[str, Any] | None:
    processed = figures.load_thumb(run.path(PREPARED, row["path"]), TILE * 2)
    original = open_rgb(row["source_path"], 360)
    if original is None or processed is None:
        return None
    box = _scaled_box(row, original)
    tag = row.get("tag")
    title = f"{row['image_id']} ({row['label']})" + (f"\n{tag}" if isinstance(tag, str) else "")
    return {"original": np.asarray(original), "box": box, "processed": processed, "title": title}
