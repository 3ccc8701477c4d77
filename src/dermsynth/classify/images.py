"""The in-memory image set a classifier trains and predicts on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageSet:
    """Images (uint8 NHWC at the model's size) with integer targets, ids and a synthetic flag per image."""

    images: np.ndarray
    targets: np.ndarray
    ids: list[str]
    synthetic: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)
