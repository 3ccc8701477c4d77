"""The cascade's ceiling for `dermsynth reconstruct --model CASCADE`: real images, downsampled to the base's size
as the stage was trained, then upscaled by the super-resolution stage alone, with each image's true class.

It measures how close the cascade can come with a perfect base model: whatever the audit still tells apart is
the super-resolution stage's doing. Its output is a reconstruction folder (real patients' content), which `audit`
reads and `validate` refuses as synthetic input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermsynth.diffusion.cascade.sampling import SR_FOLDER, SuperResolutionPipeline, downsample
from dermsynth.diffusion.families import read_model_info
from dermsynth.diffusion.scratch.sampling import UNET_FOLDER, use_bf16
from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError
from dermsynth.utils import relative_path, sha256_file


class SuperResolutionCodec:
    """Down by the cascade's factor (antialiased bicubic), then the super-resolution stage's sampler."""

    name = "super-resolution"

    def __init__(self, model: Path, device: str):
        info = read_model_info(model)
        stage = info.get("super_resolution") or {}
        folder = model / SR_FOLDER
        try:
            self.factor = int(stage["factor"])
            self.sampling = dict(stage["sampling"])
            self.bf16 = use_bf16("auto", torch.device(device))
            self.pipeline = SuperResolutionPipeline.from_pretrained(folder, device, self.bf16, factor=self.factor)
            self.sha256 = sha256_file(folder / UNET_FOLDER / "diffusion_pytorch_model.safetensors")
        except (*UNREADABLE_ARTIFACT_ERRORS, KeyError, TypeError, ValueError) as exc:
            raise DermsynthError(f"{folder}: the super-resolution stage cannot be read ({type(exc).__name__}); "
                                 "retrain or copy the model folder again") from None
        self.model, self.device = model, device
        self.size = int(info["image_size"])
        self.description = (f"the super-resolution stage of a cascade ({self.factor}x): real images downsampled to "
                            f"{self.size // self.factor} px, then upscaled with their own class, noise level "
                            f"{self.sampling['augmentation']}")

    @torch.no_grad()
    def __call__(self, images: np.ndarray, labels: list[int], seeds: list[int]) -> np.ndarray:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        low = downsample(pixels, self.factor)
        s = self.sampling
        made = self.pipeline.upscale(low, labels, seeds, augmentation=s["augmentation"],
                                     num_inference_steps=s["steps"], guidance_scale=s["guidance_scale"],
                                     scheduler=s["scheduler"], start_sigma=s.get("start_sigma"))
        return (np.clip(made, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def record(self, base: Path) -> dict[str, Any]:
        return {"model": relative_path(self.model, base), "super_resolution_sha256": self.sha256,
                "factor": self.factor, "sampling": self.sampling, "bf16": self.bf16}
