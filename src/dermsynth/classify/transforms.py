"""The one image transform of the validation stage, shared by train, val, test and feature extraction.

Every image (real or synthetic, any size) goes through :func:`load_image`: decode to RGB, centre-crop to a
square, resize to the model's side with an antialiased bicubic filter. Batches are then normalised with the
model's mean/std by :func:`normalize`. Only training batches additionally pass through :func:`augment`
(flips, 90-degree rotations, mild colour jitter), applied on uint8 -> float tensors in the batch, so there is no
per-image Python work in the training loop and no data-loader processes competing for the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The square crop + resize is the prepared-image contract shared by every stage; it lives in the data layer.
from dermsynth.data.images import load_image, square_resize

__all__ = ["ImageSpec", "Jitter", "augment", "load_image", "normalize", "square_resize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSpec:
    """What a classifier expects: square side in pixels and per-channel normalisation."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class Jitter:
    """Mild colour jitter: each factor is drawn uniformly from [1 - x, 1 + x] per image."""

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


def normalize(batch: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """uint8 NHWC (or float NCHW in [0, 1]) -> normalised float NCHW."""
    if batch.dtype == torch.uint8:
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def _uniform(n: int, spread: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (1.0 + (torch.rand(n, generator=generator) * 2 - 1) * spread).view(n, 1, 1, 1).to(device)


def augment(batch: torch.Tensor, generator: torch.Generator, jitter: Jitter | None = Jitter()) -> torch.Tensor:
    """Random dihedral transform (horizontal flip x 0-3 quarter turns: all 8 symmetries of the square) and colour
    jitter, per image. uint8 NHWC in, float NCHW in [0, 1] out; draws come from ``generator`` only."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    n, device = x.shape[0], x.device
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    turns = torch.randint(0, 4, (n,), generator=generator).to(device)
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            x[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    if jitter is None:
        return x
    x = x * _uniform(n, jitter.brightness, generator, device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _uniform(n, jitter.contrast, generator, device) + mean
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * _uniform(n, jitter.saturation, generator, device) + grey
    return x.clamp_(0.0, 1.0)
