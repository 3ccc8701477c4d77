"""The report's generated-images and real-vs-synthetic sections."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermsynth.report import figures
from dermsynth.report.folder import PREPARED, SYNTHETIC, RunFolder, Section, _short, _tiles, figure
from dermsynth.report.format import table


def generated_section(run: RunFolder, prompts_per_class: int = 2, columns: int = 10) -> Section | None:
    manifest, summary = run.csv(SYNTHETIC, "manifest.csv"), run.json(SYNTHETIC, "generate.json")
    if manifest is None and summary is None:
        return None
    summary = summary or {}
    settings = summary.get("settings", {})
    counts = [(label, n, summary.get("rejected", {}).get(label, 0)) for label, n in summary.get("counts", {}).items()]
    rows = _prompt_rows(run, manifest, prompts_per_class, columns) if manifest is not None else []
    return {
        "status": summary.get("status", "n/a"),
        "counts": table(["class", "accepted", "rejected by QC"], counts),
        "reasons": ", ".join(f"{n} {r}" for r, n in summary.get("rejected_by_reason", {}).items()) or "none",
        "settings": table(["setting", "value"], [(k, settings[k]) for k in ("scheduler", "steps", "guidance_scale",
                                                                           "seed") if k in settings]),
        "figure": figure(figures.labelled_grids(rows, columns) if rows else None,
                         "Generated images per class and prompt (the reference study's Figures 1–2).",
                         "grids of synthetic images per class and prompt"),
    }


def _prompt_rows(run: RunFolder, manifest: pd.DataFrame, per_class: int, columns: int
                 ) -> list[tuple[str, list[np.ndarray]]]:
    """One grid row per class and prompt; one row per class when its prompts are many (per-image captions)."""
    rows = []
    for label, part in manifest.groupby("label", sort=False):
        prompts = part["prompt"].fillna("").astype(str)
        if prompts.nunique() > per_class:
            groups = [(f"{label}: {prompts.nunique()} different prompts, e.g. “{_short(prompts.iloc[0])}”", part)]
        else:
            groups = [(f"{label}: “{_short(prompt)}” ({len(group)} images)", group)
                      for prompt, group in part.groupby(prompts, sort=False)]
        for title, group in groups:
            tiles = _tiles(run.path(SYNTHETIC), group["path"].head(columns))
            if tiles:
                rows.append((title, tiles))
    return rows


def comparison_section(run: RunFolder, per_side: int = 6) -> Section | None:
    meta, manifest = run.csv(PREPARED, "metadata.csv"), run.csv(SYNTHETIC, "manifest.csv")
    if meta is None or manifest is None:
        return None
    pairs = []
    for label in manifest["label"].drop_duplicates():
        real = meta[(meta["label"] == label) & (meta["split"] == "train")]
        real = real.sample(min(per_side, len(real)), random_state=0) if len(real) else real
        synthetic = manifest[manifest["label"] == label].head(per_side)
        pairs.append((str(label), _tiles(run.path(PREPARED), real["path"]),
                      _tiles(run.path(SYNTHETIC), synthetic["path"])))
    pairs = [p for p in pairs if p[1] or p[2]]
    return {"figure": figure(figures.side_by_side(pairs, per_side) if pairs else None,
                             "Real training images (left) beside synthetic images (right), per class "
                             "(the reference study's Figure 3).", "real and synthetic images side by side")}
