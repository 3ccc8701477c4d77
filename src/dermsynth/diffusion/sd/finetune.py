"""The `finetune` stage: DreamBooth (with prior preservation), LoRA and caption fine-tuning of Stable Diffusion.

Output (``out``)::

    model_index.json, unet/, vae/, ...   full fine-tuning: the whole pipeline (family "stable-diffusion")
    pytorch_lora_weights.safetensors     LoRA: the adapter only, loaded onto the recorded base
                                         (family "stable-diffusion-lora"; plain ``pipe.load_lora_weights(out)``)
    dermsynth_model.json                 family, classes, prompts per class, base, method, config, steps, sha256
    config.yaml, train_log.csv           the resolved settings; loss per logged step
    class_images/                        generated prior-preservation images (unless class_dir was given)
    validation/step-*/                   validation images
    checkpoints/step-*/                  trained weights, optimizer, LR schedule, EMA, RNG: ``--resume latest``

``dermsynth_model.json`` is written last: its presence marks a finished model. One process on a CPU; under
``accelerate launch`` each GPU takes its own share of every batch.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from dermsynth.data.dataset import PreparedDataset, load_prepared
from dermsynth.data.images import load_training_square
from dermsynth.diffusion.checkpoints import (
    list_checkpoints,
    step_name,
)
from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.diffusion.harness import LoopSettings, StepCallback, TrainingHarness
from dermsynth.diffusion.losses import min_snr_weight
from dermsynth.diffusion.sd.config import FinetuneConfig
from dermsynth.diffusion.sd.data import (
    BatchOrder,
    Example,
    caption_examples,
    instance_examples,
    most_common_prompts,
    prompt_defaults,
    real_class_examples,
    to_pixels,
)
from dermsynth.diffusion.sd.models import base_sha256, describe_base, load_pipeline
from dermsynth.diffusion.threads import thread_tuner
from dermsynth.errors import DermsynthError
from dermsynth.utils import (
    atomic_path,
    ensure_writable_dir,
    relative_path,
    sha256_file,
    stable_hash,
    write_json_atomic,
    write_text_atomic,
)
from dermsynth.version import versions

LORA_FILE = "pytorch_lora_weights.safetensors"
# Settings that may change when resuming (budget and monitoring); everything else must match the checkpoint.
RESUMABLE = {"max_steps", "num_train_epochs", "max_minutes", "validation_prompts", "validation_steps",
             "num_validation_images", "validation_inference_steps", "checkpointing_steps",
             "checkpoints_total_limit", "log_every", "device", "threads", "sample", "class_prompts"}


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    resumed_from: int | None
    info: dict[str, Any]
    losses: list[float]  # this process's losses (each process sees its own share of the batches)
    main_process: bool = True


def finetune(
    cfg: FinetuneConfig,
    out: str | Path,
    data: str | Path | None = None,
    *,
    resume: str | None = None,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> FinetuneResult:
    """Fine-tune ``cfg.base`` on the prepared dataset ``data`` (or on ``cfg.instance_dir``) into ``out``.

    ``resume`` is "latest" (the newest checkpoint in ``out``) or a checkpoint folder. ``callback(step, loss)``
    runs after every optimisation step.
    """
    if not cfg.base:
        raise DermsynthError("no base model given (--base: a diffusers folder, a .safetensors file or a hub id)")
    describe_base(cfg.base)
    dataset = load_prepared(data) if data is not None else None
    if dataset is not None:
        check_resolution(cfg, dataset.image_side(), dataset.root)
    out = Path(out)
    checkpoint = _resume_point(out, resume)
    ensure_writable_dir(out)
    trainer = FinetuneTrainer(cfg, dataset, out, progress, callback)
    return trainer.run(checkpoint)


def check_resolution(cfg: FinetuneConfig, prepared_size: int | None, where: Path | str) -> None:
    """Fine-tuning on upsampled images teaches the model blur: refuse unless the user asks for it."""
    if prepared_size is not None and prepared_size < cfg.resolution and not cfg.allow_upsample:
        raise DermsynthError(f"{where} holds {prepared_size} px images but finetune trains at {cfg.resolution} px; "
                             f"prepare again with --image-size {cfg.resolution}, lower the resolution, or pass "
                             "--allow-upsample")


def _resume_point(out: Path, resume: str | None) -> Path | str | None:
    """None (start afresh), "latest" (the newest intact checkpoint in ``out``) or one checkpoint folder."""
    if (out / MODEL_JSON).is_file():
        raise DermsynthError(f"{out} already holds a finished model; choose another --out")
    if resume is None:
        if list_checkpoints(out):
            raise DermsynthError(f"{out} holds an unfinished run; pass --resume latest to continue it, "
                                 "or choose another --out")
        return None
    if resume == "latest":
        return resume
    folder = Path(resume)
    if not (folder / "state.json").is_file():
        raise DermsynthError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return folder


# --------------------------------------------------------------------------- the run


class FinetuneTrainer(TrainingHarness):
    """Models, data, optimiser and RNG of one run; the harness trains it to the budget and checkpoints it."""

    data_description = "the training images or prompts"

    def __init__(self, cfg: FinetuneConfig, dataset: PreparedDataset | None, out: Path, progress: bool,
                 callback: StepCallback | None):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        from dermsynth.precision import resolve_precision

        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        # auto: fp16 on a GPU (the diffusers examples' choice), fp32 elsewhere
        self.precision = resolve_precision(cfg.precision, "cpu" if cpu or not torch.cuda.is_available() else "cuda",
                                           auto="fp16-on-cuda")
        # Accelerate keeps its settings process-wide; a second run in one process (API use) may change them.
        # The process group (PartialState) is kept, so this is safe under `accelerate launch` too.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=self.precision)
        self.device = self.accelerator.device
        threads = thread_tuner(cfg.threads, self.device)
        super().__init__(out, cfg, threads, progress=progress, callback=callback)
        self.cfg, self.dataset = cfg, dataset
        self.prompts = self._resolve_prompts()
        self.examples, self.class_examples = self._collect_examples()
        self.pipe = load_pipeline(cfg.base, config=cfg.base_config, trust_pickle=cfg.trust_pickle)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # ----- data

    def _resolve_prompts(self) -> dict[str, str]:
        defaults = prompt_defaults(self.dataset)
        # An explicit prompt, even an empty one, is the user's: only a missing one takes prepare's default.
        instance = _given(self.cfg.instance_prompt, defaults.get("instance_prompt") or "")
        if self.cfg.instance_prompts:  # one prompt per subject; the first stands for them in the summary
            instance = next(iter(self.cfg.instance_prompts.values()))
        klass = _given(self.cfg.class_prompt, defaults.get("class_prompt") or "")
        if self.cfg.dreambooth_data and not instance.strip():
            raise DermsynthError("instance_prompt is empty")
        if self.cfg.dreambooth_data and self.cfg.with_prior_preservation and not klass.strip():
            raise DermsynthError("class_prompt is empty (needed for prior preservation)")
        return {"instance": instance, "class": klass}

    def _collect_examples(self) -> tuple[list[Example], list[Example]]:
        if not self.cfg.dreambooth_data:
            return caption_examples(self.cfg, self.dataset), []
        examples = instance_examples(self.cfg, self.dataset, self.prompts["instance"])
        if not self.cfg.with_prior_preservation:
            return examples, []
        return examples, real_class_examples(self.cfg, self.dataset, self.prompts["class"])

    def _class_image_dir(self) -> Path:
        return self.cfg.class_dir if self.cfg.class_dir is not None else self.out / "class_images"

    def _complete_class_images(self) -> None:
        """Generate, with the base model, the class images still missing (kept on disk: a rerun reuses them)."""
        wanted, prompt = self.cfg.num_class_images, self.prompts["class"]
        folder = self._class_image_dir()
        known = {e.path for e in self.class_examples}
        earlier = [p for p in sorted(folder.glob("class-*.png")) if p not in known] if folder.is_dir() else []
        self.class_examples = (self.class_examples + [Example(p, prompt, "class") for p in earlier])[:wanted]
        missing = wanted - len(self.class_examples)
        if missing <= 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        start = max((int(p.stem.split("-")[1]) for p in folder.glob("class-*.png")), default=-1) + 1
        indices = range(start, start + missing)
        if self.accelerator.is_main_process:
            self._generate_class_images(folder, indices)
        self.accelerator.wait_for_everyone()
        self.class_examples += [Example(folder / f"class-{i:05d}.png", prompt, "class") for i in indices]

    def _generate_class_images(self, folder: Path, indices: range, batch: int = 4) -> None:
        from diffusers import StableDiffusionPipeline
        from PIL import Image

        from dermsynth.diffusion.sd.generate import pipeline_images

        sample = self.cfg.sample
        # A pipeline of its own, so that the sampling scheduler set on it leaves the base's untouched.
        pipe = StableDiffusionPipeline(**self.pipe.components, requires_safety_checker=False).to(self.device)
        for first in range(indices.start, indices.stop, batch):
            chunk = range(first, min(first + batch, indices.stop))
            images = pipeline_images(pipe, [self.prompts["class"]] * len(chunk), [self.cfg.seed + i for i in chunk],
                                     steps=sample.steps, scheduler=sample.scheduler,
                                     guidance_scale=sample.guidance_scale, negative_prompt=sample.negative_prompt,
                                     size=self.cfg.resolution)
            for index, image in zip(chunk, images, strict=True):
                with atomic_path(folder / f"class-{index:05d}.png") as tmp:
                    Image.fromarray(_to_uint8(image)).save(tmp, format="PNG")

    def data_summary(self) -> dict[str, Any]:
        def digest(examples: list[Example]) -> str:
            return stable_hash([(str(e.path.name), e.prompt, e.label, sha256_file(e.path)) for e in examples])

        return {"prepared": relative_path(self.dataset.root, self.out) if self.dataset else None,
                "images": len(self.examples), "class_images": len(self.class_examples),
                "labels": {k: int(v) for k, v in pd.Series([e.label for e in self.examples]).value_counts().items()},
                "sha256": digest(self.examples + self.class_examples)}

    # ----- models

    def _setup_models(self) -> None:
        from diffusers import DDPMScheduler

        cfg, pipe = self.cfg, self.pipe
        self.unet, self.text_encoder, self.vae, self.tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        torch.manual_seed(cfg.seed)  # LoRA initialisation
        for module in (self.unet, self.text_encoder, self.vae):
            module.requires_grad_(False)
        self.train_text = cfg.train_text_encoder or (cfg.lora_enabled and cfg.lora.text_encoder)
        if cfg.lora_enabled:
            self._add_lora()
        else:
            self.unet.requires_grad_(True)
            self.text_encoder.requires_grad_(self.train_text)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_text:
                enable = getattr(self.text_encoder, "activation_checkpointing_enable", None)
                (enable or self.text_encoder.gradient_checkpointing_enable)()
        # Frozen parts run in the mixed-precision dtype; trained weights stay float32.
        self.unet.to(self.device)
        self.vae.to(self.device)
        self.text_encoder.to(self.device)
        if self.weight_dtype != torch.float32:
            self.vae.to(dtype=self.weight_dtype)
            if not self.train_text:
                self.text_encoder.to(dtype=self.weight_dtype)
            if cfg.lora_enabled:  # the frozen UNet too (half the memory); its LoRA layers stay float32
                self.unet.to(dtype=self.weight_dtype)
                for param in self.unet.parameters():
                    if param.requires_grad:
                        param.data = param.data.float()
        self.unet.train()
        self.text_encoder.train(self.train_text)
        self.params = [p for m in self.trained_modules() for p in m.parameters() if p.requires_grad]

    def _add_lora(self) -> None:
        from peft import LoraConfig

        lora = self.cfg.lora
        alpha = lora.alpha if lora.alpha is not None else lora.rank
        self.unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=alpha, lora_dropout=lora.dropout,
                                         init_lora_weights="gaussian", target_modules=lora.target_modules))
        if lora.text_encoder:
            _check_text_encoder_lora()
            self.text_encoder.add_adapter(LoraConfig(r=lora.rank, lora_alpha=alpha, lora_dropout=lora.dropout,
                                                     init_lora_weights="gaussian",
                                                     target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))

    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder] if self.train_text else [self.unet]

    def _setup_optimisation(self) -> None:
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           foreach=True)
        self.order = BatchOrder(len(self.examples), cfg.train_batch_size, cfg.seed,
                                self.accelerator.num_processes, self.accelerator.process_index)
        self.total_steps = self._total_steps()
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=self.total_steps)
        # With several processes the trained modules come back wrapped (DDP): forward passes must go through them.
        *modules, self.optimizer = self.accelerator.prepare(*self.trained_modules(), self.optimizer)
        self.unet = modules[0]
        if self.train_text:
            self.text_encoder = modules[1]
        self.ema = EMAModel(self.params, decay=cfg.ema_decay, foreach=True) if cfg.use_ema else None
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed + self.accelerator.process_index)
        if self.class_examples:
            self.class_order = BatchOrder(len(self.class_examples), cfg.train_batch_size, cfg.seed + 1,
                                          self.accelerator.num_processes, self.accelerator.process_index)
        self.embedding_cache: dict[str, torch.Tensor] = {}
        self.latent_cache: dict[tuple[str, tuple[bool, bool]], torch.Tensor] = {}

    def _total_steps(self) -> int:
        cfg = self.cfg
        micro_per_epoch = self.order.per_epoch  # full micro-batches over all processes
        per_epoch = max(1, micro_per_epoch // (cfg.gradient_accumulation_steps * self.accelerator.num_processes))
        total = min(_given(cfg.max_steps, math.inf), _given(cfg.num_train_epochs, math.inf) * per_epoch)
        if total == math.inf:
            raise DermsynthError("set max_steps or num_train_epochs")
        return int(total)

    # ----- one optimisation step

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings; frozen text encoders encode each distinct prompt once."""
        if self.train_text or not self.cfg.cache_text_embeddings:
            return self._encode(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.embedding_cache]
        if missing:
            with torch.no_grad(), self.threads.pinned():
                for prompt, embedding in zip(missing, self._encode(missing), strict=True):
                    self.embedding_cache[prompt] = embedding
        return torch.stack([self.embedding_cache[p] for p in prompts])

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def _micro_batch(self, micro_step: int) -> tuple[list[Example], list[tuple[bool, bool]], int]:
        """The examples of micro-batch ``micro_step`` (instance images, then class images) and their flips."""
        chosen = [self.examples[i] for i in self.order.indices(micro_step)]
        n_instance = len(chosen)
        if self.class_examples:
            chosen += [self.class_examples[i] for i in self.class_order.indices(micro_step)]
        flips = [(False, False)] * len(chosen)
        if self.cfg.random_flip:
            draws = torch.rand((len(chosen), 2), generator=self.generator, device=self.device).cpu() < 0.5
            flips = [(bool(h), bool(v)) for h, v in draws.tolist()]
        return chosen, flips, n_instance

    def _pixels(self, examples: list[Example], flips: list[tuple[bool, bool]]) -> torch.Tensor:
        images = [load_training_square(e.path, self.cfg.resolution) for e in examples]
        return to_pixels(images, torch.tensor(flips, dtype=torch.bool)).to(self.device, self.weight_dtype)

    @torch.no_grad()
    def latents(self, examples: list[Example], flips: list[tuple[bool, bool]]) -> torch.Tensor:
        """VAE latents sampled from each image's posterior. The VAE is frozen, so with ``cache_latents`` each
        (image, flip) is encoded once, alone (its posterior then does not depend on its batch companions)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if not self.cfg.cache_latents:
            parameters = self.vae.encode(self._pixels(examples, flips)).latent_dist.parameters
        else:
            keys = [(str(e.path), flip) for e, flip in zip(examples, flips, strict=True)]
            for key, example in zip(keys, examples, strict=True):
                if key not in self.latent_cache:
                    pixels = self._pixels([example], [key[1]])
                    with self.threads.pinned():
                        self.latent_cache[key] = self.vae.encode(pixels).latent_dist.parameters[0]
            parameters = torch.stack([self.latent_cache[key] for key in keys])
        posterior = DiagonalGaussianDistribution(parameters.float())
        return posterior.sample(generator=self.generator) * self.vae.config.scaling_factor

    def batch_loss(self, examples: list[Example], flips: list[tuple[bool, bool]], n_instance: int) -> torch.Tensor:
        """Denoising loss of one micro-batch: instance images, then (with prior preservation) class images."""
        cfg = self.cfg
        prompts = [e.prompt for e in examples]
        latents = self.latents(examples, flips)
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device)
        if cfg.noise_offset:
            noise += cfg.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                    generator=self.generator, device=self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=self.generator, device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction_type = self.noise_scheduler.config.prediction_type
        target = noise if prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise,
                                                                                               timesteps)
        with self.accelerator.autocast():
            embeddings = self.encode_prompts(prompts)
            prediction = self.unet(noisy, timesteps, embeddings).sample
        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma is not None:
            per_image = per_image * min_snr_weight(self.noise_scheduler, timesteps, cfg.snr_gamma, prediction_type)
        loss = per_image[:n_instance].mean()
        if n_instance < len(per_image):
            loss = loss + cfg.prior_loss_weight * per_image[n_instance:].mean()
        return loss

    def train_step(self) -> float:
        accumulation = self.cfg.gradient_accumulation_steps
        total = 0.0
        for k in range(accumulation):
            micro_step = self.step * accumulation + k
            examples, flips, n_instance = self._micro_batch(micro_step)
            sync = k == accumulation - 1
            with contextlib.ExitStack() as no_sync:
                if not sync:  # gradients of all but the last micro-batch stay local (no all-reduce)
                    for module in self.trained_modules():
                        no_sync.enter_context(self.accelerator.no_sync(module))
                loss = self.batch_loss(examples, flips, n_instance) / accumulation
                self.accelerator.backward(loss)
            total += float(loss.detach())
        if self.cfg.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        return total

    # ----- the loop

    def run(self, checkpoint: Path | str | None) -> FinetuneResult:
        cfg = self.cfg
        if cfg.dreambooth_data and cfg.with_prior_preservation:
            self._complete_class_images()
        self._setup_models()
        self._setup_optimisation()
        self.data = self.data_summary()
        self.data_sha256 = self.data["sha256"]
        self.loop = LoopSettings(
            max_steps=self.total_steps, max_minutes=cfg.max_minutes, log_every=cfg.log_every,
            checkpoint_every=cfg.checkpointing_steps, checkpoints_total_limit=cfg.checkpoints_total_limit,
            resumable=frozenset(RESUMABLE), task="finetune",
            steps_limit="max_steps" if self.total_steps == cfg.max_steps else "num_train_epochs")
        resumed_from = None
        if checkpoint is not None:
            found = self.resume_newest() if checkpoint == "latest" else self.resume_from(Path(checkpoint))
            resumed_from = self.step if found is not None else 0
        seconds, stopped_by = self.train()
        info = self.save_model(seconds, stopped_by)
        return FinetuneResult(out=self.out, steps=self.step, resumed_from=resumed_from, info=info,
                              losses=self.losses, main_process=self.accelerator.is_main_process)

    def on_step(self, seconds: float) -> None:
        if self.cfg.validation_prompts and self.step % self.cfg.validation_steps == 0:
            self.save_validation_images()

    # ----- validation images

    def inference_pipeline(self):
        """The pipeline with the current weights (EMA weights when EMA is on), for sampling."""
        from diffusers import StableDiffusionPipeline

        unet = self.accelerator.unwrap_model(self.unet)
        text_encoder = self.accelerator.unwrap_model(self.text_encoder)
        return StableDiffusionPipeline(vae=self.vae, text_encoder=text_encoder, tokenizer=self.tokenizer, unet=unet,
                                       scheduler=self.pipe.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    @torch.no_grad()
    def save_validation_images(self) -> None:
        if not self.accelerator.is_main_process:
            return
        from dermsynth.diffusion.sd.generate import pipeline_images

        cfg = self.cfg
        # autocast: with mixed precision the frozen parts hold fp16/bf16 weights, the trained ones fp32
        with self._ema_weights(), self.accelerator.autocast():
            pipe = self.inference_pipeline()
            folder = self.out / "validation" / step_name(self.step)
            folder.mkdir(parents=True, exist_ok=True)
            for p, prompt in enumerate(cfg.validation_prompts):
                seeds = [cfg.seed + i for i in range(cfg.num_validation_images)]
                images = pipeline_images(pipe, [prompt] * len(seeds), seeds, steps=cfg.validation_inference_steps,
                                         scheduler=cfg.sample.scheduler, guidance_scale=cfg.sample.guidance_scale,
                                         negative_prompt=cfg.sample.negative_prompt, size=cfg.resolution)
                for i, image in enumerate(images):
                    from PIL import Image

                    with atomic_path(folder / f"prompt{p:02d}-{i:02d}.png") as tmp:
                        Image.fromarray(_to_uint8(image)).save(tmp, format="PNG")
            write_json_atomic(folder / "prompts.json", cfg.validation_prompts)
        self.unet.train()
        self.text_encoder.train(self.train_text)

    @contextlib.contextmanager
    def _ema_weights(self):
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    # ----- checkpoints

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained weights only (LoRA layers, or whole modules), by module-prefixed name."""
        state = {}
        for prefix, module in zip(("unet.", "text_encoder."), self.trained_modules(), strict=False):
            unwrapped = self.accelerator.unwrap_model(module)
            for name, param in unwrapped.named_parameters():
                if param.requires_grad:
                    state[prefix + name] = param.detach().contiguous()
        return state

    def save_checkpoint(self, seconds: float) -> None:
        self.accelerator.wait_for_everyone()
        super().save_checkpoint(seconds)

    def write_state(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file(self.trained_state(), str(folder / "weights.safetensors"))
        if self.ema is not None:
            shadow = {f"{i}": p.contiguous() for i, p in enumerate(self.ema.shadow_params)}
            save_file(shadow, str(folder / "ema.safetensors"))
        torch.save(self.loop_state(), folder / "training_state.pt")
        return {"ema": ({k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
                        if self.ema is not None else None)}

    def read_state(self, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
        from safetensors.torch import load_file

        weights = load_file(str(folder / "weights.safetensors"), device=str(self.device))
        per_module = []
        for prefix, module in zip(("unet.", "text_encoder."), self.trained_modules(), strict=False):
            own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            if set(own) - {n for n, _ in self.accelerator.unwrap_model(module).named_parameters()}:
                raise DermsynthError(f"cannot resume {folder}: its weights do not fit this model")
            per_module.append((module, own))
        training = torch.load(folder / "training_state.pt", map_location=self.device, weights_only=True)
        shadow = None
        if self.ema is not None:
            shadow_file = load_file(str(folder / "ema.safetensors"), device=str(self.device))
            shadow = [shadow_file[f"{i}"] for i in range(len(shadow_file))]
        counters = state.get("family") or state  # checkpoints of 0.1.0 kept these at the top level
        return {"weights": per_module, "training": training, "shadow": shadow, "ema": counters.get("ema")}

    def apply_state(self, saved: dict[str, Any]) -> None:
        training = saved["training"]
        for module, own in saved["weights"]:
            self.accelerator.unwrap_model(module).load_state_dict(own, strict=False)
        self.restore_loop_state(training)
        if self.ema is not None:
            self.ema.load_state_dict({**saved["ema"], "shadow_params": saved["shadow"]})

    # ----- the finished model

    def class_prompts(self) -> dict[str, str]:
        if self.cfg.class_prompts:
            return dict(self.cfg.class_prompts)
        if self.cfg.instance_prompts:
            return dict(self.cfg.instance_prompts)
        if self.cfg.dreambooth_data:
            return {self.examples[0].label: self.prompts["instance"]}
        return most_common_prompts(self.examples)

    def save_model(self, seconds: float, stopped_by: str) -> dict[str, Any]:
        self.accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(self.params)
        prompts = self.class_prompts()
        base_kind = describe_base(self.cfg.base)
        # Local bases are recorded relative to the model folder (resolved against it when loading).
        base = self.cfg.base if base_kind == "hub" else relative_path(self.cfg.base, self.out)
        if self.cfg.lora_enabled:
            family, weights = "stable-diffusion-lora", self._save_lora()
        else:
            family, weights = "stable-diffusion", self._save_full()
        self.accelerator.wait_for_everyone()  # the main process has written the weights
        config = self.cfg.model_dump(mode="json")
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        sample = self.cfg.sample
        info = {
            "family": family, "method": self.cfg.method, "classes": list(prompts), "prompts": prompts,
            "negative_prompts": dict.fromkeys(prompts, sample.negative_prompt),
            "base": base, "base_kind": base_kind, "base_sha256": base_sha256(self.cfg.base),
            "base_config": relative_path(self.cfg.base_config, self.out) if self.cfg.base_config else None,
            "trust_pickle": self.cfg.trust_pickle,
            "lora": self.cfg.lora.model_dump() if self.cfg.lora_enabled else None,
            "image_size": self.cfg.resolution, "weights": weights, "weights_sha256": sha256_file(self.out / weights),
            "trained_parameters": sum(p.numel() for p in self.params), "data": self.data,
            "learning_rate": self.cfg.lr,  # resolved: the config leaves it null for the method's default
            "precision": self.precision,  # resolved: the config may say auto
            "dreambooth": self._dreambooth_summary(),
            **self.run_record(seconds, stopped_by, self.device),
            "sampling": {"scheduler": sample.scheduler, "steps": sample.steps, "guidance_scale": sample.guidance_scale},
            "ema": self.cfg.use_ema, "processes": self.accelerator.num_processes,
            "versions": versions("diffusers", "peft", "torch"),
        }
        if self.accelerator.is_main_process:
            write_json_atomic(self.out / MODEL_JSON, info)
        return info

    def _dreambooth_summary(self) -> dict[str, Any] | None:
        cfg = self.cfg
        if not cfg.dreambooth_data:
            return None
        prior = cfg.with_prior_preservation
        folder = self._class_image_dir().resolve()
        generated = [e for e in self.class_examples
                     if e.path.parent.resolve() == folder and e.path.name.startswith("class-")]
        return {"instance_prompt": self.prompts["instance"], "class_prompt": self.prompts["class"] if prior else None,
                "instance_label": self.examples[0].label if self.examples else None,
                "instance_prompts": dict(cfg.instance_prompts) or None,
                "prior_preservation": prior, "prior_loss_weight": cfg.prior_loss_weight if prior else None,
                "class_images": len(self.class_examples),
                "class_images_dir": relative_path(folder, self.out) if prior else None,
                "generated_class_images": len(generated)}

    def _save_lora(self) -> str:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet = self.accelerator.unwrap_model(self.unet)
        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
                  "unet_lora_adapter_metadata": _lora_metadata(unet)}
        if self.cfg.lora.text_encoder:
            text_encoder = self.accelerator.unwrap_model(self.text_encoder)
            layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(text_encoder))
            layers["text_encoder_lora_adapter_metadata"] = _lora_metadata(text_encoder)
        if self.accelerator.is_main_process:
            StableDiffusionPipeline.save_lora_weights(self.out, safe_serialization=True, **layers)
        return LORA_FILE

    def _save_full(self) -> str:
        pipe = self.inference_pipeline()
        if self.weight_dtype != torch.float32:
            pipe.to(torch.float32)
        if self.accelerator.is_main_process:
            pipe.save_pretrained(self.out, safe_serialization=True)
        return "unet/diffusion_pytorch_model.safetensors"


def _check_text_encoder_lora() -> None:
    """transformers' own peft integration (used by diffusers to load text-encoder LoRA too) may want a newer peft."""
    from transformers.integrations.peft import MIN_PEFT_VERSION
    from transformers.utils.peft_utils import check_peft_version

    try:
        check_peft_version(min_version=MIN_PEFT_VERSION)
    except ValueError:
        import peft

        raise DermsynthError(f"lora.text_encoder needs peft >= {MIN_PEFT_VERSION} with this transformers version "
                             f"(installed: {peft.__version__}); use UNet-only LoRA, or train_text_encoder") from None


def _lora_metadata(module: torch.nn.Module) -> dict[str, Any]:
    """The adapter's LoRA settings (rank, alpha, targets), stored in the weights file so that a plain
    ``load_lora_weights`` rebuilds the same scale alpha / rank."""
    config = module.peft_config["default"].to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.nan_to_num(image), 0, 1) * 255 + 0.5).astype(np.uint8)


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it was not given (None): an explicit 0 or empty string is kept."""
    return default if value is None else value
