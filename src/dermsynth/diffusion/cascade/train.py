"""`dermsynth train` for the cascade family: the base pixel model (the scratch family's trainer, in ``base/``), then
the super-resolution stage (``super_resolution/``), both on the same real training sample.

Output (``out``)::

    base/                    a complete pixel model folder (unet/, scheduler/, its own dermsynth_model.json,
                             checkpoints, samples): `generate` can also sample it alone, at low resolution
    super_resolution/unet/   the stage's EMA weights (UNet2DModel.save_pretrained; 7 input channels)
    super_resolution/scheduler/  its training noise schedule
    super_resolution/checkpoints/, samples/, train_log.csv
    samples/final.png        the whole cascade, one row per class
    config.yaml              the resolved cascade config
    dermsynth_model.json     family "cascade": written last, so its presence marks a finished model

Every stage folder reads back with plain diffusers (``UNet2DModel.from_pretrained(out / "super_resolution/unet")``).
Resuming continues whichever stage was interrupted; a finished base is kept.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from dermsynth.data.dataset import load_prepared
from dermsynth.diffusion.cascade.config import (
    SR_RESUMABLE,
    CascadeConfig,
    build_sr_unet,
    resolve_cascade_config,
)
from dermsynth.diffusion.cascade.sampling import (
    BASE_FOLDER,
    SR_FOLDER,
    CascadePipeline,
    SuperResolutionPipeline,
    condition,
    downsample,
    upsample,
)
from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.diffusion.grid import image_grid
from dermsynth.diffusion.harness import LoopSettings, StepCallback, TrainingHarness, changed_settings
from dermsynth.diffusion.schedulers import check_scheduler_name
from dermsynth.diffusion.scratch.config import build_noise_scheduler
from dermsynth.diffusion.scratch.objectives import augment, edm_loss
from dermsynth.diffusion.scratch.sampling import SCHEDULER_FOLDER, UNET_FOLDER, PixelDiffusionPipeline, use_bf16
from dermsynth.diffusion.scratch.train import (
    TrainingData,
    TrainResult,
    check_prepared_size,
    label_balance_weights,
    load_training_data,
    save_sample_grid,
)
from dermsynth.diffusion.scratch.train import train as train_base
from dermsynth.diffusion.threads import thread_tuner
from dermsynth.errors import DermsynthError
from dermsynth.utils import (
    atomic_path,
    ensure_writable_dir,
    pick_device,
    read_json,
    relative_path,
    save_pretrained_atomic,
    sha256_file,
    stable_hash,
    write_json_atomic,
    write_text_atomic,
)
from dermsynth.version import versions

FINISHED_REMEDY = "choose another --out, or delete that folder to train afresh"
GRID_IMAGES = 6  # validation images per class in the stage's grids


def train(
    data: str | Path,
    out: str | Path,
    preset: str | None = None,
    config: str | Path | dict[str, Any] | CascadeConfig | None = None,
    *,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    real_per_class: int | None = None,
    label_scheme: str | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> TrainResult:
    """Train both stages on the train split of the prepared dataset ``data``; write the cascade to ``out``.
    ``max_steps`` / ``max_minutes`` bound the whole run (split between the stages in the ratio of their budgets);
    ``callback(step, loss)`` is called after every step of either stage."""
    if isinstance(config, CascadeConfig):
        config = config.model_dump(mode="json")
    cfg = resolve_cascade_config(preset, config, max_minutes=max_minutes, max_steps=max_steps, seed=seed,
                                 device=device, real_per_class=real_per_class, label_scheme=label_scheme)
    preset = resolve_preset_name(preset, config)
    for scheduler in (cfg.base.sample_scheduler, cfg.super_resolution.sample_scheduler):
        check_scheduler_name(scheduler)
    dataset = load_prepared(data)
    check_prepared_size(dataset, cfg.image_size)
    out = Path(out)
    high = load_training_data(dataset, cfg.image_size, progress, per_class=cfg.real_per_class,
                              subsample_seed=cfg.subsample_seed, label_scheme=cfg.label_scheme)
    if _existing_state(out, resume) == "finished":
        info = read_json(out / MODEL_JSON, FINISHED_REMEDY)
        if not _finished_matches(info, cfg, high.summary):
            raise DermsynthError(f"{out} holds a cascade trained with other settings or data; pass --resume to "
                                 "continue it, or choose another --out")
        return TrainResult(out=out, steps=info["steps"], seconds=info["seconds"], skipped=True, info=info)
    ensure_writable_dir(out)
    base = train_base(dataset.root, out / BASE_FOLDER, cfg.base_preset, cfg.base.model_dump(mode="json"),
                      resume=resume, progress=progress, callback=callback)
    trainer = SuperResolutionTrainer(cfg, high, out / SR_FOLDER, dataset, progress, callback)
    return trainer.run(resume, base.info, preset)


def resolve_preset_name(preset: str | None, config: Any) -> str:
    from dermsynth.diffusion.cascade.config import preset_and_settings

    return preset_and_settings(preset, config if isinstance(config, dict | str | Path) else None)[0]


def _existing_state(out: Path, resume: bool) -> str:
    """'finished', 'empty' or 'partial' (a stage was started); refuses to overwrite a run silently."""
    if (out / MODEL_JSON).is_file() and not resume:
        return "finished"
    started = any((out / stage).exists() for stage in (BASE_FOLDER, SR_FOLDER))
    if started and not resume:
        raise DermsynthError(f"{out} holds an unfinished cascade; pass --resume to continue it, or choose another "
                             "--out")
    return "partial" if started else "empty"


# Skipping a finished cascade needs its budgets equal too: a longer budget is a --resume, not the same model.
FINISHED_IGNORES = frozenset({"device", "threads"})


def _finished_matches(info: dict[str, Any], cfg: CascadeConfig, data_summary: dict[str, Any]) -> bool:
    try:
        ignored = FINISHED_IGNORES | {"base", "super_resolution"}
        same = not changed_settings(cfg, info["config"], ignored)
        same_sr = not changed_settings(cfg.super_resolution, info["config"]["super_resolution"],
                                       SR_RESUMABLE - {"max_steps", "max_minutes"})
        same_base = not changed_settings(cfg.base, info["config"]["base"], frozenset(
            {"checkpoint_every", "checkpoints_total_limit", "sample_every", "samples_per_class", "log_every",
             "device", "threads"}))
        return same and same_sr and same_base and info["data"]["sha256"] == data_summary["sha256"]
    except (KeyError, TypeError, AttributeError):  # hand-edited: it cannot be shown to match
        return False


# --------------------------------------------------------------------------- stage 2


def random_crops(images: torch.Tensor, size: int, step: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` crop of each uint8 image, at offsets that are multiples of ``step`` (so the crop's
    low-resolution version lies on the grid of the whole image's), as floats in [-1, 1]."""
    side = images.shape[-1]
    positions = (side - size) // step + 1
    offsets = torch.randint(0, positions, (images.shape[0], 2), generator=generator, device=images.device) * step
    crops = [image[:, y:y + size, x:x + size] for image, (y, x) in zip(images, offsets.tolist(), strict=True)]
    return torch.stack(crops).float() / 127.5 - 1.0


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each image blurred by its own Gaussian (sigma in pixels; 0 leaves it as it is), reflect-padded."""
    blurred = []
    for image, sigma in zip(images, sigmas.tolist(), strict=True):
        if sigma < 0.05:
            blurred.append(image)
            continue
        radius = max(1, int(np.ceil(3 * sigma)))
        x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        channels = image.shape[0]
        padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        blurred.append(F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)[0])
    return torch.stack(blurred)


class SuperResolutionTrainer(TrainingHarness):
    """The conditional super-resolution UNet, trained on random crops of the real training images."""

    data_description = "the prepared training data, the seed or the image size"

    def __init__(self, cfg: CascadeConfig, data: TrainingData, out: Path, dataset: Any = None,
                 progress: bool = False, callback: StepCallback | None = None):
        sr = cfg.super_resolution
        device = torch.device(pick_device(cfg.device))
        loop = LoopSettings(max_steps=sr.max_steps, max_minutes=sr.max_minutes, log_every=sr.log_every,
                            checkpoint_every=sr.checkpoint_every, checkpoints_total_limit=sr.checkpoints_total_limit,
                            resumable=SR_RESUMABLE, task="super-resolution")
        data_sha = stable_hash([data.summary["sha256"], cfg.seed, cfg.image_size])
        super().__init__(out, sr, thread_tuner(cfg.threads, device), loop, data_sha, progress, callback)
        self.cfg, self.sr, self.data, self.device, self.dataset = cfg, sr, data, device, dataset
        self.bf16 = use_bf16(cfg.base.precision, device)
        torch.manual_seed(cfg.seed)
        self.unet = build_sr_unet(sr, len(data.classes), cfg.image_size).to(device).train()
        self.ema_unet = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.noise_scheduler = build_noise_scheduler(sr.noise)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=sr.learning_rate, weight_decay=sr.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.lr_factor(step, sr.warmup_steps, sr.lr_schedule))
        self.ema = EMAModel(self.unet.parameters(), decay=sr.ema_decay, use_ema_warmup=True, power=sr.ema_power,
                            foreach=True)
        self.generator = torch.Generator(device).manual_seed(cfg.seed)
        self.images = data.images.to(device)
        self.targets = data.targets.to(device)
        self.balance_weights = label_balance_weights(self.targets, data)  # every label upscaled equally often
        self._grid_images: tuple[torch.Tensor, list[int]] | None = None

    def run(self, resume: bool, base_info: dict[str, Any], preset: str) -> TrainResult:
        if resume:
            self.resume_newest()
        seconds, stopped_by = self.train()
        info = self._save_model(seconds, stopped_by, base_info, preset)
        return TrainResult(out=self.out.parent, steps=info["steps"], seconds=info["seconds"], skipped=False,
                           info=info)

    def train_step(self) -> float:
        sr, g = self.sr, self.generator
        size = min(sr.batch_size, len(self.images))
        index = torch.multinomial(self.balance_weights, size, replacement=True, generator=g)
        high = augment(random_crops(self.images[index], sr.crop_size, sr.factor, g), g, sr.flips, sr.transpose)
        low = downsample(high, sr.factor)
        if sr.blur_max > 0:
            low = gaussian_blur(low, torch.rand(size, generator=g, device=self.device) * sr.blur_max)
        level = torch.rand(size, generator=g, device=self.device) * sr.augmentation_max
        low = low + level.view(-1, 1, 1, 1) * torch.randn(low.shape, generator=g, device=self.device)
        labels = self.targets[index]
        drop = torch.rand(size, generator=g, device=self.device) < sr.label_dropout
        labels = torch.where(drop, torch.full_like(labels, len(self.data.classes)), labels)
        loss = edm_loss(self.unet, high, labels, g, sr.noise, self.bf16,
                        condition=condition(low, level, sr.crop_size))
        value = self.optimizer_step(loss, self.unet.parameters(), sr.max_grad_norm)
        self.ema.step(self.unet.parameters())
        return value

    def on_step(self, seconds: float) -> None:
        if self.step % self.sr.sample_every == 0:
            self._save_grid(f"step-{self.step:06d}.png")

    # ----- grids: validation images downsampled, upscaled by bicubic and by the stage, beside the originals

    def pipeline(self) -> SuperResolutionPipeline:
        self.ema.copy_to(self.ema_unet.parameters())
        return SuperResolutionPipeline(self.ema_unet, dict(self.noise_scheduler.config), self.sr.factor,
                                       bf16=self.bf16)

    def _validation_images(self) -> tuple[torch.Tensor, list[int]]:
        if self._grid_images is None:
            images, labels = [], []
            source = self.data
            if self.dataset is not None and not self.dataset.split("val").empty:
                source = load_training_data(self.dataset, self.cfg.image_size, progress=False, split="val")
            for target in range(len(self.data.classes)):
                chosen = (source.targets == target).nonzero().flatten()[:GRID_IMAGES]
                images.append(source.images[chosen])
                labels += [target] * len(chosen)
            self._grid_images = (torch.cat(images).float() / 127.5 - 1.0, labels)
        return self._grid_images

    def _save_grid(self, name: str) -> Path:
        high, labels = self._validation_images()
        low = downsample(high, self.sr.factor)
        made = self.pipeline().upscale(low, labels, list(range(len(labels))), augmentation=self.sr.sample_augmentation,
                                       num_inference_steps=self.sr.sample_steps,
                                       guidance_scale=self.sr.guidance_scale, scheduler=self.sr.sample_scheduler,
                                       start_sigma=self.sr.sample_start_sigma)
        bicubic = ((upsample(low, high.shape[-1]) + 1) / 2).permute(0, 2, 3, 1).numpy()
        real = ((high + 1) / 2).permute(0, 2, 3, 1).numpy()
        rows, tiles = [], []
        for target, name_ in enumerate(self.data.classes):
            chosen = [i for i, label in enumerate(labels) if label == target]
            for what, images in (("bicubic", bicubic), ("generated", made), ("real", real)):
                rows.append(f"{name_} {what}")
                tiles += [images[i] for i in chosen] + [np.ones_like(real[0])] * (GRID_IMAGES - len(chosen))
        path = self.out / "samples" / name
        with atomic_path(path) as tmp:
            image_grid(np.stack(tiles), rows=rows, scale=1).save(tmp, format="PNG")
        return path

    # ----- checkpoint contents

    def write_state(self, folder: Path) -> dict[str, Any]:
        names = [name for name, _ in self.unet.named_parameters()]
        save_file({k: v.contiguous() for k, v in self.unet.state_dict().items()}, folder / "unet.safetensors")
        save_file({n: p.contiguous() for n, p in zip(names, self.ema.shadow_params, strict=True)},
                  folder / "ema.safetensors")
        torch.save(self.loop_state(), folder / "training_state.pt")
        return {"ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}}

    def read_state(self, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
        unet = load_file(folder / "unet.safetensors", device=str(self.device))
        ema_weights = load_file(folder / "ema.safetensors", device=str(self.device))
        names = [name for name, _ in self.unet.named_parameters()]
        if set(unet) != set(self.unet.state_dict()) or not set(names) <= set(ema_weights):
            raise KeyError("weights do not match the model")
        training = torch.load(folder / "training_state.pt", map_location=self.device, weights_only=True)
        return {"unet": unet, "shadow": [ema_weights[name] for name in names], "training": training,
                "counters": state["family"]}

    def apply_state(self, saved: dict[str, Any]) -> None:
        self.unet.load_state_dict(saved["unet"])
        self.ema.load_state_dict({**saved["counters"]["ema"], "shadow_params": saved["shadow"]})
        self.restore_loop_state(saved["training"])

    # ----- the finished cascade

    def _save_model(self, seconds: float, stopped_by: str, base_info: dict[str, Any], preset: str) -> dict[str, Any]:
        top = self.out.parent
        pipeline = self.pipeline()
        for folder, component in ((UNET_FOLDER, pipeline.unet), (SCHEDULER_FOLDER, self.noise_scheduler)):
            save_pretrained_atomic(component, self.out / folder)
        self._save_grid("final.png")
        sr, base_cfg = self.sr, self.cfg.base
        stage = {
            "factor": sr.factor,
            "weights_sha256": sha256_file(self.out / UNET_FOLDER / "diffusion_pytorch_model.safetensors"),
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            **{key: value for key, value in self.run_record(seconds, stopped_by, self.device).items()
               if key not in ("config", "created_utc")},
            "sampling": {"augmentation": sr.sample_augmentation, "steps": sr.sample_steps,
                         "scheduler": sr.sample_scheduler, "guidance_scale": sr.guidance_scale,
                         "start_sigma": sr.sample_start_sigma},
        }
        sampling = {"scheduler": base_cfg.sample_scheduler, "steps": base_cfg.sample_steps,
                    "guidance_scale": base_cfg.guidance_scale}
        cascade = CascadePipeline(PixelDiffusionPipeline.from_pretrained(top / BASE_FOLDER, str(self.device),
                                                                         self.bf16), pipeline, stage["sampling"])
        grid = top / "samples" / "final.png"
        save_sample_grid(cascade, self.data.classes, grid, base_cfg.samples_per_class, self.cfg.seed,
                         sampling["steps"], sampling["scheduler"], sampling["guidance_scale"])
        write_text_atomic(top / "config.yaml", yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        conditioning = self.data.summary.get("conditioning")
        reasons = ([f"base: {r}" for r in base_info["reproducible"]["reasons"]]
                   + [f"super-resolution: {r}" for r in stage["reproducible"]["reasons"]])
        info = {
            "family": "cascade",
            "classes": conditioning["labels"] if conditioning else self.data.classes,
            "conditioning": conditioning or {"scheme": "label"},
            "null_class": len(self.data.classes),
            "image_size": self.cfg.image_size,
            "weights": "ema",
            "weights_sha256": stable_hash([base_info["weights_sha256"], stage["weights_sha256"]]),
            "parameters": int(base_info["parameters"]) + stage["parameters"],
            "data": {**self.data.summary, "prepared": relative_path(self.data.summary["prepared"], top)},
            "preset": preset,
            "config": self.cfg.model_dump(mode="json"),
            "steps": int(base_info["steps"]) + self.step,
            "seconds": round(float(base_info["seconds"]) + seconds, 1),
            "stopped_by": stopped_by,
            "final_loss": self.smoothed_loss,
            "device": str(self.device),
            "reproducible": {"bitwise": not reasons, "reasons": reasons, "threads": self.threads.max_threads},
            "base_model": {key: base_info.get(key) for key in ("image_size", "steps", "seconds", "stopped_by",
                                                           "weights_sha256", "parameters", "sample_grid")},
            "super_resolution": stage,
            "sampling": sampling,
            "sample_grid": str(grid.relative_to(top)),
            "precision": "bf16" if self.bf16 else "no",
            "created_utc": self.run_record(seconds, stopped_by, self.device)["created_utc"],
            "versions": versions("diffusers", "torch"),
        }
        write_json_atomic(top / MODEL_JSON, info)
        return info
