"""External test sets: prepared datasets from other sources, tested on whole, without the images that duplicate
anything a classifier could train on (public dermoscopy collections share images under other names)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.data.dataset import PreparedDataset, load_prepared
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.datasets import ImageBank, real_frame
from dermsynth.evaluate.subgroups import subgroup_labels
from dermsynth.progress import console
from dermsynth.utils import sha256_file, stable_hash


@dataclass
class ExternalSet:
    """An external test set: its images (content duplicates of training images removed) and subgroups."""

    frame: pd.DataFrame
    removed: list[dict[str, Any]]
    groups: dict[str, pd.Series]
    fingerprint: str
    absent_subgroups: list[str]  # subgroup fields this set has no values for (another collection's metadata)



def load_external(config: ValidateConfig, bank: ImageBank, training: pd.DataFrame, real_train: pd.DataFrame,
                  classes: list[str], progress: bool) -> dict[str, ExternalSet]:
    """Each external test set of ``config.test`` whole (all its splits), minus content duplicates of any image in
    ``training`` (the real train split and every synthetic pool), found with prepare's similarity descriptor."""
    from dermsynth.data.similarity import cross_duplicates

    if not config.test:
        return {}
    bank.load(training["path"].tolist(), "loading train", progress)
    bank.require(real_train, "real training images")
    reference = np.stack([bank.arrays[p] for p in training["path"]])
    external = {}
    for name, folder in unique_names(config.test).items():
        frame, meta = _read_external(config, folder, name, classes)
        bank.load(frame["path"].tolist(), f"loading {name}", progress)
        bank.require(frame, f"--test {folder}")
        images = np.stack([bank.arrays[p] for p in frame["path"]])
        best: dict[int, tuple[int, float]] = {}
        for query, ref, similarity in cross_duplicates(images, reference, config.external_duplicate_threshold):
            if similarity > best.get(query, (0, -1.0))[1]:
                best[query] = (ref, similarity)
        removed = [{"image_id": frame["image_id"][q], "matches": training["image_id"].iloc[r],
                    "similarity": round(sim, 4)} for q, (r, sim) in sorted(best.items())]
        keep = ~frame.index.isin(list(best))
        fingerprint = stable_hash([sha256_file(Path(folder) / "metadata.csv")[:16],
                                   config.external_duplicate_threshold, sorted(r["image_id"] for r in removed)])
        absent: list[str] = []
        groups = subgroup_labels(meta[keep].reset_index(drop=True), config.subgroups, f"--test {folder}", absent)
        external[name] = ExternalSet(frame[keep].reset_index(drop=True), removed, groups, fingerprint, absent)
        if progress and absent:
            console.print(f"[yellow]--test {name}: no subgroup field {', '.join(absent)} in its metadata; "
                          "those subgroups are skipped for this set[/yellow]")
        if progress and removed:
            console.print(f"[yellow]--test {name}: removed {len(removed)} image(s) that duplicate training "
                          "images[/yellow]")
    return external


def _read_external(config: ValidateConfig, folder: Path, name: str, classes: list[str]
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All splits of one external set as IMAGE_COLUMNS (ids prefixed with its name) and as metadata."""
    prepared = load_prepared(folder)
    if _same_dataset(prepared, load_prepared(config.real)):
        raise DermsynthError(f"--test {folder} is the real dataset itself; an external test set must come from "
                             "another source")
    if prepared.classes != classes:
        raise DermsynthError(f"--test {folder}: classes {prepared.classes} differ from the real data's "
                             f"{classes}; prepare it with the same label scheme")
    frame = pd.concat([real_frame(prepared, split) for split in ("train", "val", "test")], ignore_index=True)
    meta = pd.concat([prepared.split(split) for split in ("train", "val", "test")], ignore_index=True)
    frame["image_id"] = name + ":" + frame["image_id"]  # ids of two sources may coincide
    return frame, meta


def unique_names(folders: list[Path]) -> dict[str, Path]:
    """Folder name per folder, made unique (``syn``, ``syn-2``) when two share a name."""
    names: dict[str, Path] = {}
    for folder in folders:
        name, n = Path(folder).name or "set", 2
        while name in names:
            name, n = f"{Path(folder).name}-{n}", n + 1
        names[name] = Path(folder)
    return names


def _same_dataset(a: PreparedDataset, b: PreparedDataset) -> bool:
    """The same folder, or a byte copy of it (the same metadata and the same image files)."""
    if a.root.resolve() == b.root.resolve():
        return True
    if sha256_file(a.root / "metadata.csv") != sha256_file(b.root / "metadata.csv"):
        return False
    return all(sha256_file(x) == sha256_file(y) for x, y in zip(a.paths(a.metadata), b.paths(b.metadata), strict=True))
