"""The images a validation run sees: real splits from a prepared dataset, synthetic pools from class folders.

Guarantees checked here (violations raise :class:`DermsynthError` before any training starts):

- train, val and test share no patient (lesion where the patient is unknown) and no image;
- val and test hold real images only, and no synthetic image is a pixel-exact copy of a val/test image;
- every synthetic class folder names a class of the real data.

All images are decoded once, through the shared transform, into uint8 arrays held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from dermsynth.classify.images import ImageSet
from dermsynth.classify.transforms import load_image
from dermsynth.data.dataset import PreparedDataset
from dermsynth.data.images import ImageReadError
from dermsynth.data.splits import group_keys
from dermsynth.errors import DermsynthError
from dermsynth.progress import make_progress


def real_frame(prepared: PreparedDataset, split: str) -> pd.DataFrame:
    """One split as IMAGE_COLUMNS; ``group`` = patient, else lesion, else the image itself."""
    frame = prepared.split(split)
    group = group_keys(frame)
    return pd.DataFrame({"image_id": frame["image_id"].astype(str),
                         "path": [str(p) for p in prepared.paths(frame)],
                         "target": frame["target"].astype(int), "group": group.astype(str), "synthetic": False})


def check_no_leak(splits: dict[str, pd.DataFrame]) -> None:
    """Raise if two splits share a patient/lesion group or an image, or if val/test hold a synthetic image."""
    for name in ("val", "test"):
        if name in splits and splits[name]["synthetic"].any():
            raise DermsynthError(f"synthetic images in the {name} split: evaluation must use real images only")
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = splits[first], splits[second]
            shared_groups = set(a.loc[~a["synthetic"], "group"]) & set(b.loc[~b["synthetic"], "group"])
            shared_images = set(a["image_id"]) & set(b["image_id"])
            if shared_groups or shared_images:
                example = sorted(shared_groups or shared_images)[0]
                raise DermsynthError(
                    f"patient leak: {first} and {second} share {len(shared_groups)} patient/lesion group(s) and "
                    f"{len(shared_images)} image(s) (e.g. {example}); re-run 'dermsynth prepare' to split by patient")


class ImageBank:
    """Decoded images by path, each loaded once; unreadable files are remembered, not fatal here."""

    def __init__(self, size: int):
        self.size = size
        self.arrays: dict[str, np.ndarray] = {}
        self.failed: dict[str, str] = {}

    def load(self, paths: list[str], description: str, progress: bool = True) -> None:
        todo = [p for p in dict.fromkeys(paths) if p not in self.arrays and p not in self.failed]
        with make_progress(transient=True) if progress and todo else contextlib.nullcontext() as bar:
            task = bar.add_task(description, total=len(todo), status="") if bar is not None else None
            for path in todo:
                try:
                    self.arrays[path] = load_image(path, self.size)
                except ImageReadError as exc:
                    self.failed[path] = exc.reason
                if bar is not None:
                    bar.advance(task)

    def forget(self, paths: Iterable[str]) -> None:
        """Free images no longer needed (a synthetic folder's originals once its preprocessed copy is read)."""
        for path in paths:
            self.arrays.pop(path, None)

    def drop_unreadable(self, frame: pd.DataFrame, what: str) -> pd.DataFrame:
        """Synthetic pools skip unreadable files with a warning (a class left empty fails later, clearly)."""
        bad = frame["path"].isin(self.failed)
        if bad.any():
            warnings.warn(f"{what}: skipped {int(bad.sum())} unreadable image(s), e.g. "
                          f"{frame.loc[bad, 'path'].iloc[0]}", stacklevel=2)
        return frame[~bad].reset_index(drop=True)

    def require(self, frame: pd.DataFrame, what: str) -> None:
        """Real images must all be readable: a broken prepared dataset is an error, not a silent drop."""
        bad = frame["path"][frame["path"].isin(self.failed)]
        if len(bad):
            raise DermsynthError(f"{what}: {len(bad)} unreadable image(s), e.g. {bad.iloc[0]} "
                                 f"({self.failed[bad.iloc[0]]}); re-run 'dermsynth prepare'")

    def image_set(self, frame: pd.DataFrame) -> ImageSet:
        images = (np.stack([self.arrays[p] for p in frame["path"]]) if len(frame)
                  else np.zeros((0, self.size, self.size, 3), np.uint8))
        return ImageSet(images, frame["target"].to_numpy(np.int64), frame["image_id"].tolist(),
                        frame["synthetic"].to_numpy(bool))

    def digest(self, path: str) -> str:
        return hashlib.sha1(self.arrays[path].tobytes()).hexdigest()


def check_no_copies(bank: ImageBank, synthetic: pd.DataFrame, evaluation: pd.DataFrame) -> None:
    """A synthetic image identical (after the shared transform) to a val/test image is a leak."""
    held_out = {bank.digest(p): p for p in evaluation["path"]}
    for path in synthetic["path"]:
        original = held_out.get(bank.digest(path))
        if original is not None:
            raise DermsynthError(f"synthetic image {path} is a pixel copy of held-out image {original}")
