"""Sampling a cascade: the base's low-resolution images, then the super-resolution stage conditioned on them.

Every image keeps its own seed through both stages: the base's noise, the conditioning augmentation's noise and the
super-resolution stage's noise all come from generators seeded by the image's seed, so an image depends on its
seed and class, not on the batch it was drawn in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from dermsynth.diffusion.families import Conditioning, GeneratorBase
from dermsynth.diffusion.scratch.sampling import (
    SCHEDULER_FOLDER,
    UNET_FOLDER,
    PixelDiffusionPipeline,
    use_bf16,
)

BASE_FOLDER = "base"
SR_FOLDER = "super_resolution"
AUGMENTATION_SEED = 0x5EED  # offsets an image's seed for its conditioning-augmentation noise


def upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """The low-resolution image as the stage sees it: bicubic to full size."""
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False)


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Full-size images in [-1, 1] to the base's size: antialiased bicubic, as the stage was trained."""
    side = images.shape[-1] // factor
    return F.interpolate(images, size=side, mode="bicubic", antialias=True, align_corners=False)


def condition(low: torch.Tensor, level: torch.Tensor, size: int) -> torch.Tensor:
    """The stage's conditioning channels: the (augmented) low-resolution image upsampled, and a plane holding the
    augmentation level of each image."""
    up = upsample(low, size)
    plane = level.view(-1, 1, 1, 1).expand(-1, 1, size, size).to(up.dtype)
    return torch.cat([up, plane], dim=1)


