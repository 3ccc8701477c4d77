"""Loss weightings every diffusion family can use."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def min_snr_weight(noise_scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float, prediction: str):
    """Min-SNR-gamma (Hang et al. 2023), expressed for the prediction target in use."""
    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "v_prediction":
        return clipped / (snr + 1)
    return clipped
