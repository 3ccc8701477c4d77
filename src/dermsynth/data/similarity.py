"""Image-similarity descriptors shared by duplicate detection (`prepare`) and memorization search (`audit`).

A descriptor is a 16 px high-pass colour image, mean-removed and L2-normalised, so that the dot product of two
descriptors is their normalised correlation. High-pass matters: at low resolution every dermoscopy image is a
dark blob on lighter skin, and plain correlations of unrelated lesions reach 0.95+.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

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
    """Rows with mean 0 and norm 1, so that dot products are correlations."""
    vectors = np.array(vectors, dtype=np.float32, order="C")  # one contiguous copy, then in place
    vectors -= vectors.mean(axis=1, keepdims=True)
    vectors /= np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None] + 1e-8
    return vectors


def _centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    side = image.shape[0]
    keep = round(side * fraction)
    start = (side - keep) // 2
    return image[start:start + keep, start:start + keep]


def retrieval_descriptors(images: np.ndarray, crops: tuple[float, ...] = (1.0,), flips: bool = False) -> np.ndarray:
    """(N * variants) x D unit vectors of 16 px high-pass colour images; variants = flips x centre crops.

    Rows are ordered image-major, then flip/rotation, then crop. Flips and rotations are applied to the small
    images (they commute with the centred crop, the area resize and the isotropic blur), so each image is
    resized once per crop and everything else runs on whole batches.
    """
    small = np.stack([
        np.stack([cv2.resize(np.ascontiguousarray(_centre_crop(image, fraction)), (RETRIEVAL_SIZE, RETRIEVAL_SIZE),
                             interpolation=cv2.INTER_AREA) for fraction in crops])
        for image in images
    ]).astype(np.float32)                                           # N x crops x 16 x 16 x 3
    # High-pass: subtract a Gaussian blur (sigma 1 px, mirrored border, as cv2's default border).
    small -= ndimage.gaussian_filter(small, sigma=(0, 0, 1, 1, 0), mode="mirror", truncate=4.0)
    turns = range(N_DIHEDRAL) if flips else range(1)
    variants = np.stack([turn_batch(small, d) for d in turns], axis=1)  # N x turns x crops x 16 x 16 x 3
    return _unit(variants.reshape(-1, RETRIEVAL_SIZE * RETRIEVAL_SIZE * 3))


def turn_batch(batch: np.ndarray, index: int) -> np.ndarray:
    """:func:`dihedral` on the two image axes (-3, -2) of a batch."""
    out = np.swapaxes(batch, -3, -2)[..., ::-1, :, :] if index >= 4 else batch  # rot90 = transpose + flip
    if index % 4 in (1, 3):
        out = out[..., :, ::-1, :]
    if index % 4 in (2, 3):
        out = out[..., ::-1, :, :]
    return out


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


def cross_duplicates(queries: np.ndarray, references: np.ndarray, threshold: float = 0.97,
                     chunk: int = 256) -> list[tuple[int, int, float]]:
    """(query index, reference index, similarity) for every query image whose descriptor correlates above
    ``threshold`` with a reference image under any flip/rotation: the same test as :func:`duplicate_pairs`,
    between two sets (an external test set against everything a classifier trained on)."""
    if not len(queries) or not len(references):
        return []
    reference = retrieval_descriptors(references)
    turned = retrieval_descriptors(queries, flips=True)  # the 8 turns on the (usually smaller) query side
    found = []
    for start in range(0, len(turned), chunk * N_DIHEDRAL):
        sims = (turned[start:start + chunk * N_DIHEDRAL] @ reference.T).reshape(-1, N_DIHEDRAL, len(references))
        best = sims.max(axis=1)
        for r, c in zip(*np.nonzero(best > threshold), strict=True):
            found.append((int(start // N_DIHEDRAL + r), int(c), float(best[r, c])))
    return found
