"""The from-scratch model's training objective: augmentation, the denoising losses (discrete schedule or EDM) and
Min-SNR weighting (also used by Stable Diffusion fine-tuning)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from dermsynth.diffusion.losses import min_snr_weight
from dermsynth.diffusion.scratch.config import NoiseConfig, TrainConfig


def augment(images: torch.Tensor, generator: torch.Generator, flips: bool, transpose: bool) -> torch.Tensor:
    """Per-image random flips and transposition (together: the 8 symmetries of the square)."""
    def where(mask_p: float, transformed: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        mask = torch.rand(base.shape[0], generator=generator, device=base.device) < mask_p
        return torch.where(mask[:, None, None, None], transformed, base)

    if flips:
        images = where(0.5, images.flip(3), images)
        images = where(0.5, images.flip(2), images)
    if transpose:
        images = where(0.5, images.transpose(2, 3), images)
    return images


def diffusion_loss(
    unet: UNet2DModel,
    noise_scheduler: Any,
    clean: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    cfg: TrainConfig,
    bf16: bool,
) -> torch.Tensor:
    """Noise ``clean`` at random noise levels and regress the configured target (optionally Min-SNR weighted)."""
    if cfg.noise.parameterization == "edm":
        return edm_loss(unet, clean, labels, generator, cfg.noise, bf16)
    batch = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    timesteps = torch.randint(0, cfg.noise.num_train_timesteps, (batch,), generator=generator, device=clean.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    target = {"epsilon": noise, "sample": clean}.get(cfg.noise.prediction_type)
    if target is None:
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    with _autocast(clean.device, bf16):
        prediction = unet(noisy, timesteps, class_labels=labels).sample
    per_image = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3))
    if cfg.snr_gamma is not None:
        per_image = per_image * min_snr_weight(noise_scheduler, timesteps, cfg.snr_gamma, cfg.noise.prediction_type)
    return per_image.mean()


def edm_loss(unet: UNet2DModel, clean: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
             noise_cfg: NoiseConfig, bf16: bool, condition: torch.Tensor | None = None) -> torch.Tensor:
    """EDM (Karras et al. 2022): log-normal sigma, preconditioned network F, D = c_skip x + c_out F.

    The EDM loss weight lambda(sigma) = 1 / c_out^2 turns ||D - x||^2 into ||F - (x - c_skip x_noisy) / c_out||^2,
    a unit-weight regression whose target has unit variance at every noise level. The network sees
    c_in x_noisy and the timestep c_noise = log(sigma) / 4, as diffusers' EDM schedulers feed it when sampling.
    ``condition`` (channels concatenated to the network's input, e.g. a super-resolution stage's low-resolution
    image) is not noised.
    """
    shape = (clean.shape[0], 1, 1, 1)
    log_sigma = noise_cfg.p_mean + noise_cfg.p_std * torch.randn(shape, generator=generator, device=clean.device)
    sigma = log_sigma.exp()
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator, device=clean.device)
    sd2 = noise_cfg.sigma_data ** 2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * noise_cfg.sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sigma**2 + sd2).sqrt()
    target = (clean - c_skip * noisy) / c_out
    network_input = c_in * noisy if condition is None else torch.cat([c_in * noisy, condition], dim=1)
    with _autocast(clean.device, bf16):
        prediction = unet(network_input, (log_sigma / 4).flatten(), class_labels=labels).sample
    return F.mse_loss(prediction.float(), target)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
