"""Class-conditional sampling with classifier-free guidance for the from-scratch UNets, in pixel space or in the
latent space of an autoencoder (diffusers pipeline style).

Every image has its own seed: its starting noise and any noise a stochastic scheduler adds come from its own
``torch.Generator``, so an image depends on its seed and class, not on which batch it was drawn in.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DModel

from dermsynth.diffusion.families import Conditioning, GeneratorBase
from dermsynth.diffusion.schedulers import make_scheduler

UNET_FOLDER = "unet"
SCHEDULER_FOLDER = "scheduler"
VAE_FOLDER = "vae"


class PixelDiffusionPipeline:
    """Turns (class, seed) pairs into RGB images with a class-conditional ``UNet2DModel``.

    The UNet's last class embedding is the null class used for the unconditional half of guidance.
    """

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any], bf16: bool = False):
        self.unet = unet.eval()
        self.scheduler_config = dict(scheduler_config)
        self.bf16 = bf16

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", bf16: bool = False):
        folder = Path(folder)
        unet = UNet2DModel.from_pretrained(folder / UNET_FOLDER).to(device)
        config = json.loads((folder / SCHEDULER_FOLDER / "scheduler_config.json").read_text(encoding="utf-8"))
        return cls(unet, config, bf16=bf16)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def null_class(self) -> int:
        return self.unet.config.num_class_embeds - 1

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def sample_shape(self) -> tuple[int, int]:
        """Height and width of what the UNet denoises (a convolutional stage may run at another size)."""
        return self.unet.config.sample_size, self.unet.config.sample_size

    def sampling_schedule(self) -> dict[str, Any]:
        """The noise schedule's config for sampling (a stage that starts part-way overrides sigma_max)."""
        return self.scheduler_config

    def initial_sample(self, noise: torch.Tensor, sampler: Any) -> torch.Tensor:
        """Where sampling starts: pure noise at the schedule's largest level."""
        return noise * sampler.init_noise_sigma

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        """The denoised sample as an image in [-1, 1] (pixels already are one)."""
        return sample

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int],
        seeds: list[int],
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        scheduler: str = "dpm++",
    ) -> np.ndarray:
        """Images as float32 (N, H, W, 3), nominally in [0, 1] but not clipped, so that QC can see overflow."""
        if len(class_labels) != len(seeds):
            raise ValueError("one seed per class label")
        sampler = make_scheduler(scheduler, self.sampling_schedule())
        sampler.set_timesteps(num_inference_steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        shape = (self.unet.config.out_channels, *self.sample_shape)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        sample = self.initial_sample(noise.to(self.device), sampler)
        labels = torch.tensor(class_labels, device=self.device, dtype=torch.long)
        for t in sampler.timesteps:
            model_output = self._guided_output(sampler.scale_model_input(sample, t), t, labels, guidance_scale)
            sample = sampler.step(model_output, t, sample, generator=generators).prev_sample
        images = (self.decode(sample).float() / 2 + 0.5).permute(0, 2, 3, 1)
        return images.cpu().numpy()

    def _guided_output(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        null = torch.full_like(labels, self.null_class)
        if scale == 1.0:
            return self._unet(sample, t, labels)
        if scale == 0.0:
            return self._unet(sample, t, null)
        cond, uncond = self._unet(torch.cat([sample, sample]), t, torch.cat([labels, null])).chunk(2)
        return uncond + scale * (cond - uncond)

    def _unet(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        with autocast:
            return self.unet(sample, t, class_labels=labels).sample.float()


class LatentDiffusionPipeline(PixelDiffusionPipeline):
    """The same sampling in an autoencoder's latent space, decoded at the end; latents are scaled as in Stable
    Diffusion: ``z = (encoder mean - shift_factor) * scaling_factor``."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any], vae: AutoencoderKL, bf16: bool = False):
        super().__init__(unet, scheduler_config, bf16)
        self.vae = vae.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", bf16: bool = False):
        pixel = PixelDiffusionPipeline.from_pretrained(folder, device, bf16)
        vae = AutoencoderKL.from_pretrained(Path(folder) / VAE_FOLDER).to(device)
        return cls(pixel.unet, pixel.scheduler_config, vae, bf16=bf16)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, sample, self.bf16)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Scaled latents back to images in [-1, 1] (unclipped)."""
    config = vae.config
    unscaled = latents / config.scaling_factor + (config.shift_factor or 0.0)
    autocast = torch.autocast(latents.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        return vae.decode(unscaled.to(vae.dtype)).sample.float()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether a ``precision`` setting means bf16 autocast on ``device`` (dermsynth.precision: auto = native)."""
    from dermsynth.precision import resolve_precision

    return resolve_precision(precision, str(device)) == "bf16"




class ScratchGenerator(GeneratorBase):
    """The `generate` adapter of family "scratch": a class-conditional pixel model (no text prompts)."""

    family = "scratch"

    def __init__(self, pipeline: PixelDiffusionPipeline, info: dict[str, Any], sha256: str):
        super().__init__()
        self.pipeline = pipeline
        self.classes: list[str] = list(info["classes"])
        self.conditioning = Conditioning.from_record(info.get("conditioning"))
        self.sha256 = sha256
        self.defaults: dict[str, Any] = dict(info["sampling"])
        self.precision = "bf16" if pipeline.bf16 else "fp32"

    pipeline_class: type[PixelDiffusionPipeline] = PixelDiffusionPipeline
    weights = (UNET_FOLDER,)

    @classmethod
    def from_folder(cls, folder: Path, info: dict[str, Any], device: str = "auto") -> ScratchGenerator:
        from dermsynth.utils import pick_device, sha256_file, stable_hash

        # bf16 samples ~2.4x faster on CPUs with native bf16, 0.2 levels (of 255) from fp32 on average.
        device = pick_device(device)
        pipeline = cls.pipeline_class.from_pretrained(folder, device=device,
                                                      bf16=use_bf16("auto", torch.device(device)))
        hashes = [sha256_file(folder / name / "diffusion_pytorch_model.safetensors") for name in cls.weights]
        return cls(pipeline, info, hashes[0] if len(hashes) == 1 else stable_hash(hashes))

    def prompt(self, label: str) -> str:
        return f"class:{label}"

    def __call__(self, labels: list[str], seeds: list[int], *, steps: int, scheduler: str,
                 guidance_scale: float, indices: list[int] | None = None) -> np.ndarray:
        # An image depends on its seed and class only: ``indices`` (for image-to-image families) are unused.
        targets = self.conditioning.targets(labels, seeds, self.classes)
        return self.pipeline(targets, seeds, num_inference_steps=steps, guidance_scale=guidance_scale,
                             scheduler=scheduler)


class LatentGenerator(ScratchGenerator):
    """The `generate` adapter of family "latent": the class-conditional UNet in an autoencoder's latent space."""

    family = "latent"
    batch_size = 16  # decoding at 128 px and more: activations, not the UNet, bound the batch
    pipeline_class = LatentDiffusionPipeline
    weights = (UNET_FOLDER, VAE_FOLDER)
