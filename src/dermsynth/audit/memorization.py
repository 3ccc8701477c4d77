"""Nearest real training image of every synthetic image, and which ones are near-copies.

Two similarities per synthetic image (Akbar et al. 2023 show FID alone cannot see copying):
(a) pixel: normalised cross-correlation of high-pass grey images at 64 px, maximised over the 8 flips/rotations
    and over small scale/shift changes, so that resized, recompressed, flipped or slightly cropped copies still
    score near 1. It runs in two steps: a cheap retrieval (correlation of 16 px descriptors against each training
    image's flips, rotations and centre crops) proposes candidates, then template matching verifies them.
(b) feature: cosine similarity in the audit's feature space.
Thresholds are calibrated on real data: a high quantile of the same similarities for held-out real images
(other patients) against the training set. A synthetic image is flagged when its pixel similarity exceeds the
threshold; the feature similarity and its own threshold are reported for review (see `audit.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from dermsynth.data.similarity import N_DIHEDRAL, dihedral, retrieval_descriptors

VERIFY_SIZE = 64
COARSE_SIZE = 32            # every candidate is template-matched here first ...
FINE_CANDIDATES = 2         # ... and only the best few again at VERIFY_SIZE
RETRIEVAL_CROPS = (1.0, 0.92, 0.84)
VERIFY_SCALES = (1.0, 0.95, 0.9, 0.85, 0.8)


@dataclass
class MemorizationConfig:
    candidates: int = 10        # retrieval candidates per similarity (pixel, feature) to verify
    quantile: float = 0.995     # of held-out real similarities, used as the flag threshold
    chunk: int = 512            # queries per retrieval matrix product


def _highpass_grey(image: np.ndarray, size: int) -> np.ndarray:
    grey = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).mean(axis=2)
    return np.ascontiguousarray(grey - cv2.GaussianBlur(grey, (0, 0), size / 16))


@dataclass
class SearchResult:
    pixel_similarity: np.ndarray      # best verified pixel similarity per query
    pixel_index: np.ndarray           # index of that training image
    feature_similarity: np.ndarray    # best feature cosine per query (NaN without features)
    feature_index: np.ndarray
    extra: dict = field(default_factory=dict)


class TrainingIndex:
    """The real training images, ready to be searched by many queries."""

    def __init__(self, images: np.ndarray, features: np.ndarray | None = None,
                 config: MemorizationConfig | None = None):
        self.config = config or MemorizationConfig()
        self.n = len(images)
        self.variants = N_DIHEDRAL * len(RETRIEVAL_CROPS)
        self.descriptors = torch.from_numpy(retrieval_descriptors(images, RETRIEVAL_CROPS, flips=True))
        self.coarse_images = [_highpass_grey(image, COARSE_SIZE) for image in images]
        self.verify_images = [_highpass_grey(image, VERIFY_SIZE) for image in images]
        self.features = None if features is None else torch.from_numpy(_l2(features))

    def search(self, images: np.ndarray, features: np.ndarray | None = None) -> SearchResult:
        n = len(images)
        queries = torch.from_numpy(retrieval_descriptors(images))
        query_features = None if features is None or self.features is None else torch.from_numpy(_l2(features))
        k = min(self.config.candidates, self.n)
        pixel_sim, pixel_idx = np.zeros(n), np.zeros(n, dtype=np.int64)
        feat_sim, feat_idx = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
        for start in range(0, n, self.config.chunk):
            stop = min(start + self.config.chunk, n)
            sims = (queries[start:stop] @ self.descriptors.T).view(stop - start, self.n, self.variants)
            best_variant_sim, best_variant = sims.max(dim=2)
            candidates = best_variant_sim.topk(k, dim=1).indices
            if query_features is not None:
                cos = query_features[start:stop] @ self.features.T
                top = cos.topk(k, dim=1)
                feat_sim[start:stop], feat_idx[start:stop] = top.values[:, 0].numpy(), top.indices[:, 0].numpy()
                candidates = torch.cat([candidates, top.indices], dim=1)
            for row in range(stop - start):
                q = start + row
                pixel_sim[q], pixel_idx[q] = self._verify(images[q], candidates[row].unique().numpy(),
                                                          best_variant[row])
        return SearchResult(pixel_sim, pixel_idx, feat_sim, feat_idx)

    def _verify(self, image: np.ndarray, candidates: np.ndarray, best_variant: torch.Tensor) -> tuple[float, int]:
        """Template-match the query, at a few scales, inside each candidate turned the way retrieval found best;
        coarse (32 px) for all candidates, then fine (64 px) for the best few."""
        turns = {int(c): int(best_variant[c]) // len(RETRIEVAL_CROPS) for c in candidates}
        coarse = self._match(_highpass_grey(image, COARSE_SIZE), self.coarse_images, turns)
        finalists = sorted(coarse, key=coarse.get, reverse=True)[:FINE_CANDIDATES]
        fine = self._match(_highpass_grey(image, VERIFY_SIZE), self.verify_images, {c: turns[c] for c in finalists})
        best = max(fine, key=fine.get)
        return fine[best], best

    @staticmethod
    def _match(query: np.ndarray, references: list[np.ndarray], turns: dict[int, int]) -> dict[int, float]:
        side = query.shape[0]
        templates = [cv2.resize(query, (round(side * s),) * 2, interpolation=cv2.INTER_AREA) if s < 1 else query
                     for s in VERIFY_SCALES]
        scores = {}
        for index, turn in turns.items():
            target = np.ascontiguousarray(dihedral(references[index], turn))
            scores[index] = max(float(cv2.matchTemplate(target, t, cv2.TM_CCOEFF_NORMED).max()) for t in templates)
        return scores


def _l2(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)


def light_copies(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Lightly transformed copies, as a near-copy might appear: the positive control of the detector."""
    rng = np.random.default_rng(seed)
    side = images.shape[1]

    def crop(image: np.ndarray) -> np.ndarray:
        keep = round(side * rng.uniform(0.9, 0.95))
        y, x = rng.integers(0, side - keep + 1, size=2)
        return cv2.resize(image[y:y + keep, x:x + keep], (side, side), interpolation=cv2.INTER_CUBIC)

    def resized(image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, (round(side * 0.75),) * 2, interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)

    def jpeg(image: np.ndarray) -> np.ndarray:
        _, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
        return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]

    transforms = {"exact": lambda a: a, "resized": resized, "jpeg": jpeg, "hflip": lambda a: a[:, ::-1],
                  "rot90": np.rot90, "crop": crop}
    return {name: np.stack([np.ascontiguousarray(f(a)) for a in images]) for name, f in transforms.items()}


def threshold(similarities: np.ndarray, quantile: float) -> float:
    finite = similarities[np.isfinite(similarities)]
    return float(np.quantile(finite, quantile)) if len(finite) else float("nan")


def within_set_similarity(features: np.ndarray, max_items: int = 2000, seed: int = 0) -> float:
    """Mean pairwise cosine similarity inside one set (higher = less diverse; mode collapse pushes it to 1)."""
    if len(features) < 2:
        return float("nan")
    if len(features) > max_items:
        features = features[np.random.default_rng(seed).choice(len(features), max_items, replace=False)]
    unit = _l2(features)
    gram = unit @ unit.T
    n = len(unit)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))
