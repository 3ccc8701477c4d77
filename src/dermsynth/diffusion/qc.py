"""Automatic quality control of generated images: reject what no classifier should train on.

Limits were set against the embedded sample's prepared images: their per-image standard deviation is >= 0.057
and at most 25 % of their channel values sit at 0 or 255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QCLimits:
    min_std: float = 0.02  # below: blank or near-constant
    max_saturated: float = 0.5  # above: most channel values clipped at black or white


def qc_reason(image: np.ndarray, limits: QCLimits = QCLimits()) -> str | None:
    """Why ``image`` (H, W, 3 floats, nominally [0, 1], unclipped) is rejected, or None if it passes."""
    if not np.isfinite(image).all():
        return "nan"
    clipped = np.clip(image, 0.0, 1.0)
    if float(clipped.std()) < limits.min_std:
        return "blank"
    saturated = (image <= 0.5 / 255) | (image >= 1 - 0.5 / 255)
    if float(saturated.mean()) > limits.max_saturated:
        return "saturated"
    return None
