"""Sampling schedulers by short name, built from a model's training noise schedule.

Timesteps are spaced "trailing" so that sampling starts at the last training timestep: with the cosine schedule
that is (almost) pure noise, which keeps image brightness and colour right (the default spacing starts short of
it and leaves a grey cast).
"""

from __future__ import annotations

from typing import Any

from dermsynth.errors import DermsynthError

# name -> (diffusers class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
}

# Models trained with EDM preconditioning (a continuous noise level, no betas) sample with diffusers' EDM schedulers.
EDM_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++": ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++-sde": ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "euler": ("EDMEulerScheduler", {}),
}


def check_scheduler_name(name: str) -> str:
    if name not in SCHEDULERS:
        raise DermsynthError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return name


def make_scheduler(name: str, training_config: dict[str, Any]):
    """A fresh sampling scheduler ``name`` sharing the betas and prediction type of ``training_config``."""
    import diffusers

    base = {k: v for k, v in training_config.items() if not k.startswith("_")}
    if is_edm(base):
        return _edm_scheduler(name, base)
    class_name, extra = SCHEDULERS[check_scheduler_name(name)]
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "trained_betas")
    config = {k: base[k] for k in keep if k in base} | extra | {"timestep_spacing": "trailing"}
    return getattr(diffusers, class_name).from_config(config)


def is_edm(training_config: dict[str, Any]) -> bool:
    return "sigma_data" in training_config


def _edm_scheduler(name: str, base: dict[str, Any]):
    import diffusers

    check_scheduler_name(name)
    if name not in EDM_SCHEDULERS:
        raise DermsynthError(f"scheduler {name!r} does not sample EDM models; "
                             f"choose one of {', '.join(EDM_SCHEDULERS)}")
    class_name, extra = EDM_SCHEDULERS[name]
    keep = ("sigma_min", "sigma_max", "sigma_data", "num_train_timesteps", "prediction_type")
    return getattr(diffusers, class_name).from_config({k: base[k] for k in keep if k in base} | extra)