class SuperResolutionPipeline(PixelDiffusionPipeline):
    """Turns (low-resolution image, class, seed) into a full-size image with the conditional UNet."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any], factor: int, bf16: bool = False):
        super().__init__(unet, scheduler_config, bf16)
        self.factor = factor
        self._condition: torch.Tensor | None = None
        self._start: tuple[torch.Tensor, float] | None = None  # (upsampled image, sigma) to start from
        self._size = int(unet.config.sample_size)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", bf16: bool = False, factor: int = 4):
        folder = Path(folder)
        unet = UNet2DModel.from_pretrained(folder / UNET_FOLDER).to(device)
        config = json.loads((folder / SCHEDULER_FOLDER / "scheduler_config.json").read_text(encoding="utf-8"))
        return cls(unet, config, factor, bf16=bf16)

    @property
    def sample_shape(self) -> tuple[int, int]:
        return self._size, self._size

    @torch.no_grad()
    def upscale(self, low: torch.Tensor, class_labels: list[int], seeds: list[int], *, augmentation: float,
                num_inference_steps: int = 15, guidance_scale: float = 1.0, scheduler: str = "dpm++",
                start_sigma: float | None = None) -> np.ndarray:
        """``low``: images in [-1, 1] (N, 3, h, w); returns float (N, h * factor, w * factor, 3) in [0, 1],
        unclipped. ``augmentation`` is the noise level added to ``low`` (the stage is told it). ``start_sigma``:
        start from the upsampled ``low`` plus noise of that level instead of pure noise (the low frequencies are
        then the base's from the first step; None = from pure noise, as the stage was trained for)."""
        self._size = int(low.shape[-1]) * self.factor
        noise = torch.stack([
            torch.randn(low.shape[1:], generator=torch.Generator("cpu").manual_seed(int(seed) + AUGMENTATION_SEED))
            for seed in seeds]).to(self.device)
        level = torch.full((low.shape[0],), float(augmentation), device=self.device)
        low = low.to(self.device).float()
        self._condition = condition(low + augmentation * noise, level, self._size)
        self._start = None if start_sigma is None else (upsample(low, self._size), float(start_sigma))
        try:
            return self(class_labels, seeds, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, scheduler=scheduler)
        finally:
            self._condition, self._start = None, None

    def sampling_schedule(self) -> dict[str, Any]:
        if self._start is None:
            return self.scheduler_config
        return {**self.scheduler_config, "sigma_max": self._start[1]}

    def initial_sample(self, noise: torch.Tensor, sampler: Any) -> torch.Tensor:
        if self._start is None:
            return super().initial_sample(noise, sampler)
        image, sigma = self._start
        return image + sigma * noise

    def _unet(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._condition is None:
            raise RuntimeError("a super-resolution stage samples through upscale(), which gives the low-resolution "
                               "images")
        repeats = sample.shape[0] // self._condition.shape[0]  # guidance doubles the batch
        return super()._unet(torch.cat([sample, self._condition.repeat(repeats, 1, 1, 1)], dim=1), t, labels)


class CascadePipeline:
    """Base model, then super-resolution: class labels and seeds in, full-size images out."""

    def __init__(self, base: PixelDiffusionPipeline, sr: SuperResolutionPipeline, sr_sampling: dict[str, Any]):
        self.base, self.sr, self.sr_sampling = base, sr, dict(sr_sampling)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", bf16: bool = False,
                        info: dict[str, Any] | None = None) -> CascadePipeline:
        folder = Path(folder)
        if info is None:
            from dermsynth.diffusion.families import read_model_info

            info = read_model_info(folder)
        stage = info["super_resolution"]
        base = PixelDiffusionPipeline.from_pretrained(folder / BASE_FOLDER, device, bf16)
        sr = SuperResolutionPipeline.from_pretrained(folder / SR_FOLDER, device, bf16, factor=int(stage["factor"]))
        return cls(base, sr, stage["sampling"])

    @property
    def bf16(self) -> bool:
        return self.base.bf16

    @torch.no_grad()
    def __call__(self, class_labels: list[int], seeds: list[int], num_inference_steps: int = 15,
                 guidance_scale: float = 2.0, scheduler: str = "dpm++") -> np.ndarray:
        """The base samples with the given steps, scheduler and guidance; the stage with its own settings."""
        low = self.base(class_labels, seeds, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, scheduler=scheduler)
        low = torch.from_numpy(low).permute(0, 3, 1, 2).clamp(0, 1) * 2 - 1
        sampling = self.sr_sampling
        return self.sr.upscale(low, class_labels, seeds, augmentation=sampling["augmentation"],
                               num_inference_steps=sampling["steps"], guidance_scale=sampling["guidance_scale"],
                               scheduler=sampling["scheduler"], start_sigma=sampling.get("start_sigma"))


class CascadeGenerator(GeneratorBase):
    """The `generate` adapter of family "cascade". `generate`'s steps, scheduler and guidance apply to the base;
    the super-resolution stage samples with the settings recorded in the model folder."""

    family = "cascade"
    batch_size = 16  # the stage runs at full size: activations bound the batch

    def __init__(self, pipeline: CascadePipeline, info: dict[str, Any], sha256: str):
        super().__init__()
        self.pipeline = pipeline
        self.classes: list[str] = list(info["classes"])
        self.conditioning = Conditioning.from_record(info.get("conditioning"))
        self.sha256 = sha256
        self.defaults: dict[str, Any] = dict(info["sampling"])
        self.precision = "bf16" if pipeline.bf16 else "fp32"

    @classmethod
    def from_folder(cls, folder: Path, info: dict[str, Any], device: str = "auto") -> CascadeGenerator:
        from dermsynth.utils import pick_device, sha256_file, stable_hash

        device = pick_device(device)
        pipeline = CascadePipeline.from_pretrained(folder, device, use_bf16("auto", torch.device(device)), info)
        hashes = [sha256_file(folder / stage / UNET_FOLDER / "diffusion_pytorch_model.safetensors")
                  for stage in (BASE_FOLDER, SR_FOLDER)]
        return cls(pipeline, info, stable_hash(hashes))

    def prompt(self, label: str) -> str:
        return f"class:{label}"

    def __call__(self, labels: list[str], seeds: list[int], *, steps: int, scheduler: str,
                 guidance_scale: float, indices: list[int] | None = None) -> np.ndarray:
        targets = self.conditioning.targets(labels, seeds, self.classes)
        return self.pipeline(targets, seeds, num_inference_steps=steps, guidance_scale=guidance_scale,
                             scheduler=scheduler)
