"""Image-similarity descriptors shared by duplicate detection (`prepare`) and memorization search (`audit`).

A descriptor is a 16 px high-pass colour image, mean-removed and L2-normalised, so that the dot product of two
descriptors is their normalised correlation. High-pass matters: at low resolution every dermoscopy image is a
dark blob on lighter skin, and plain correlations of unrelated lesions reach 0.95+.
"""

from __future__ import annotations

import cv2
import numpy as np

RETRIEVAL_SIZE = 16
N_DIHEDRAL = 8


def dihedral(image: np.ndarray, index: int) -> np.ndarray:
    """One of the 8 flips/rotations of a square image (index 0 = identity)."""
    out = np.rot90(image) if index >= 4 else image
    if index % 4 in (1, 3):
        out = out[:, ::-1]
    if index % 4 in (2, 3):
        out = out[::-1]
    return out


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors - vectors.mean(axis=1, keepdims=True)
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-8)


def _centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    side = image.shape[0]
    keep = round(side * fraction)
    start = (side - keep) // 2
    return image[start:start + keep, start:start + keep]


def retrieval_descriptors(images: np.ndarray, crops: tuple[float, ...] = (1.0,), flips: bool = False) -> np.ndarray:
    """(N * variants) x D unit vectors of 16 px high-pass colour images; variants = flips x centre crops."""
    rows = []
    for image in images:
        for d in range(N_DIHEDRAL if flips else 1):
            turned = dihedral(image, d)
            for fraction in crops:
                small = cv2.resize(np.ascontiguousarray(_centre_crop(turned, fraction)),
                                   (RETRIEVAL_SIZE, RETRIEVAL_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
                rows.append((small - cv2.GaussianBlur(small, (0, 0), 1.0)).ravel())
    return _unit(np.stack(rows))


def duplicate_pairs(images: np.ndarray, threshold: float = 0.97, chunk: int = 256) -> list[tuple[int, int, float]]:
    """Index pairs (i < j) of images whose descriptors correlate above ``threshold`` under any flip/rotation."""
    n = len(images)
    base = retrieval_descriptors(images)
    turned = retrieval_descriptors(images, flips=True)  # n * 8 rows
    pairs = []
    for start in range(0, n, chunk):
        sims = (base[start:start + chunk] @ turned.T).reshape(-1, n, N_DIHEDRAL).max(axis=2)
        for r, c in zip(*np.nonzero(sims > threshold), strict=True):
            if start + r < c:
                pairs.append((int(start + r), int(c), float(sims[r, c])))
    return pairs
