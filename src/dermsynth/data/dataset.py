"""Reading a prepared folder back: the contract between `prepare` and every later stage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.data.schema import CANONICAL_COLUMNS, SPLITS
from dermsynth.errors import DermsynthError
from dermsynth.utils import read_csv, read_json, stable_hash

REMEDY = "re-run 'dermsynth prepare' into a new folder"


@dataclass
class PreparedDataset:
    root: Path
    metadata: pd.DataFrame
    summary: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """Class names in target order (index = integer target)."""
        return list(self.summary["classes"])

    @property
    def image_size(self) -> int:
        """The side of the prepared square images."""
        try:
            return int(self.summary["settings"]["preprocess"]["image_size"])
        except (KeyError, TypeError, ValueError):
            raise DermsynthError(f"{self.root / 'prepare.json'} records no preprocess.image_size; {REMEDY}") from None

    def image_side(self) -> int | None:
        """The short side of the first training image as it is on disk (what a model would train on); None when
        there is none to read."""
        from PIL import Image

        train_split = self.split("train")
        if train_split.empty:
            return None
        try:
            with Image.open(self.paths(train_split.head(1))[0]) as image:
                return min(image.size)
        except OSError:
            return None

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
    summary = read_json(summary_path, REMEDY)
    classes = summary.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and len(set(map(str, classes))) == len(classes)):
        raise DermsynthError(f"{summary_path} is damaged (no list of two or more class names); {REMEDY}")
    metadata = read_csv(metadata_path, REMEDY, CANONICAL_COLUMNS,
                        dtype={"image_id": str, "patient_id": str, "lesion_id": str, "path": str, "label": str})
    _check_rows(metadata, [str(c) for c in classes], metadata_path)
    return PreparedDataset(root=root, metadata=metadata, summary=summary)


def _check_rows(metadata: pd.DataFrame, classes: list[str], path: Path) -> None:
    """Every row names an image inside the folder, a known class with its own target, and a split."""
    def fail(mask: pd.Series, what: str) -> None:
        if mask.any():
            row = int(np.flatnonzero(mask.to_numpy())[0]) + 2  # 1-based, after the header line
            raise DermsynthError(f"{path} is damaged (line {row}: {what}); {REMEDY}")

    for column in ("image_id", "path", "label", "target", "split"):
        fail(metadata[column].isna(), f"no {column}")
    target = pd.to_numeric(metadata["target"], errors="coerce")
    fail(target.isna() | (target % 1 != 0) | (target < 0) | (target >= len(classes)), "target is not a class index")
    fail(metadata["label"] != target.astype(int).map(dict(enumerate(classes))), "label does not match its target")
    fail(~metadata["split"].isin(SPLITS), f"split is not one of {', '.join(SPLITS)}")
    fail(metadata["path"].map(lambda p: Path(p).is_absolute() or ".." in Path(p).parts), "path leaves the folder")
    metadata["target"] = target.astype(np.int64)


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


def sample_fingerprint(image_ids: Iterable[object]) -> str:
    """Which images a sample holds, whatever their order: a model's training sample and a validate run's real
    sample are the same images exactly when these agree."""
    return stable_hash(sorted(str(i) for i in image_ids))
