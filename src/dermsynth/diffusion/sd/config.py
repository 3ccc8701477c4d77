"""Settings of `dermsynth finetune` (DreamBooth, LoRA and caption fine-tuning of Stable Diffusion)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dermsynth.config import THREADS_HELP, Precision, StrictModel, ThreadSetting

Method = Literal["dreambooth", "lora", "captions"]
DEFAULT_LR = {"dreambooth": 5e-6, "lora": 1e-4, "captions": 1e-5}
DEFAULT_LORA_LR = 1e-4


PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}  # checkpoints that load through pickle (trust_pickle)


class LoraSettings(StrictModel):
    rank: int = Field(8, ge=1, le=256, description="LoRA rank r (4-16 is typical for Stable Diffusion).")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; the update is scaled by alpha / rank "
                                                        "[default: rank, i.e. scale 1].")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(["to_q", "to_k", "to_v", "to_out.0"],
                                      description="UNet attention projections that get LoRA layers.")
    text_encoder: bool = Field(False, description="Also put LoRA layers on the text encoder's attention.")


class SampleSettings(StrictModel):
    scheduler: str = Field("dpm++", description="Default sampling scheduler recorded for `generate` "
                                                 "(ddim, ddpm, dpm++, dpm++-sde, unipc, euler, euler-a).")
    steps: int = Field(25, ge=1, le=1000, description="Default sampling steps for `generate` and class images.")
    guidance_scale: float = Field(7.5, ge=0.0, description="Default classifier-free guidance for `generate`.")
    negative_prompt: str = Field("", description="Negative prompt used with every class prompt.")


class FinetuneConfig(StrictModel):
    """Every setting of one fine-tuning run; a YAML file holds any subset of these keys."""

    _renamed: ClassVar[dict[str, str]] = {"max_train_steps": "max_steps", "mixed_precision": "precision"}

    method: Method = Field("dreambooth", description="dreambooth, lora (DreamBooth data, LoRA weights) or captions "
                                                     "(each image with its own metadata prompt).")
    base: str | None = Field(None, description="Base model: a diffusers folder, a .safetensors file or a hub id.")
    base_config: str | None = Field(None, description="For a single-file base: a local diffusers folder with the "
                                                      "configs of the same architecture (needed offline).")
    trust_pickle: bool = Field(False, description="Allow .ckpt/.pt pickle checkpoints (they can run code on load).")
    resolution: int = Field(512, ge=8, le=2048, description="Training image side in pixels (a multiple of 8).")
    allow_upsample: bool = Field(False, description="Train at a resolution above the prepared images' size "
                                                    "(they are upsampled, and the model learns their blur).")
    random_flip: bool = Field(True, description="Random horizontal and vertical flips (lesions have no up or down).")
    # DreamBooth data
    instance_prompt: str | None = Field(None, description="DreamBooth instance prompt [default: prepare's "
                                                          "prompt.instance_prompt].")
    instance_dir: Path | None = Field(None, description="Folder of instance images; else chosen from the prepared "
                                                        "train split by instance_labels / instance_diagnoses.")
    instance_labels: list[str] | None = Field(None, description="Prepared labels used as instance images "
                                                                "[default: the smallest class].")
    instance_diagnoses: list[str] | None = Field(None, description="Prepared diagnoses used as instance images.")
    instance_prompts: dict[str, str] = Field(
        {}, description="DreamBooth with one subject per class: label -> its own instance prompt (a rare token each, "
        "e.g. sks for benign, zwx for malignant). Each label's training images are its instances (at most "
        "max_instance_images per label), and `generate` makes every one of these classes. Instead of "
        "instance_prompt / instance_labels.")
    max_instance_images: int | None = Field(None, ge=1, description="Use at most this many instance images "
                                                                    "(DreamBooth works with ~5-30).")
    with_prior_preservation: bool = Field(True, description="Add a prior-preservation loss on class images.")
    prior_loss_weight: float = Field(1.0, ge=0.0, description="Weight of the prior-preservation loss.")
    class_prompt: str | None = Field(None, description="Class prompt [default: prepare's prompt.class_prompt].")
    class_dir: Path | None = Field(None, description="Folder of class images; missing ones are generated into it "
                                                     "[default: OUT/class_images].")
    class_labels: list[str] | None = Field(None, description="Prepared labels used as (real) class images.")
    class_diagnoses: list[str] | None = Field(None, description="Prepared diagnoses used as (real) class images.")
    num_class_images: int = Field(200, ge=1, description="Class images wanted; the base model generates the rest.")
    # caption fine-tuning
    caption_labels: list[str] | None = Field(None, description="Captions method: train on these labels only "
                                                               "[default: all classes].")
    class_prompts: dict[str, str] = Field({}, description="Prompt per class recorded for `generate` [default: the "
                                                          "instance prompt, or each class's most common caption].")
    # what is trained
    train_text_encoder: bool = Field(False, description="Also train the text encoder (full weights; with LoRA see "
                                                        "lora.text_encoder).")
    use_lora: bool | None = Field(None, description="Train LoRA layers instead of full weights [default: true for "
                                                    "method lora, else false].")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    # optimisation
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate [default: 5e-6 dreambooth, "
                                                                "1e-4 lora or any LoRA run, 1e-5 captions].")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = Field("constant", description="Learning-rate schedule (diffusers).")
    lr_warmup_steps: int = Field(0, ge=0, description="Warm-up steps of the schedule.")
    weight_decay: float = Field(1e-2, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: off).")
    train_batch_size: int = Field(1, ge=1, description="Images per device per micro-batch (plus as many class "
                                                       "images with prior preservation).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimisation step.")
    max_steps: int | None = Field(800, ge=1, description="Optimisation steps.")
    num_train_epochs: int | None = Field(None, ge=1, description="Epochs over the training images; with "
                                                                 "max_steps, whichever ends first.")
    max_minutes: float | None = Field(None, gt=0, description="Stop after this much training time (all runs).")
    precision: Precision = Field("no", description="Mixed precision of the frozen parts and the forward pass: no "
                                                  "(fp32), bf16, fp16 (needs a GPU); auto = fp16 on a GPU, else no.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the UNet (and text "
                                                            "encoder when trained).")
    use_ema: bool = Field(False, description="Keep an exponential moving average of the trained weights and save it.")
    ema_decay: float = Field(0.9999, gt=0.0, lt=1.0, description="EMA decay.")
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (5 is the paper's).")
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, description="Noise offset (helps very dark/bright images).")
    cache_text_embeddings: bool = Field(True, description="Encode each distinct prompt once when the text "
                                                          "encoder is frozen.")
    cache_latents: bool = Field(True, description="Encode each image (and flip) with the frozen VAE once and keep "
                                                  "its latent distribution in memory (8 * (resolution / 8)^2 "
                                                  "floats per image and flip); off for very large datasets.")
    # monitoring and checkpoints
    validation_prompts: list[str] = Field([], description="Prompts sampled every validation_steps (images saved).")
    validation_steps: int = Field(100, ge=1, description="Steps between validation images.")
    num_validation_images: int = Field(2, ge=1, description="Images per validation prompt.")
    validation_inference_steps: int = Field(20, ge=1, description="Sampling steps of validation images.")
    checkpointing_steps: int = Field(500, ge=1, description="Steps between resumable checkpoints.")
    checkpoints_total_limit: int | None = Field(2, ge=1, description="Keep at most this many checkpoints.")
    log_every: int = Field(10, ge=1, description="Steps between rows of train_log.csv.")
    seed: int = Field(0, description="Seed of data order, noise and LoRA initialisation.")
    device: str = Field("auto", description="auto, cpu, cuda, mps (under `accelerate launch`, accelerate decides).")
    threads: ThreadSetting = Field(None, description=THREADS_HELP)
    sample: SampleSettings = Field(default_factory=SampleSettings)

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value

    @model_validator(mode="after")
    def _prompts_not_blank(self) -> FinetuneConfig:
        for name in ("instance_prompt", "class_prompt"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty")
        blank = [label for label, prompt in self.instance_prompts.items() if not prompt.strip()]
        if blank:
            raise ValueError(f"instance_prompts: the prompt of {blank[0]!r} is empty")
        if self.instance_prompts and any(getattr(self, k) is not None for k in (
                "instance_prompt", "instance_labels", "instance_diagnoses", "instance_dir")):
            raise ValueError("instance_prompts names each class's subject: leave instance_prompt, instance_labels, "
                             "instance_diagnoses and instance_dir out")
        if self.instance_prompts and len(set(self.instance_prompts.values())) < len(self.instance_prompts):
            raise ValueError("instance_prompts: each class needs a prompt of its own (its own rare token)")
        if self.dreambooth_data and len(self.instance_labels or []) > 1 and self.instance_dir is None:
            raise ValueError("instance_labels: several labels under one instance prompt make one subject, and the "
                             "model could not make each class; give each its prompt with instance_prompts")
        return self

    def classes_made(self, train_counts: dict[str, int]) -> list[str]:
        """The classes the fine-tuned model will generate, from the prepared train split's class counts: what
        `generate` can make and a validation regime can take (FinetuneTrainer.class_prompts at the end)."""
        if self.class_prompts:
            return list(self.class_prompts)
        if self.method == "captions":
            return [c for c in train_counts if train_counts[c] and (not self.caption_labels or c in
                                                                      self.caption_labels)]
        if self.instance_prompts:
            return list(self.instance_prompts)
        if self.instance_labels:
            return self.instance_labels[:1]
        if self.instance_dir is not None:
            return ["instance"]
        present = {c: n for c, n in train_counts.items() if n}
        return [min(present, key=lambda c: present[c])] if present and not self.instance_diagnoses else []

    @property
    def lora_enabled(self) -> bool:
        return self.method == "lora" if self.use_lora is None else self.use_lora

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LORA_LR if self.lora_enabled else DEFAULT_LR[self.method]

    @property
    def dreambooth_data(self) -> bool:
        return self.method in ("dreambooth", "lora")
