"""Distribution metrics between two feature sets (rows = images), with their standard definitions.

- FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to the two sets.
- KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel, mean ± sd over random subsets
  (torchmetrics' ``poly_mmd``).
- Precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020) from k-nearest-
  neighbour balls, computed in chunks so that 10k x 10k sets never need a full distance matrix at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.image.kid import poly_mmd


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance; NaN when either set has fewer than two images (no covariance) or non-finite features."""
    if len(real) < 2 or len(fake) < 2 or not (np.isfinite(real).all() and np.isfinite(fake).all()):
        return math.nan
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * trace_sqrt_product(cov_r, cov_f))


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(A B) for covariance matrices A and B, from symmetric eigendecompositions.

    A B has the eigenvalues of the symmetric PSD matrix A^1/2 B A^1/2, so no general matrix square root is needed:
    with fewer images than feature dimensions both covariances are singular, where scipy's sqrtm is slow, may not
    return for minutes, and needs an ad-hoc regulariser.
    """
    values, vectors = np.linalg.eigh(a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ b @ root_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
        ) -> tuple[float, float]:
    """KID mean and sd over ``subsets`` random subsets of ``min(subset_size, n_real, n_fake)`` images."""
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    real_t, fake_t = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    values = [
        float(poly_mmd(real_t[rng.choice(len(real), size, replace=False)],
                       fake_t[rng.choice(len(fake), size, replace=False)]))
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row (self excluded)."""
    radii = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself is at distance 0
    return torch.cat(radii)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int = 2048) -> dict[str, float]:
    """Precision, recall, density and coverage with k-NN radii (k=5 as in Naeem et al.)."""
    nan = dict.fromkeys(("precision", "recall", "density", "coverage"), math.nan)
    if len(real) <= k or len(fake) <= k:
        return nan
    r, f = torch.from_numpy(real).float(), torch.from_numpy(fake).float()
    radius_r, radius_f = _kth_neighbour_radius(r, k, chunk), _kth_neighbour_radius(f, k, chunk)
    inside_real_balls = torch.zeros(len(f))     # per fake: in how many real k-NN balls
    real_covered = torch.zeros(len(r), dtype=torch.bool)
    real_in_fake_ball = torch.zeros(len(r), dtype=torch.bool)
    for start in range(0, len(r), chunk):
        d = torch.cdist(r[start:start + chunk], f)                     # real chunk x fake
        within = d < radius_r[start:start + chunk, None]
        inside_real_balls += within.sum(dim=0)
        real_covered[start:start + chunk] = d.min(dim=1).values < radius_r[start:start + chunk]
        real_in_fake_ball[start:start + chunk] = (d < radius_f[None, :]).any(dim=1)
    return {
        "precision": float((inside_real_balls > 0).float().mean()),
        "recall": float(real_in_fake_ball.float().mean()),
        "density": float(inside_real_balls.sum() / (k * len(f))),
        "coverage": float(real_covered.float().mean()),
    }


def compare(real: np.ndarray, fake: np.ndarray, k: int = 5, kid_subsets: int = 50, seed: int = 0) -> dict[str, float]:
    """All fidelity metrics of ``fake`` against ``real`` in one dict."""
    kid_mean, kid_sd = kid(real, fake, subsets=kid_subsets, seed=seed)
    return {"n_real": len(real), "n_fake": len(fake), "fid": fid(real, fake), "kid_mean": kid_mean,
            "kid_sd": kid_sd, **prdc(real, fake, k=k)}
