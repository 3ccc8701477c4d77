"""The classical-augmentation control: strongly augmented copies of the real training images, in place of
synthetic ones (regimes ``augment:f`` and ``augment-add:n``).

A synthetic-data result means little until it beats what cheap augmentation of the same real images gives. Each
copy applies, in torch: one of the 8 symmetries of the square, a zoom crop (a random square of 60-100 % of the
side, resized back), a smooth elastic distortion (a random coarse displacement field, bicubically upsampled), and
brightness, contrast, saturation and gamma jitter. Copy ``k`` of image ``id`` in a run of seed ``s`` depends on
(s, id, k) only, so a rerun makes the same copies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dermsynth.evaluate.regimes import copy_seed  # noqa: F401 (the seed of each copy, re-exported)


@dataclass(frozen=True)
class StrongAugment:
    min_zoom: float = 0.6        # smallest crop side, as a fraction of the image side
    elastic: float = 0.04        # displacement amplitude, as a fraction of the image side
    elastic_grid: int = 4        # control points per side of the displacement field
    brightness: float = 0.2      # multiplicative, +/-
    contrast: float = 0.25
    saturation: float = 0.3
    gamma: float = 0.2           # exponent 2**u, u in +/- gamma

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


RECIPE = StrongAugment()


def strong_augment(image: np.ndarray, seed: int, recipe: StrongAugment = RECIPE) -> np.ndarray:
    """One strongly augmented copy of a uint8 HxWx3 image (same size, uint8)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, shape: tuple[int, ...] = ()) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None] / 255.0  # the bank keeps read-only arrays
    turn = int(torch.randint(0, 8, (), generator=generator))
    if turn & 1:
        x = x.flip(3)
    if turn & 2:
        x = x.flip(2)
    if turn & 4:
        x = x.transpose(2, 3)
    x = _zoom_and_distort(x, uniform, recipe)
    x = _colour_jitter(x, uniform, recipe)
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _zoom_and_distort(x: torch.Tensor, uniform, recipe: StrongAugment) -> torch.Tensor:
    """A random square crop of side ``zoom`` (in units of the image) with a smooth displacement, resampled."""
    size = x.shape[-1]
    zoom = float(uniform(recipe.min_zoom, 1.0))
    centre = uniform(-(1 - zoom), 1 - zoom, (2,))  # in grid_sample's [-1, 1] coordinates
    axis = torch.linspace(-1, 1, size)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xs * zoom + centre[0], ys * zoom + centre[1]], dim=-1)[None]
    coarse = uniform(-1, 1, (1, 2, recipe.elastic_grid, recipe.elastic_grid)) * (2 * recipe.elastic)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid + field, mode="bilinear", padding_mode="reflection", align_corners=True)


def _colour_jitter(x: torch.Tensor, uniform, recipe: StrongAugment) -> torch.Tensor:
    x = x * float(uniform(1 - recipe.brightness, 1 + recipe.brightness))
    mean = x.mean()
    x = (x - mean) * float(uniform(1 - recipe.contrast, 1 + recipe.contrast)) + mean
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = (x - grey) * float(uniform(1 - recipe.saturation, 1 + recipe.saturation)) + grey
    return x.clamp(0, 1) ** (2 ** float(uniform(-recipe.gamma, recipe.gamma)))
