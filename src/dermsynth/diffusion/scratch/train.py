"""The `train` stage: a class-conditional diffusion model trained from scratch on a prepared train split, on
pixels (family "scratch") or on the latents of an autoencoder trained first (family "latent", two stages).

Output (``out``), in diffusers conventions plus our own record::

    unet/                    EMA weights (UNet2DModel.save_pretrained)
    scheduler/               the training noise schedule (DDPMScheduler.save_pretrained)
    vae/                     latent family: the autoencoder (AutoencoderKL.save_pretrained, latent scaling set)
    autoencoder/             latent family: stage 1's checkpoints, log, reconstructions and record (autoencoder.py)
    dermsynth_model.json     family, classes, image size, data summary, config, steps, seconds
    config.yaml              the resolved training config (reusable with --config)
    train_log.csv            step, loss, learning rate, seconds
    samples/step-*.png       one row of images per class, same seeds in every grid
    checkpoints/step-*/      resumable state: weights, EMA, optimizer, LR schedule, RNG, data order

``dermsynth_model.json`` is written last: its presence marks a finished model.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from dermsynth.data.dataset import PreparedDataset, load_prepared, subsample_per_class
from dermsynth.data.images import load_training_square
from dermsynth.diffusion.checkpoints import (
    list_checkpoints,
)
from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.diffusion.grid import image_grid
from dermsynth.diffusion.harness import LoopSettings, StepCallback, TrainingHarness, changed_settings
from dermsynth.diffusion.schedulers import check_scheduler_name
from dermsynth.diffusion.scratch.config import (
    RESUMABLE_FIELDS,
    TrainConfig,
    build_noise_scheduler,
    build_unet,
    preset_and_settings,
    resolve_train_config,
)
from dermsynth.diffusion.scratch.objectives import augment, diffusion_loss
from dermsynth.diffusion.scratch.sampling import (
    SCHEDULER_FOLDER,
    UNET_FOLDER,
    VAE_FOLDER,
    LatentDiffusionPipeline,
    PixelDiffusionPipeline,
    use_bf16,
)
from dermsynth.diffusion.threads import thread_tuner
from dermsynth.errors import DermsynthError
from dermsynth.progress import track
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

# autoencoder.WORK_FOLDER, named here so that pixel runs need not import autoencoder.py
AUTOENCODER_FOLDER = "autoencoder"
FINISHED_REMEDY = "choose another --out, or delete that folder to train afresh"


@dataclass
class TrainResult:
    out: Path
    steps: int
    seconds: float
    skipped: bool
    info: dict[str, Any]


@dataclass
class TrainingData:
    images: torch.Tensor  # uint8 (N, 3, H, W) pixels, or float (N, C, h, w) scaled latents
    targets: torch.Tensor  # int64 (N,)
    classes: list[str]
    summary: dict[str, Any]
    image_ids: list[str]


def train(
    data: str | Path,
    out: str | Path,
    preset: str | None = None,
    config: str | Path | dict[str, Any] | TrainConfig | None = None,
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
    """Train on the train split of the prepared dataset ``data`` and write a model folder to ``out``.

    Settings: ``preset``, then ``config`` (YAML path, dict, or a full TrainConfig), then the keyword overrides.
    ``resume`` continues from the newest checkpoint; ``max_minutes`` counts the time of all runs together.
    ``callback(step, loss)`` is called after every optimisation step.
    """
    if isinstance(config, TrainConfig):
        config = config.model_dump(mode="json")
    preset = preset_and_settings(preset, config)[0]
    cfg = resolve_train_config(preset, config, max_minutes=max_minutes, max_steps=max_steps, seed=seed, device=device,
                               real_per_class=real_per_class, label_scheme=label_scheme)
    check_scheduler_name(cfg.sample_scheduler)
    dataset = load_prepared(data)
    check_prepared_size(dataset, cfg.model.image_size)
    out = Path(out)
    existing = _existing_state(out, resume)
    ensure_writable_dir(out)
    training_data = load_training_data(dataset, cfg.model.image_size, progress, per_class=cfg.real_per_class,
                                       subsample_seed=cfg.subsample_seed, label_scheme=cfg.label_scheme)
    if existing == "finished" and _finished_matches(out, cfg, training_data.summary):
        info = read_json(out / MODEL_JSON, FINISHED_REMEDY)
        return TrainResult(out=out, steps=info["steps"], seconds=info["seconds"], skipped=True, info=info)
    if existing == "finished":
        raise DermsynthError(f"{out} holds a model trained with other settings or data; "
                             "pass --resume to continue it, or choose another --out")
    autoencoder = None
    if cfg.autoencoder is not None:
        training_data, autoencoder = _latent_training_data(cfg, dataset, training_data, out, resume, progress)
    return ScratchTrainer(cfg, training_data, out, preset, progress, callback, autoencoder).run(resume)


def check_prepared_size(dataset: PreparedDataset, size: int) -> None:
    """Training on upsampled images would teach the model blur: refuse a model larger than the prepared images."""
    side = dataset.image_side()  # None: load_training_data names the empty split
    if side is not None and side < size:
        raise DermsynthError(f"{dataset.root} holds {side} px images but the model makes {size} px ones; "
                             f"prepare again with --image-size {size}, or choose a smaller preset or "
                             "model.image_size")


def _latent_training_data(cfg: TrainConfig, dataset: PreparedDataset, data: TrainingData, out: Path, resume: bool,
                          progress: bool) -> tuple[TrainingData, Any]:
    """Stage 1 of the latent family (trained, resumed or found finished), then the training images as its scaled
    latents."""
    from dermsynth.diffusion.scratch.autoencoder import cached_latents, train_autoencoder

    device = torch.device(pick_device(cfg.device))
    bf16 = use_bf16(cfg.precision, device)

    def val_images() -> torch.Tensor:
        val = load_training_data(dataset, cfg.model.image_size, progress=False, split="val")
        return val.images[:cfg.autoencoder.eval_images]

    sha = data.summary["sha256"]
    autoencoder = train_autoencoder(cfg, data.images, sha, val_images, out, device, bf16, resume, progress)
    latents = cached_latents(out, autoencoder, data.images, sha, bf16, progress)
    return dataclasses.replace(data, images=latents), autoencoder


def _existing_state(out: Path, resume: bool) -> str:
    """'empty', 'finished' (a model is there) or 'checkpoints'; refuses to silently overwrite a run."""
    has_checkpoints = bool(list_checkpoints(out))
    if (out / MODEL_JSON).is_file() and not resume:
        return "finished"
    if has_checkpoints and not resume:
        raise DermsynthError(f"{out} holds an unfinished training run; pass --resume to continue it, "
                             "or choose another --out")
    if has_checkpoints or resume:
        return "checkpoints" if has_checkpoints else "empty"
    if list_checkpoints(out / AUTOENCODER_FOLDER):
        raise DermsynthError(f"{out} holds an unfinished training run (its autoencoder stage); pass --resume to "
                             "continue it, or choose another --out")
    model_files = (UNET_FOLDER, SCHEDULER_FOLDER, VAE_FOLDER, AUTOENCODER_FOLDER)
    if out.is_dir() and any(p.name in model_files for p in out.iterdir()):
        raise DermsynthError(f"{out} already holds model files; choose another --out")
    return "empty"


# Skipping a finished model needs its budgets equal too: a longer budget is a --resume, not the same model.
FINISHED_IGNORES = frozenset(RESUMABLE_FIELDS - {"max_steps", "max_minutes", "autoencoder"})


def _finished_matches(out: Path, cfg: TrainConfig, data_summary: dict[str, Any]) -> bool:
    info = read_json(out / MODEL_JSON, FINISHED_REMEDY)
    try:
        same_config = not changed_settings(cfg, info["config"], FINISHED_IGNORES)
        return same_config and info["data"]["sha256"] == data_summary["sha256"]
    except (KeyError, TypeError, AttributeError):  # hand-edited: it cannot be shown to match
        return False


# --------------------------------------------------------------------------- data


def load_training_data(dataset: PreparedDataset, size: int, progress: bool = True, split: str = "train",
                       per_class: int | None = None, subsample_seed: int = 0,
                       label_scheme: str = "label") -> TrainingData:
    """A split (the train split, for training), decoded once and kept in memory as uint8 at ``size``; with
    ``per_class``, the same per-class sample that `validate` draws with that real_per_class and subsample_seed.
    ``label_scheme`` "diagnosis": the targets are the images' diagnoses (``classes`` then lists them), and the
    summary's ``conditioning`` says which label each belongs to and how many images each has."""
    frame = dataset.split(split)
    if frame.empty:
        raise DermsynthError(f"{dataset.root}: the {split} split is empty")
    if per_class is not None:
        frame = subsample_per_class(frame, per_class, subsample_seed, dataset.classes)
    if label_scheme == "diagnosis":
        return _by_diagnosis(load_training_data(dataset, size, progress, split, per_class, subsample_seed), frame,
                             dataset)
    paths = dataset.paths(frame)
    arrays = [load_training_square(path, size) for path in track(paths, len(paths), "load images", enabled=progress)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor(frame["target"].to_numpy(dtype=np.int64))
    classes = dataset.classes
    if int(targets.max()) >= len(classes) or int(targets.min()) < 0:
        raise DermsynthError(f"{dataset.root}: targets do not match the {len(classes)} classes in prepare.json")
    counts = frame["label"].value_counts()
    file_hashes = [sha256_file(path) for path in paths]
    summary = {
        "prepared": str(dataset.root.resolve()),
        "split": split,
        "images": len(frame),
        "real_per_class": per_class, "subsample_seed": subsample_seed if per_class is not None else None,
        "counts": {label: int(counts.get(label, 0)) for label in classes},
        "sha256": stable_hash(list(zip(frame["image_id"], frame["label"], file_hashes, strict=True))),
    }
    return TrainingData(images=images, targets=targets, classes=classes, summary=summary,
                        image_ids=frame["image_id"].astype(str).tolist())


def _by_diagnosis(data: TrainingData, frame: Any, dataset: PreparedDataset) -> TrainingData:
    """``data`` with one class per diagnosis, ordered by label, then by name."""
    diagnoses = frame.get("diagnosis")
    if diagnoses is None or diagnoses.isna().any() or (diagnoses.astype(str).str.strip() == "").any():
        raise DermsynthError(f"{dataset.root}: --label-scheme diagnosis needs a diagnosis for every training image "
                             "(prepare a dataset whose metadata names them, e.g. HAM10000 or ISIC), or use label")
    pairs = frame[["label", "diagnosis"]].astype(str).drop_duplicates()
    shared = pairs["diagnosis"][pairs["diagnosis"].duplicated()].tolist()
    if shared:
        raise DermsynthError(f"{dataset.root}: diagnosis {shared[0]!r} occurs under more than one label; it cannot "
                             "stand for one class (use --label-scheme label)")
    label_of = dict(zip(pairs["diagnosis"], pairs["label"], strict=True))
    classes = sorted(label_of, key=lambda d: (dataset.classes.index(label_of[d]), d))
    targets = torch.tensor([classes.index(d) for d in frame["diagnosis"].astype(str)], dtype=torch.int64)
    counts = frame["diagnosis"].astype(str).value_counts()
    conditioning = {"scheme": "diagnosis", "classes": classes, "label_of": label_of,
                    "counts": {d: int(counts[d]) for d in classes}, "labels": dataset.classes}
    return dataclasses.replace(data, targets=targets, classes=classes,
                               summary={**data.summary, "conditioning": conditioning})


def label_balance_weights(targets: torch.Tensor, data: TrainingData) -> torch.Tensor:
    """Draw weights per image that give every label an equal share of the batches. Under diagnosis conditioning
    the diagnoses of one label keep their training proportions within its share, the proportions generate draws
    them in: balancing the diagnoses themselves would draw 7 dermatofibromas as often as 421 nevi."""
    conditioning = data.summary.get("conditioning")
    if conditioning is None:
        groups = targets
    else:
        label_index = [conditioning["labels"].index(conditioning["label_of"][c]) for c in data.classes]
        groups = torch.tensor(label_index, device=targets.device)[targets]
    counts = torch.bincount(groups).float()
    return (1.0 / counts.clamp(min=1))[groups]


# --------------------------------------------------------------------------- the loop


class ScratchTrainer(TrainingHarness):
    """The UNet, optimiser, EMA and RNG of one run; the harness trains it to the budget and checkpoints it."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, out: Path, preset: str = "cpu-fast",
                 progress: bool = False, callback: StepCallback | None = None, autoencoder: Any = None):
        """``autoencoder`` (a finished latent.Autoencoder) makes this stage 2 of the latent family: ``data`` then
        holds its latents, and a checkpoint belongs to that autoencoder as well as to the data."""
        device = torch.device(pick_device(cfg.device))
        loop = LoopSettings(max_steps=cfg.max_steps, max_minutes=cfg.max_minutes, log_every=cfg.log_every,
                            checkpoint_every=cfg.checkpoint_every, checkpoints_total_limit=cfg.checkpoints_total_limit,
                            resumable=frozenset(RESUMABLE_FIELDS), task="diffusion" if autoencoder else "train")
        threads = thread_tuner(cfg.threads, device)
        data_sha = data.summary["sha256"]
        if autoencoder is not None:
            data_sha = stable_hash([data_sha, autoencoder.sha256])
            self.data_description = "the prepared training data or the autoencoder"
        super().__init__(out, cfg, threads, loop, data_sha, progress, callback)
        self.cfg, self.data, self.preset, self.device = cfg, data, preset, device
        self.autoencoder = autoencoder
        self.bf16 = use_bf16(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.unet = build_unet(cfg.model, len(data.classes), channels=data.images.shape[1],
                               sample_size=cfg.unet_size).to(self.device).train()
        self.ema_unet = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.noise_scheduler = build_noise_scheduler(cfg.noise)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema = EMAModel(self.unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
                            power=cfg.ema_power, foreach=True)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.images = data.images.to(self.device)
        self.targets = data.targets.to(self.device)
        self.order = torch.randperm(len(self.images), generator=self.generator, device=self.device)
        self.balance_weights = label_balance_weights(self.targets, data)
        self.cursor = 0

    def run(self, resume: bool) -> TrainResult:
        if resume:
            self.resume_newest()
        seconds, stopped_by = self.train()
        info = self._save_model(seconds, stopped_by)
        return TrainResult(out=self.out, steps=self.step, seconds=seconds, skipped=False, info=info)

    # ----- one step

    def _lr_factor(self, step: int) -> float:
        return self.lr_factor(step, self.cfg.warmup_steps, self.cfg.lr_schedule)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = min(self.cfg.batch_size, len(self.images))
        if self.cfg.class_balanced:
            index = torch.multinomial(self.balance_weights, size, replacement=True, generator=self.generator)
            return self.images[index], self.targets[index]
        if self.cursor + size > len(self.order):
            self.order = torch.randperm(len(self.images), generator=self.generator, device=self.device)
            self.cursor = 0
        index = self.order[self.cursor:self.cursor + size]
        self.cursor += size
        return self.images[index], self.targets[index]

    def train_step(self) -> float:
        images, labels = self._next_batch()
        clean = images if images.is_floating_point() else images.float() / 127.5 - 1.0  # latents are already
        clean = augment(clean, self.generator, self.cfg.flips, self.cfg.transpose)
        drop = torch.rand(labels.shape[0], generator=self.generator, device=self.device) < self.cfg.label_dropout
        labels = torch.where(drop, torch.full_like(labels, len(self.data.classes)), labels)
        loss = diffusion_loss(self.unet, self.noise_scheduler, clean, labels, self.generator, self.cfg, self.bf16)
        value = self.optimizer_step(loss, self.unet.parameters(), self.cfg.max_grad_norm)
        self.ema.step(self.unet.parameters())
        return value

    def on_step(self, seconds: float) -> None:
        if self.step % self.cfg.sample_every == 0:
            self._save_grid(f"step-{self.step:06d}.png")

    # ----- samples

    def pipeline(self) -> PixelDiffusionPipeline:
        self.ema.copy_to(self.ema_unet.parameters())
        scheduler = dict(self.noise_scheduler.config)
        if self.autoencoder is not None:
            return LatentDiffusionPipeline(self.ema_unet, scheduler, self.autoencoder.vae, bf16=self.bf16)
        return PixelDiffusionPipeline(self.ema_unet, scheduler, bf16=self.bf16)

    def _save_grid(self, name: str) -> Path:
        cfg = self.cfg
        path = self.out / "samples" / name
        save_sample_grid(self.pipeline(), self.data.classes, path, cfg.samples_per_class, cfg.seed,
                         cfg.sample_steps, cfg.sample_scheduler, cfg.guidance_scale)
        return path

    # ----- checkpoint contents

    def write_state(self, folder: Path) -> dict[str, Any]:
        names = [name for name, _ in self.unet.named_parameters()]
        save_file({k: v.contiguous() for k, v in self.unet.state_dict().items()}, folder / "unet.safetensors")
        save_file({n: p.contiguous() for n, p in zip(names, self.ema.shadow_params, strict=True)},
                  folder / "ema.safetensors")
        torch.save(self.loop_state() | {"order": self.order.cpu()}, folder / "training_state.pt")
        return {"cursor": self.cursor, "ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}}

    def read_state(self, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
        unet = load_file(folder / "unet.safetensors", device=str(self.device))
        ema_weights = load_file(folder / "ema.safetensors", device=str(self.device))
        names = [name for name, _ in self.unet.named_parameters()]
        if set(unet) != set(self.unet.state_dict()) or not set(names) <= set(ema_weights):
            raise KeyError("weights do not match the model")
        training = torch.load(folder / "training_state.pt", map_location=self.device, weights_only=True)
        return {"unet": unet, "shadow": [ema_weights[name] for name in names], "training": training,
                "counters": state.get("family") or state}  # checkpoints of 0.1.0 kept these at the top level

    def apply_state(self, saved: dict[str, Any]) -> None:
        training, counters = saved["training"], saved["counters"]
        self.unet.load_state_dict(saved["unet"])
        self.ema.load_state_dict({**counters["ema"], "shadow_params": saved["shadow"]})
        self.restore_loop_state(training)
        self.order = training["order"].to(self.device)
        self.cursor = counters["cursor"]

    # ----- the finished model

    def _save_model(self, seconds: float, stopped_by: str) -> dict[str, Any]:
        pipeline = self.pipeline()
        for folder, component in ((UNET_FOLDER, pipeline.unet), (SCHEDULER_FOLDER, self.noise_scheduler)):
            save_pretrained_atomic(component, self.out / folder)
        grid = self._save_grid("final.png")
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        conditioning = self.data.summary.get("conditioning")
        info = {
            "family": "latent" if self.autoencoder else "scratch",
            # The classes images are made for; a model conditioned on diagnoses embeds those instead (conditioning).
            "classes": conditioning["labels"] if conditioning else self.data.classes,
            "conditioning": conditioning or {"scheme": "label"},
            "null_class": len(self.data.classes),
            "image_size": self.cfg.model.image_size,
            "weights": "ema",
            "weights_sha256": sha256_file(self.out / UNET_FOLDER / "diffusion_pytorch_model.safetensors"),
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            "data": {**self.data.summary, "prepared": relative_path(self.data.summary["prepared"], self.out)},
            "preset": self.preset,
            **self.run_record(seconds, stopped_by, self.device),
            "sampling": {"scheduler": self.cfg.sample_scheduler, "steps": self.cfg.sample_steps,
                         "guidance_scale": self.cfg.guidance_scale},
            "sample_grid": str(grid.relative_to(self.out)),
            "precision": "bf16" if self.bf16 else "no",  # resolved: the config may say auto
            "versions": versions("diffusers", "torch"),
        }
        if self.autoencoder is not None:
            record = self.autoencoder.record
            info["autoencoder"] = {key: record.get(key) for key in (
                "steps", "seconds", "stopped_by", "downsample", "latent_shape", "reconstruction", "vae_sha256",
                "reconstructions_grid", "reproducible")}
            stage1 = record.get("reproducible") or {"reasons": ["its autoencoder predates the reproducibility record"]}
            reasons = info["reproducible"]["reasons"] + [f"autoencoder: {r}" for r in stage1["reasons"]]
            info["reproducible"] |= {"bitwise": not reasons, "reasons": reasons}
        write_json_atomic(self.out / MODEL_JSON, info)
        return info


# --------------------------------------------------------------------------- sample grids


def save_sample_grid(
    pipeline: PixelDiffusionPipeline,
    classes: list[str],
    path: str | Path,
    per_class: int,
    seed: int,
    steps: int,
    scheduler: str,
    guidance: float,
) -> None:
    """One row per class, the same seeds in every row (so rows differ only by class), labelled on the left."""
    labels = [target for target in range(len(classes)) for _ in range(per_class)]
    seeds = [seed + j for _ in classes for j in range(per_class)]
    images = pipeline(labels, seeds, num_inference_steps=steps, guidance_scale=guidance, scheduler=scheduler)
    grid = image_grid(images, rows=classes)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
