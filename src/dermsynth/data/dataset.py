"""Reading a prepared folder back: the contract between `prepare` and every later stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.data.schema import CANONICAL_COLUMNS, SPLITS
from dermsynth.errors import DermsynthError


@dataclass
class PreparedDataset:
    root: Path
    metadata: pd.DataFrame
    summary: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """Class names in target order (index = integer target)."""
        return list(self.summary["classes"])

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        return self.metadata[self.metadata["split"] == name].reset_index(drop=True)

    def image_path(self, relative: str) -> Path:
        return self.root / relative

    def paths(self, frame: pd.DataFrame) -> list[Path]:
        return [self.root / p for p in frame["path"]]


def load_prepared(root: str | Path) -> PreparedDataset:
    """Load ``root`` written by `prepare`; a clear error if it is not one, or is incomplete."""
    root = Path(root)
    if not root.is_dir():
        raise DermsynthError(f"prepared dataset not found: {root} (run 'dermsynth prepare' first)")
    summary_path, metadata_path = root / "prepare.json", root / "metadata.csv"
    if not summary_path.is_file() or not metadata_path.is_file():
        raise DermsynthError(f"{root} is not a complete prepared dataset (no prepare.json/metadata.csv); "
                             "run 'dermsynth prepare' into it")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    metadata = pd.read_csv(metadata_path, dtype={"image_id": str, "patient_id": str, "lesion_id": str})
    missing = [c for c in CANONICAL_COLUMNS if c not in metadata.columns]
    if missing:
        raise DermsynthError(f"{metadata_path}: missing column(s) {missing}")
    return PreparedDataset(root=root, metadata=metadata, summary=summary)


def subsample_per_class(frame: pd.DataFrame, per_class: int, seed: int, classes: list[str]) -> pd.DataFrame:
    """``per_class`` random training images of every class (the limited-data setting)."""
    parts = []
    for target, name in enumerate(classes):
        rows = frame[frame["target"] == target]
        if len(rows) < per_class:
            raise DermsynthError(f"real_per_class={per_class}, but class {name!r} has only {len(rows)} training "
                                 "images")
        parts.append(rows.sample(n=per_class, random_state=np.random.RandomState(seed)))
    return pd.concat(parts).sort_values("image_id").reset_index(drop=True)
