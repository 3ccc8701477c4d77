"""How a control regime's copies are made from the run's own real training images (evaluate/regimes.py).

A gain from synthetic images has several possible causes, and each control keeps one of them and drops the
rest, with the same number of made images as the synthetic regime it is compared with:

- ``augment`` (evaluate/augment.py): more variants of the same real content, by classical augmentation;
- ``lowpass``: the real content with the synthetic set's *image statistics*: each copy is blurred (Gaussian) so
  that the class's mean sharpness matches the synthetic class's, then its CIELAB colour is moved so that the
  class's pooled per-channel mean and standard deviation match the synthetic class's. Both targets are measured
  per run, from that run's real sample and the synthetic folder, at the classifier's input size;
- ``reconstruct``: the real content through the generator's own autoencoder (a folder written by
  ``dermsynth reconstruct --split train --model-sample``): the decoder's statistics, learned rather than fitted;
- ``mixup``: ``lam * a + (1 - lam) * b`` of two real images of the same class, lam ~ U(0.25, 0.75): samples
  between the training images of a class, as a class-conditional generator's are said to be.

Copy k of an image is the k-th of the 8 symmetries of the square of the made image (k mod 8) for lowpass and
reconstruct, so that ``<method>-add:n`` with n above the real count still gets distinct images; a mixup copy draws
its own partner and lam. Every copy depends on (run seed, image id, k) only, so a rerun makes the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from dermsynth.data.images import sharpness

FIT_IMAGES = 64          # images per class the blur is fitted on (sharpness is a set mean: 64 pin it down)
MAX_SIGMA = 8.0          # px: beyond this an image is a colour field, whatever the target
MIXUP_RANGE = (0.25, 0.75)
# What the made images depend on besides their inputs: part of a run's settings hash.
RECIPES = {"lowpass": {"fit_images": FIT_IMAGES, "max_sigma": MAX_SIGMA, "colour": "CIELAB pooled mean/sd"},
           "reconstruct": {"copy": "symmetry k mod 8 of the reconstruction"},
           "mixup": {"lam": list(MIXUP_RANGE), "partner": "same class, by the copy seed"}}


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """The (k mod 8)-th symmetry of the square: k & 1 flips left-right, k & 2 up-down, k & 4 transposes."""
    k %= 8
    if k & 1:
        image = image[:, ::-1]
    if k & 2:
        image = image[::-1]
    if k & 4:
        image = image.transpose(1, 0, 2)
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class LowpassTarget:
    """One class's blur and colour transfer, and the sharpness it was fitted to."""

    sigma: float                      # Gaussian blur, px at the classifier's input size (0 = none)
    real_lab: tuple[float, ...]       # mean L*, a*, b*, then sd L*, a*, b* of the blurred real images
    synthetic_lab: tuple[float, ...]  # the same of the synthetic images
    real_sharpness: float             # mean sharpness of the real images, before
    synthetic_sharpness: float        # ... of the synthetic images (the target)
    blurred_sharpness: float          # ... of the real images after the blur (the fit)

    def as_dict(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v])
                for k, v in asdict(self).items()}


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def _mean_sharpness(images: list[np.ndarray], sigma: float = 0.0) -> float:
    values = [sharpness(_blur(image, sigma)) for image in images]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _lab_moments(images: list[np.ndarray]) -> tuple[float, ...]:
    pixels = np.concatenate([_lab(image).reshape(-1, 3) for image in images])
    return (*pixels.mean(0).tolist(), *np.maximum(pixels.std(0), 1e-3).tolist())


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _subset(images: list[np.ndarray]) -> list[np.ndarray]:
    step = max(1, len(images) // FIT_IMAGES)
    return images[::step][:FIT_IMAGES]


def fit_lowpass(real: list[np.ndarray], synthetic: list[np.ndarray]) -> LowpassTarget:
    """The blur (bisection on sigma: mean sharpness of blurred ``real`` = that of ``synthetic``; none when the
    real images are already no sharper) and the colour moments, for one class of uint8 images of one size."""
    real_fit, synthetic_fit = _subset(real), _subset(synthetic)
    target = _mean_sharpness(synthetic_fit)
    before = _mean_sharpness(real_fit)
    low, high = 0.0, MAX_SIGMA
    if not before > target:  # also NaN: nothing to fit
        high = 0.0
    for _ in range(30):  # sharpness falls monotonically with sigma; 30 halvings of 8 px are far below a pixel
        if high - low < 1e-3:
            break
        middle = (low + high) / 2
        low, high = (middle, high) if _mean_sharpness(real_fit, middle) > target else (low, middle)
    sigma = round(high, 4)
    blurred = [_blur(image, sigma) for image in real_fit]
    return LowpassTarget(sigma, _lab_moments(blurred), _lab_moments(synthetic_fit), before, target,
                         _mean_sharpness(blurred))


def lowpass_copy(image: np.ndarray, target: LowpassTarget, copy: int) -> np.ndarray:
    """Blur, move the colour moments from the real class's to the synthetic class's, and turn by ``copy``."""
    lab = _lab(_blur(image, target.sigma))
    mean_r, sd_r = np.array(target.real_lab[:3]), np.array(target.real_lab[3:])
    mean_s, sd_s = np.array(target.synthetic_lab[:3]), np.array(target.synthetic_lab[3:])
    moved = ((lab - mean_r) / sd_r * sd_s + mean_s).astype(np.float32)
    moved[..., 0] = moved[..., 0].clip(0, 100)
    rgb = cv2.cvtColor(moved, cv2.COLOR_LAB2RGB)
    return dihedral((rgb.clip(0, 1) * 255 + 0.5).astype(np.uint8), copy)


def mixup_copy(image: np.ndarray, partner: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """``lam * image + (1 - lam) * partner`` with lam drawn from MIXUP_RANGE by ``seed``; returns (copy, lam)."""
    lam = float(np.random.default_rng(seed).uniform(*MIXUP_RANGE))
    mixed = lam * image.astype(np.float32) + (1 - lam) * partner.astype(np.float32)
    return (mixed + 0.5).clip(0, 255).astype(np.uint8), lam
