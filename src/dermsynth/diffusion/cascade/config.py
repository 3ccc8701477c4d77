"""The cascade family's config and presets: a class-conditional pixel model at low resolution (the base, the
scratch family's own model and trainer) followed by a conditional diffusion super-resolution model (Ho et al.,
"Cascaded Diffusion Models", 2022; Saharia et al., SR3).

The super-resolution UNet sees the noisy high-resolution image concatenated with the low-resolution image
(bicubic-upsampled to full size) and with a constant plane holding the level of Gaussian noise that was added to
the low-resolution image. That noise ("conditioning augmentation") is what makes a cascade beat a single model:
the stage learns not to trust the base's artefacts. The UNet is fully convolutional (no attention), so it trains on
random crops and runs on whole images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from dermsynth.config import THREADS_HELP, StrictModel, ThreadSetting, read_yaml, validate_config
from dermsynth.diffusion.scratch.config import (
    LABEL_SCHEME_HELP,
    LabelScheme,
    NoiseConfig,
    TrainConfig,
    deep_merge,
    resolve_train_config,
)
from dermsynth.diffusion.scratch.config import (
    PRESETS as BASE_PRESETS,
)
from dermsynth.errors import DermsynthError

if TYPE_CHECKING:
    from diffusers import UNet2DModel

CascadePresetName = Literal["cpu-cascade-128", "gpu-cascade-256"]


class SuperResolutionConfig(StrictModel):
    """Stage 2: the conditional super-resolution model."""

    factor: Literal[2, 4, 8] = Field(4, description="Upscaling factor: the base makes images this many times "
                                     "smaller than the cascade's image_size.")
    block_out_channels: list[int] = Field(
        [64, 128, 256], min_length=2, max_length=5, description="Channels of each resolution level of the UNet.")
    layers_per_block: int = Field(1, ge=1, le=4, description="Residual blocks per resolution level.")
    norm_num_groups: int = Field(32, ge=1, description="GroupNorm groups; must divide every channel count.")
    crop_size: int = Field(64, ge=16, description="Train on random square crops of this side of the full-size "
                           "images (the UNet is convolutional, so it then runs on whole images).")
    noise: NoiseConfig = Field(default_factory=lambda: NoiseConfig(parameterization="edm"),
                               description="The stage's own noise schedule (EDM by default).")
    augmentation_max: float = Field(
        0.5, ge=0.0, le=2.0, description="Conditioning augmentation: each training low-resolution image gets "
        "Gaussian noise of a level drawn uniformly from [0, augmentation_max] (images in [-1, 1]), and the UNet is "
        "told the level.")
    blur_max: float = Field(
        0.0, ge=0.0, le=3.0, description="Also blur each training low-resolution image with a Gaussian of sigma "
        "drawn uniformly from [0, blur_max] low-resolution pixels (0 = off).")
    sample_augmentation: float = Field(
        0.1, ge=0.0, le=2.0, description="The noise level added to the base's images when sampling (the stage is "
        "told it): higher hides more of the base's artefacts and invents more detail.")
    sample_start_sigma: float | None = Field(
        0.5, gt=0, description="Start sampling from the upsampled base image plus noise of this level instead of "
        "from pure noise (SDEdit-style: the base fixes colours and shapes, the stage adds what lies below this "
        "noise level). 0.5 measured best on HAM10000's val split: sharpness 0.90x / 0.93x real and a colour error of "
        "4 CIELAB units, against 1.8x / 1.7x and 11-12 from pure noise (bench/RESULTS.md); null = from pure noise.")
    label_dropout: float = Field(0.1, ge=0.0, le=1.0, description="Probability of the null class (trains CFG).")
    batch_size: int = Field(16, ge=1, description="Crops per optimisation step.")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="After warmup: constant or cosine.")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warmup steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm (None = off).")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="Highest EMA decay, reached after the warmup.")
    ema_power: float = Field(0.75, gt=0, description="EMA warmup power: decay = 1 - (1 + step) ** -power.")
    flips: bool = Field(True, description="Random horizontal/vertical flips.")
    transpose: bool = Field(True, description="Random transposition (with flips: all 8 square symmetries).")
    max_steps: int = Field(4000, ge=1, description="Stop stage 2 after this many optimisation steps.")
    max_minutes: float | None = Field(None, gt=0, description="Also stop stage 2 when it has run this long.")
    checkpoint_every: int = Field(250, ge=1, description="Save a resumable checkpoint every N steps.")
    checkpoints_total_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    log_every: int = Field(25, ge=1, description="Record the loss every N steps.")
    sample_every: int = Field(1000, ge=1, description="Save a grid of upscaled validation images every N steps.")
    sample_scheduler: str = Field("dpm++", description="Sampler of the stage (an EDM sampler for EDM).")
    sample_steps: int = Field(15, ge=1, le=1000, description="Sampling steps of the stage.")
    guidance_scale: float = Field(1.0, ge=0.0, description="Classifier-free guidance of the stage (1 = off).")

    @model_validator(mode="after")
    def _consistent(self) -> SuperResolutionConfig:
        levels = len(self.block_out_channels)
        if any(ch % self.norm_num_groups for ch in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every entry of block_out_channels")
        step = max(self.factor, 2 ** (levels - 1))
        if self.crop_size % step:
            raise ValueError(f"crop_size must be divisible by {step} (the factor, and one halving per extra level)")
        if self.noise.parameterization != "edm":
            raise ValueError("the super-resolution stage is trained with EDM (noise.parameterization: edm)")
        return self


# Stage-2 fields that may change between a run and its resumption: budgets and reporting, not what is learned.
SR_RESUMABLE = frozenset({"max_steps", "max_minutes", "checkpoint_every", "checkpoints_total_limit", "log_every",
                          "sample_every", "sample_scheduler", "sample_steps", "guidance_scale",
                          "sample_augmentation", "sample_start_sigma"})


class CascadeConfig(StrictModel):
    image_size: int = Field(128, ge=32, le=1024, description="Side of the images the cascade makes, in pixels.")
    base_preset: str = Field("cpu-fast", description="The scratch-family preset the base stacks on.")
    base: TrainConfig = Field(description="Stage 1: the class-conditional pixel model at image_size / factor (any "
                                          "field of `dermsynth train`'s pixel config).")
    super_resolution: SuperResolutionConfig = Field(default_factory=SuperResolutionConfig)
    seed: int = Field(0, description="Seed of both stages (initialisation, batches, noise, augmentation).")
    real_per_class: int | None = Field(
        None, ge=1, description="Train both stages on this many training images per class only: the sample that "
        "`validate` takes with the same real_per_class and subsample_seed (null = the whole train split).")
    subsample_seed: int = Field(0, description="Seed of the real_per_class sample (as validate's subsample_seed).")
    label_scheme: LabelScheme = Field("label", description=LABEL_SCHEME_HELP + " Both stages embed the same classes.")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), or a torch device name.")
    threads: ThreadSetting = Field(None, description=THREADS_HELP)

    @property
    def base_size(self) -> int:
        return self.image_size // self.super_resolution.factor

    @model_validator(mode="after")
    def _stages_fit(self) -> CascadeConfig:
        sr = self.super_resolution
        if self.image_size % sr.factor or self.base.model.image_size != self.base_size:
            raise ValueError(f"base.model.image_size must be image_size / super_resolution.factor = "
                             f"{self.image_size} / {sr.factor} (got {self.base.model.image_size})")
        if self.base.autoencoder is not None:
            raise ValueError("the cascade's base is a pixel model: base.autoencoder must be null")
        if sr.crop_size > self.image_size:
            raise ValueError(f"super_resolution.crop_size {sr.crop_size} exceeds image_size {self.image_size}")
        return self


# Fields shared by both stages, set once at the top of the cascade's config.
SHARED_FIELDS = ("seed", "real_per_class", "subsample_seed", "label_scheme", "device", "threads")

PRESETS: dict[str, dict[str, Any]] = {
    # 128 px on 2 CPU cores: the cpu-fast pixel model at 32 px (1,100 steps, about 10 minutes), then a 4x
    # super-resolution stage trained on 64 px crops. Channels [32, 64, 128]: 1.69 steps/s at batch 16 with bf16 on 2
    # cores, against 0.54 for [64, 128, 256], so 6,000 steps are about 60 minutes.
    "cpu-cascade-128": {
        "image_size": 128,
        "base": {"preset": "cpu-fast", "max_steps": 1100},
        "super_resolution": {"factor": 4, "block_out_channels": [32, 64, 128], "layers_per_block": 1,
                             "crop_size": 64, "batch_size": 16, "max_steps": 6000},
    },
    # 256 px on one GPU: the gpu pixel model at 64 px, then a wider 4x stage on 128 px crops.
    "gpu-cascade-256": {
        "image_size": 256,
        "base": {"preset": "gpu"},
        "super_resolution": {"factor": 4, "block_out_channels": [128, 256, 512], "layers_per_block": 2,
                             "crop_size": 128, "batch_size": 32, "learning_rate": 2e-4, "warmup_steps": 500,
                             "max_steps": 50000, "ema_decay": 0.9999, "checkpoint_every": 2000,
                             "sample_every": 5000},
    },
}


def preset_and_settings(preset: str | None, config: str | Path | dict[str, Any] | None
                        ) -> tuple[str, dict[str, Any]]:
    """The cascade preset a run stacks on (``preset``, else the file's ``preset:`` key) and the config's settings."""
    extra = {} if config is None else dict(config) if isinstance(config, dict) else read_yaml(config)
    named = extra.pop("preset", None)
    if preset is not None and named is not None and named != preset:
        raise DermsynthError(f"{config} is written for preset {named!r} but --preset is {preset!r}; give one of them")
    chosen = preset or named
    if chosen not in PRESETS:
        raise DermsynthError(f"unknown cascade preset {chosen!r}; choose one of {', '.join(PRESETS)}")
    return chosen, extra


def resolve_cascade_config(preset: str | None = None, config: str | Path | dict[str, Any] | None = None,
                           **overrides: Any) -> CascadeConfig:
    """Preset, then a YAML file (or dict) on top, then non-None keyword overrides. ``max_steps`` / ``max_minutes``
    are the whole run's, split between the stages in the ratio of their own step budgets."""
    preset, extra = preset_and_settings(preset, config)
    source = f"preset {preset}" if not extra else str(config) if not isinstance(config, dict) else "config"
    data = deep_merge(PRESETS[preset], extra)
    budget = {key: overrides.pop(key, None) for key in ("max_steps", "max_minutes")}
    data = deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
    base = dict(data.get("base") or {})
    base_preset = str(base.pop("preset", data.get("base_preset", "cpu-fast")))
    pixel_presets = [name for name, settings in BASE_PRESETS.items() if not settings.get("autoencoder")]
    if base_preset not in pixel_presets:
        raise DermsynthError(f"{source}: base preset {base_preset!r} is not a pixel preset; choose one of "
                             f"{', '.join(pixel_presets)}")
    sr = dict(data.get("super_resolution") or {})
    base, sr = _split_budget(base, base_preset, sr, **budget)
    shared = {key: data[key] for key in SHARED_FIELDS if key in data}
    base_config = resolve_train_config(base_preset, {**base, **shared})
    data = {**data, "base_preset": base_preset, "base": base_config.model_dump(mode="json"), "super_resolution": sr}
    return validate_config(CascadeConfig, data, source=source)


def _split_budget(base: dict[str, Any], base_preset: str, sr: dict[str, Any], max_steps: int | None = None,
                  max_minutes: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    base_steps = int(base.get("max_steps") or BASE_PRESETS[base_preset].get("max_steps") or 1)
    sr_steps = int(sr.get("max_steps") or SuperResolutionConfig.model_fields["max_steps"].default)
    share = base_steps / (base_steps + sr_steps)
    base, sr = dict(base), dict(sr)
    if max_steps is not None:
        base["max_steps"] = max(1, min(max_steps - 1, round(max_steps * share))) if max_steps > 1 else 1
        sr["max_steps"] = max(1, max_steps - base["max_steps"])
    if max_minutes is not None:
        base["max_minutes"], sr["max_minutes"] = max_minutes * share, max_minutes * (1 - share)
    return base, sr


def build_sr_unet(config: SuperResolutionConfig, num_classes: int, image_size: int) -> UNet2DModel:
    """The super-resolution UNet: input = noisy image (3) + upsampled low-resolution image (3) + the noise level of
    the conditioning augmentation (1 constant plane); class-conditional with the null class at ``num_classes``."""
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=image_size, in_channels=7, out_channels=3,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        add_attention=False,  # attention does not carry from crops to whole images; convolutions do
        norm_num_groups=config.norm_num_groups, num_class_embeds=num_classes + 1,
    )


# --------------------------------------------------------------------------- the core's entry (diffusion.training)

CONFIG_MODEL = CascadeConfig


def resolve(preset: str, settings: str | Path | dict[str, Any] | None) -> CascadeConfig:
    return resolve_cascade_config(preset, settings)


def describe_preset(name: str, preset: dict[str, Any]) -> str:
    base = preset["base"]
    base_steps = base.get("max_steps") or BASE_PRESETS[base.get("preset", "cpu-fast")]["max_steps"]
    sr = preset["super_resolution"]
    return (f"{name} ({preset['image_size']} px, cascade: {preset['image_size'] // sr['factor']} px base, "
            f"{base_steps} + {sr['max_steps']} steps)")


def size_and_budget(cfg: CascadeConfig) -> tuple[int, str]:
    return cfg.image_size, (f"{cfg.base.max_steps} base ({cfg.base_size} px) + {cfg.super_resolution.max_steps} "
                            "super-resolution steps")
