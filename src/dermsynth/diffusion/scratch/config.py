"""The models trained from scratch: their config, presets, and how the UNet, noise schedule and autoencoder are
built.

A class-conditional ``UNet2DModel``: class embeddings are added to the timestep embedding, with one extra
"null" class (index ``n_classes``) that label dropout trains for classifier-free guidance. It works on pixels
(family "scratch") or, with an ``autoencoder`` section, on the latents of an ``AutoencoderKL`` trained first on the
same images (family "latent": 128 px and more at the cost of a 32 px pixel model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from dermsynth.config import THREADS_HELP, StrictModel, ThreadSetting, current_names, read_yaml, validate_config
from dermsynth.errors import DermsynthError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DModel

LabelScheme = Literal["label", "diagnosis"]
LABEL_SCHEME_HELP = (
    "What the class embedding stands for: label (the prepared classes) or diagnosis (one embedding per diagnosis "
    "of the metadata, e.g. HAM10000's malignant = melanoma, basal cell carcinoma, actinic keratosis, which look "
    "nothing alike). Images are still made per class: each draws a diagnosis of its class, in the training "
    "sample's proportions, and the manifest records it.")

PresetName = Literal["cpu-fast", "gpu", "cpu-latent-128", "gpu-latent-256"]


class UNetConfig(StrictModel):
    image_size: int = Field(32, ge=16, le=512, description="Side of the square images the model makes, in pixels.")
    block_out_channels: list[int] = Field(
        [32, 64, 128], min_length=2, max_length=6, description="Channels of each resolution level of the UNet."
    )
    layers_per_block: int = Field(2, ge=1, le=4, description="Residual blocks per resolution level.")
    attention_levels: list[int] = Field(
        [2], description="Resolution levels (0 = full size) with self-attention; attention is costly at full size."
    )
    attention_head_dim: int = Field(32, ge=8, description="Channels per attention head.")
    norm_num_groups: int = Field(8, ge=1, description="GroupNorm groups; must divide every channel count.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside residual blocks.")

    @model_validator(mode="after")
    def _consistent(self) -> UNetConfig:
        levels = len(self.block_out_channels)
        if any(not 0 <= level < levels for level in self.attention_levels):
            raise ValueError(f"attention_levels must lie in 0..{levels - 1}")
        # The middle block always has attention, at the last level's channels.
        if any(self.block_out_channels[level] % self.attention_head_dim
               for level in {*self.attention_levels, levels - 1}):
            raise ValueError("attention_head_dim must divide the channels of every attention level and of the last "
                             "level (the middle block attends there)")
        if any(ch % self.norm_num_groups for ch in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every entry of block_out_channels")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size must be divisible by {2 ** (levels - 1)} (one halving per extra level)")
        return self


class AutoencoderConfig(StrictModel):
    """Stage 1 of the latent family: an ``AutoencoderKL`` trained on random crops of the training images."""

    block_out_channels: list[int] = Field(
        [64, 128, 256], min_length=2, max_length=5, description="Channels of each level; every level after the "
        "first halves the size, so 3 levels make latents 4x smaller than the images, 4 levels 8x.")
    layers_per_block: int = Field(1, ge=1, le=3, description="Residual blocks per level (the decoder has one more).")
    latent_channels: int = Field(4, ge=1, le=32, description="Channels of the latent image.")
    norm_num_groups: int = Field(32, ge=1, description="GroupNorm groups; must divide every channel count.")
    mid_block_attention: bool = Field(
        False, description="Self-attention in the middle blocks (costly at 32x32 latents and more).")
    crop_size: int | None = Field(
        64, ge=16, description="Train on random square crops of this side (the autoencoder is convolutional, so it "
        "then runs at any size); null = whole images.")
    batch_size: int = Field(16, ge=1, description="Crops per optimisation step.")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate, with warmup and cosine decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warmup steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this value (None = off).")
    ssim_weight: float = Field(
        0.5, ge=0, description="Weight of the (1 - SSIM) loss beside L1; it sharpens edges and texture.")
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the KL term that keeps the latent space smooth.")
    frequency_weight: float = Field(
        0.0, ge=0, description="Weight of an L1 loss between the amplitude spectra of reconstruction and image: "
        "it asks for the fine texture's energy, which L1 and SSIM let the decoder smooth away; 0 = off.")
    discriminator_weight: float = Field(
        0.0, ge=0, description="Weight of a patch discriminator's adversarial (hinge) loss on the reconstructions, "
        "scaled against the reconstruction loss's gradient as latent diffusion's autoencoders do; 0 = off.")
    discriminator_start: int = Field(
        250, ge=0, description="Step at which the discriminator starts (L1 and SSIM alone shape the first steps).")
    max_steps: int = Field(1500, ge=1, description="Stop stage 1 after this many optimisation steps.")
    max_minutes: float | None = Field(
        None, gt=0, description="Also stop stage 1 when it has run this long (all runs); a cap that makes the run "
        "depend on the machine's speed, so it is off by default.")
    checkpoint_every: int = Field(250, ge=1, description="Save a resumable checkpoint every N steps.")
    checkpoints_total_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    log_every: int = Field(25, ge=1, description="Record the loss every N steps (autoencoder/train_log.csv).")
    eval_images: int | None = Field(
        500, ge=1, description="Val images on which reconstruction PSNR/SSIM are measured (null = all).")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @model_validator(mode="after")
    def _consistent(self) -> AutoencoderConfig:
        if any(ch % self.norm_num_groups for ch in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every entry of block_out_channels")
        if self.crop_size is not None and self.crop_size % self.downsample:
            raise ValueError(f"crop_size must be divisible by the downsampling factor {self.downsample}")
        if self.discriminator_weight > 0 and self.crop_size is not None and self.crop_size < 32:
            raise ValueError("the patch discriminator needs crop_size of at least 32")
        return self


# Stage-1 fields that may change between a run and its resumption.
AUTOENCODER_RESUMABLE = {"max_steps", "max_minutes", "checkpoint_every", "checkpoints_total_limit", "log_every",
                         "eval_images"}


class NoiseConfig(StrictModel):
    parameterization: Literal["ddpm", "edm"] = Field(
        "ddpm", description="ddpm: a discrete noise schedule (beta_schedule, prediction_type); edm: Karras et al. "
        "2022 preconditioning with log-normal noise levels (sigma_data, p_mean, p_std), sampled with diffusers' "
        "EDM schedulers.")
    sigma_data: float = Field(0.5, gt=0, description="edm: standard deviation of the data (images in [-1, 1]).")
    p_mean: float = Field(-1.2, description="edm: mean of log(sigma) during training.")
    p_std: float = Field(1.2, gt=0, description="edm: standard deviation of log(sigma) during training.")
    sigma_min: float = Field(0.002, gt=0, description="edm: smallest noise level when sampling.")
    sigma_max: float = Field(80.0, gt=0, description="edm: largest noise level when sampling.")
    num_train_timesteps: int = Field(1000, ge=10, description="Diffusion steps of the training noise schedule.")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = Field(
        "squaredcos_cap_v2", description="Noise schedule; the cosine schedule keeps colour at low resolution."
    )
    prediction_type: Literal["v_prediction", "epsilon", "sample"] = Field(
        "v_prediction", description="What the UNet predicts; v-prediction trains stably with the cosine schedule."
    )


class TrainConfig(StrictModel):
    _renamed: ClassVar[dict[str, str]] = {"grad_clip": "max_grad_norm", "min_snr_gamma": "snr_gamma",
                                          "mixed_precision": "precision"}

    model: UNetConfig = Field(default_factory=UNetConfig, description="UNet architecture.")
    autoencoder: AutoencoderConfig | None = Field(
        None, description="Train an autoencoder first and the UNet on its latents (family latent); "
        "null = the UNet works on pixels (family scratch).")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="Training noise schedule.")
    batch_size: int = Field(32, ge=1, description="Images per optimisation step.")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warmup steps.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warmup: constant, or cosine decay to zero at the end of the budget "
        "(max_steps or max_minutes, whichever ends first)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this value (None = off).")
    label_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Probability of replacing the class by the null class (trains CFG)."
    )
    snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR-gamma loss weighting (e.g. 5.0); None weights all timesteps equally."
    )
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="Highest EMA decay, reached after the warmup.")
    ema_power: float = Field(0.75, gt=0, description="EMA warmup power: decay = 1 - (1 + step) ** -power.")
    class_balanced: bool = Field(
        False, description="Draw every label equally often in each batch (with replacement), so a minority class "
        "is trained as much as the majority; diagnoses keep their mix within their label; off = plain shuffled "
        "epochs.")
    flips: bool = Field(True, description="Random horizontal/vertical flips (dermoscopy has no canonical orientation).")
    transpose: bool = Field(True, description="Random transposition; with flips this covers all 8 square symmetries.")
    precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="bf16 autocast or no (fp32); auto = bf16 where the device supports it natively (~1.5x "
        "faster on CPUs with AVX-512). fp16 is not offered: it would need loss scaling.",
    )
    max_steps: int = Field(1500, ge=1, description="Stop after this many optimisation steps.")
    max_minutes: float | None = Field(None, gt=0, description="Stop when training has run this long (all runs).")
    checkpoint_every: int = Field(200, ge=1, description="Save a resumable checkpoint every N steps.")
    checkpoints_total_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    sample_every: int = Field(250, ge=1, description="Save a sample grid (EMA weights) every N steps.")
    samples_per_class: int = Field(8, ge=1, le=64, description="Images per class in each sample grid.")
    sample_scheduler: str = Field("dpm++", description="Sampler for grids and the default of `generate`.")
    sample_steps: int = Field(20, ge=1, le=1000, description="Sampling steps for grids and the `generate` default.")
    guidance_scale: float = Field(
        3.0, ge=0.0, description="Classifier-free guidance for grids and the `generate` default (3 measured the "
        "lowest FD-cls of 1-3 on both the embedded sample and HAM10000; bench/RESULTS.md).",
    )
    log_every: int = Field(25, ge=1, description="Record the loss every N steps (train_log.csv).")
    seed: int = Field(0, description="Seed of initialisation, batches, noise and augmentation.")
    real_per_class: int | None = Field(
        None, ge=1, description="Train on this many training images per class only: the same sample that "
        "`validate` takes with the same real_per_class and subsample_seed, so that generator and classifier see "
        "the same real images (null = the whole train split).")
    subsample_seed: int = Field(0, description="Seed of the real_per_class sample (as validate's subsample_seed).")
    label_scheme: LabelScheme = Field("label", description=LABEL_SCHEME_HELP)
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), or a torch device name.")
    threads: ThreadSetting = Field(None, description=THREADS_HELP)

    @property
    def unet_size(self) -> int:
        """The side of what the UNet sees: the image, or its latent."""
        ae = self.autoencoder
        return self.model.image_size // ae.downsample if ae else self.model.image_size

    @model_validator(mode="after")
    def _fits_the_latents(self) -> TrainConfig:
        ae = self.autoencoder
        if ae is None:
            return self
        levels = len(self.model.block_out_channels)
        factor = ae.downsample * 2 ** (levels - 1)
        if self.model.image_size % factor:
            raise ValueError(f"image_size {self.model.image_size} must be divisible by {factor} (the autoencoder's "
                             f"factor {ae.downsample} times one halving per extra UNet level)")
        if ae.crop_size is not None and ae.crop_size > self.model.image_size:
            raise ValueError(f"autoencoder.crop_size {ae.crop_size} exceeds image_size {self.model.image_size}")
        return self

    @model_validator(mode="after")
    def _fits_the_parameterization(self) -> TrainConfig:
        if self.noise.parameterization != "edm":
            return self
        from dermsynth.diffusion.schedulers import EDM_SCHEDULERS

        if self.snr_gamma is not None:
            raise ValueError("snr_gamma weights a discrete schedule; EDM has its own loss weighting (set null)")
        if self.sample_scheduler not in EDM_SCHEDULERS:
            raise ValueError(f"sample_scheduler {self.sample_scheduler!r} does not sample EDM models; choose one of "
                             f"{', '.join(EDM_SCHEDULERS)}")
        return self


# Fields that may change between a run and its resumption: budgets and reporting, not what is learned. (Stage 1 of
# the latent family checks its own section, so stage 2 may resume whatever stage 1's budget was.)
RESUMABLE_FIELDS = {
    "max_steps", "max_minutes", "checkpoint_every", "checkpoints_total_limit", "sample_every", "samples_per_class",
    "sample_scheduler", "sample_steps", "guidance_scale", "log_every", "device", "threads", "autoencoder",
}

PRESETS: dict[str, dict[str, Any]] = {
    # Chosen by A/B tests at equal wall-clock budget on the embedded sample (bench/RESULTS.md, "training recipes"):
    # a wider, shallower UNet (22 % of the bf16 matmul peak vs 10 %), EDM preconditioning, class-balanced batches.
    # ~1.9 steps/s at batch 32 on 2 CPU cores with bf16: the 560-step budget is ~5 minutes (564 steps were measured
    # in 5 minutes). Budgets are steps, never minutes, so that the same command gives the same model.
    "cpu-fast": {
        "model": {"image_size": 32, "block_out_channels": [64, 128, 256], "layers_per_block": 1,
                  "attention_levels": [2], "attention_head_dim": 64},
        "noise": {"parameterization": "edm"}, "class_balanced": True,
        # lr 2e-3 annealed to zero over the budget: FID ratio 1.70 vs 2.53 at a constant 5e-4 (bench/RESULTS.md)
        "batch_size": 32, "learning_rate": 2e-3, "lr_schedule": "cosine", "max_steps": 560, "max_minutes": None,
        "checkpoint_every": 200, "sample_every": 250,
        "sample_steps": 15,  # EDM + DPM-Solver++: 15 steps measured as good as 20 (FID ratio 2.10 vs 2.15)
    },
    # A GPU trains a wider, deeper model at 64 px for longer.
    "gpu": {
        "model": {"image_size": 64, "block_out_channels": [64, 128, 256, 256], "layers_per_block": 2,
                  "attention_levels": [2, 3], "attention_head_dim": 64, "norm_num_groups": 32, "dropout": 0.1},
        "batch_size": 64, "learning_rate": 2e-4, "warmup_steps": 500, "max_steps": 30000, "max_minutes": None,
        "snr_gamma": 5.0, "ema_decay": 0.9999, "checkpoint_every": 2000, "sample_every": 2000,
    },
    # 128 px images from a 32x32x4 latent: stage 2 costs what the 32 px cpu-fast model costs (bench/RESULTS.md,
    # "latent family"). Latents are scaled to unit variance, as Stable Diffusion's are, hence sigma_data 1 and
    # p_mean log(2) higher: the same noise levels relative to the data as the pixel recipe's (sigma_data 0.5).
    "cpu-latent-128": {
        "model": {"image_size": 128, "block_out_channels": [64, 128, 256], "layers_per_block": 1,
                  "attention_levels": [2], "attention_head_dim": 64},
        # 1,500 + 6,600 steps: the 20 + 60 minutes measured on 2 quiet cores (1,517 and 6,591 steps), as steps.
        "autoencoder": {"block_out_channels": [64, 128, 256], "max_minutes": None, "max_steps": 1500},
        "noise": {"parameterization": "edm", "sigma_data": 1.0, "p_mean": -0.5}, "class_balanced": True,
        "batch_size": 32, "learning_rate": 2e-3, "lr_schedule": "cosine", "max_steps": 6600, "max_minutes": None,
        "checkpoint_every": 250, "sample_every": 1000, "sample_steps": 15,
    },
    # 256 px from a 32x32 latent (8x autoencoder), sized for one GPU.
    "gpu-latent-256": {
        "model": {"image_size": 256, "block_out_channels": [128, 256, 512], "layers_per_block": 2,
                  "attention_levels": [1, 2], "attention_head_dim": 64, "norm_num_groups": 32, "dropout": 0.1},
        "autoencoder": {"block_out_channels": [64, 128, 256, 256], "latent_channels": 8, "layers_per_block": 2,
                        "crop_size": 128, "batch_size": 32, "max_steps": 40000, "max_minutes": None,
                        "learning_rate": 5e-4, "checkpoint_every": 2000},
        "noise": {"parameterization": "edm", "sigma_data": 1.0, "p_mean": -0.5}, "class_balanced": True,
        "batch_size": 64, "learning_rate": 3e-4, "lr_schedule": "cosine", "warmup_steps": 500, "max_steps": 60000,
        "max_minutes": None, "ema_decay": 0.9999, "checkpoint_every": 2000, "sample_every": 5000,
    },
}


DEFAULT_PRESET = "cpu-fast"


def preset_and_settings(preset: str | None, config: str | Path | dict[str, Any] | None
                        ) -> tuple[str, dict[str, Any] | None]:
    """The preset a run stacks on and the config's own settings: ``preset`` when given, else the file's ``preset:``
    key, else cpu-fast. A file made for one preset and a --preset naming another is an error, not a silent mix."""
    extra = None if config is None else dict(config) if isinstance(config, dict) else read_yaml(config)
    named = extra.pop("preset", None) if extra is not None else None
    if preset is not None and named is not None and named != preset:
        raise DermsynthError(f"{config} is written for preset {named!r} but --preset is {preset!r}; give one of them")
    chosen = preset or named or DEFAULT_PRESET
    if chosen not in PRESETS:
        raise DermsynthError(f"unknown preset {chosen!r}; choose one of {', '.join(PRESETS)}")
    return chosen, extra


def resolve_train_config(
    preset: str | None = None, config: str | Path | dict[str, Any] | None = None, **overrides: Any
) -> TrainConfig:
    """Preset (``preset``, the file's ``preset:`` key, or cpu-fast), then a YAML file (or dict) on top, then non-None
    keyword overrides on top of that."""
    preset, extra = preset_and_settings(preset, config)
    data = deep_merge({}, PRESETS[preset])
    source = f"preset {preset}"
    if extra is not None:
        data = deep_merge(data, current_names(TrainConfig, extra))  # old names must not sit beside the preset's
        source = str(config) if not isinstance(config, dict) else "config"
    budget = {key: overrides.pop(key, None) for key in ("max_steps", "max_minutes")}
    data = deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
    data = whole_run_budget(data, **budget)
    return validate_config(TrainConfig, data, source=source)


def whole_run_budget(data: dict[str, Any], max_steps: int | None = None, max_minutes: float | None = None
                     ) -> dict[str, Any]:
    """``max_steps`` / ``max_minutes`` for the whole run. A one-stage model takes them as they are; a two-stage one
    (the latent family: autoencoder, then diffusion) splits each between its stages in the ratio of the stages'
    own step budgets (cpu-latent-128: 1,500 + 6,600 steps, so the autoencoder gets 18.5 %), at least one step
    each. Budgets set per stage in a config file are taken as they are."""
    data = dict(data)
    if "autoencoder" not in data or data["autoencoder"] is None:
        data.update({k: v for k, v in (("max_steps", max_steps), ("max_minutes", max_minutes)) if v is not None})
        return data
    ae = dict(data["autoencoder"])
    ae_steps = int(ae.get("max_steps", AutoencoderConfig.model_fields["max_steps"].default))
    share = ae_steps / (ae_steps + int(data.get("max_steps", TrainConfig.model_fields["max_steps"].default)))
    if max_steps is not None:
        ae["max_steps"] = max(1, min(max_steps - 1, round(max_steps * share))) if max_steps > 1 else 1
        data["max_steps"] = max(1, max_steps - ae["max_steps"])
    if max_minutes is not None:
        ae["max_minutes"], data["max_minutes"] = max_minutes * share, max_minutes * (1 - share)
    data["autoencoder"] = ae
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_unet(config: UNetConfig, num_classes: int, channels: int = 3, sample_size: int | None = None) -> UNet2DModel:
    """A class-conditional UNet with ``num_classes`` real classes plus the null class at index ``num_classes``, on
    ``channels``-channel inputs of side ``sample_size`` (default: images of ``config.image_size``)."""
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    attention = set(config.attention_levels)
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels)))
    return UNet2DModel(
        sample_size=sample_size or config.image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
        num_class_embeds=num_classes + 1,
    )


def build_autoencoder(config: AutoencoderConfig, image_size: int) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` (the Stable Diffusion VAE design) at this config's size, random weights."""
    from diffusers import AutoencoderKL

    levels = len(config.block_out_channels)
    return AutoencoderKL(
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups, sample_size=image_size,
        mid_block_add_attention=config.mid_block_attention,
    )


def build_noise_scheduler(config: NoiseConfig) -> Any:
    """The training noise schedule, saved as the model's ``scheduler/`` (diffusers reads it back)."""
    from diffusers import DDPMScheduler, EDMDPMSolverMultistepScheduler

    if config.parameterization == "edm":
        return EDMDPMSolverMultistepScheduler(
            sigma_min=config.sigma_min, sigma_max=config.sigma_max, sigma_data=config.sigma_data,
            num_train_timesteps=config.num_train_timesteps, prediction_type="epsilon",
        )
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
    )


# --------------------------------------------------------------------------- the core's entry (diffusion.training)

CONFIG_MODEL = TrainConfig


def resolve(preset: str, settings: str | Path | dict[str, Any] | None) -> TrainConfig:
    return resolve_train_config(preset, settings)


def describe_preset(name: str, preset: dict[str, Any]) -> str:
    ae = preset.get("autoencoder")
    steps = f"latent, {ae['max_steps']} + {preset['max_steps']} steps" if ae else f"{preset['max_steps']} steps"
    return f"{name} ({preset['model']['image_size']} px, {steps})"


def size_and_budget(cfg: TrainConfig) -> tuple[int, str]:
    budget = (f"{cfg.autoencoder.max_steps} autoencoder + {cfg.max_steps} diffusion steps" if cfg.autoencoder
              else f"{cfg.max_steps} steps")
    return cfg.model.image_size, budget
