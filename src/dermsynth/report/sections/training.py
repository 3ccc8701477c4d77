"""The report's training section: the from-scratch or fine-tuned model, its curves and samples."""

from __future__ import annotations

from typing import Any

import numpy as np

from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.report import figures
from dermsynth.report.folder import MODEL, RunFolder, Section, _short, _step_of, _tiles, _yaml, figure
from dermsynth.report.format import finite, fmt, table
from dermsynth.report.records import ModelRecord, na

METHODS = {"dreambooth": "DreamBooth", "lora": "DreamBooth with LoRA", "captions": "caption fine-tuning"}


def training_section(run: RunFolder) -> Section | None:
    info = ModelRecord.read(run.json(MODEL, MODEL_JSON), run.path(MODEL, MODEL_JSON))
    # A cascade logs per stage: its super-resolution stage is the one trained longest.
    log = run.csv(MODEL, "train_log.csv")
    if log is None:
        log = run.csv(MODEL, "super_resolution", "train_log.csv")
    if info is None and log is None:
        return None
    section = {"unfinished": info is None,
               "curve": figure(figures.training_curve(log) if log is not None and len(log) else None,
                               "Training loss per step.", "training loss curve"),
               "prompts": None, "class_images": None, "note": None}
    info = info or ModelRecord()
    section.update(finetune_details(run, info) if is_finetuned(run, info) else scratch_details(run, info))
    return section


def is_finetuned(run: RunFolder, info: ModelRecord | dict[str, Any] | None) -> bool:
    """A Stable Diffusion fine-tune (finished: by its model JSON; running: by its config in the run's YAML)."""
    if isinstance(info, dict):
        info = ModelRecord.read(info, run.path(MODEL, MODEL_JSON)) if info else None
    if info is not None and info.family:
        return info.is_finetune
    return bool((_yaml(run.text("config.resolved.yaml")) or {}).get("finetune"))


def _run_facts(info: ModelRecord) -> list[tuple[str, Any]]:
    return [("steps", na(info.steps)), ("stopped by", na(info.stopped_by)),
            ("training time", f"{info.seconds:.0f} s" if finite(info.seconds) else "n/a"),
            ("final loss", fmt(info.final_loss, 4)), ("device", na(info.device))]


def scratch_details(run: RunFolder, info: ModelRecord) -> Section:
    facts = [("family", info.family or "n/a"), ("preset", na(info.preset)), ("classes", ", ".join(info.classes)),
             ("image size", na(info.image_size)),
             ("parameters", "n/a" if info.parameters is None else f"{info.parameters:,}"),
             ("training images", info.data.get("images", "n/a")), *_run_facts(info)]
    grids = sorted(run.path(MODEL, "samples").glob("step-*.png"))
    final = run.path(MODEL, "samples", "final.png")
    samples = []
    if grids:
        samples.append(figure(figures.embed_png_file(grids[0]), f"Samples after {_step_of(grids[0])} steps "
                              "(early training; the reference study's Figure 1 shows the same stage).",
                              "early training samples"))
    if final.is_file():
        samples.append(figure(figures.embed_png_file(final), f"Samples of the finished model "
                              f"({info.steps or '?'} steps; one row per class, same seeds as above).",
                              "final training samples"))
    autoencoder = info.autoencoder
    if autoencoder:
        facts += _autoencoder_facts(autoencoder)
        grid = run.path(MODEL, autoencoder.get("reconstructions_grid", "autoencoder/reconstructions.png"))
        samples.insert(0, figure(figures.embed_png_file(grid) if grid.is_file() else None,
                                 "Stage 1: real val images (top) and the autoencoder's reconstructions (bottom).",
                                 "autoencoder reconstructions"))
    title = "Latent diffusion model trained from scratch" if autoencoder else "Diffusion model trained from scratch"
    if info.super_resolution:
        facts += _cascade_facts(info)
        stage_grid = run.path(MODEL, "super_resolution", "samples", "final.png")
        samples.insert(0, figure(figures.embed_png_file(stage_grid) if stage_grid.is_file() else None,
                                 "Stage 2 on real val images: each downsampled to the base's size and upscaled by "
                                 "bicubic interpolation and by the super-resolution stage, beside the original.",
                                 "super-resolution stage on real images"))
        title = "Cascaded diffusion model trained from scratch (base, then super-resolution)"
    return {"title": title, "facts": table(["", ""], facts), "samples": [s for s in samples if s]}


def _cascade_facts(info: ModelRecord) -> list[tuple[str, Any]]:
    base, stage = info.base_model or {}, info.super_resolution or {}
    sampling = stage.get("sampling") or {}
    return [
        ("base", f"{na(base.get('image_size'))} px pixel model, {na(base.get('steps'))} steps, "
                 f"{fmt(base.get('seconds'), 0)} s"),
        ("super-resolution", f"{na(stage.get('factor'))}x, {na(stage.get('steps'))} steps, "
                             f"{fmt(stage.get('seconds'), 0)} s; sampled with noise level "
                             f"{na(sampling.get('augmentation'))} on the base's images, {na(sampling.get('steps'))} "
                             "steps"),
    ]


def _autoencoder_facts(autoencoder: dict[str, Any]) -> list[tuple[str, Any]]:
    scores = autoencoder.get("reconstruction") or {}
    shape = "x".join(str(n) for n in autoencoder.get("latent_shape", []))
    return [
        ("autoencoder", f"{autoencoder.get('downsample', '?')}x smaller latents ({shape}), "
                        f"{autoencoder.get('steps', '?')} steps, {fmt(autoencoder.get('seconds'), 0)} s"),
        ("reconstruction (val)", f"PSNR {fmt(scores.get('psnr'), 2)} dB, SSIM {fmt(scores.get('ssim'), 3)} on "
                                 f"{scores.get('images', '?')} images; bicubic down-and-up by the same factor: PSNR "
                                 f"{fmt(scores.get('bicubic_psnr'), 2)} dB, SSIM {fmt(scores.get('bicubic_ssim'), 3)}"),
    ]


def finetune_details(run: RunFolder, info: ModelRecord, columns: int = 8) -> Section:
    """Stable Diffusion fine-tuning: base model, method, prompts, prior-preservation images, validation images."""
    config = info.config or (_yaml(run.text("config.resolved.yaml")) or {}).get("finetune") or {}
    method = config.get("method", info.method or "dreambooth")
    lora, booth, data = info.lora, info.dreambooth or {}, info.data
    weights = "full UNet" + (" and text encoder" if config.get("train_text_encoder") else "")
    if lora:
        rank = lora.get("rank", "?")
        weights = f"LoRA adapter (rank {rank}, alpha {lora.get('alpha') or rank})"
    facts = [("method", METHODS.get(method, method)),
             ("base model", f"{info.base or config.get('base', 'n/a')} ({na(info.base_kind)})"),
             ("trained weights", weights),
             ("trained parameters", "n/a" if info.trained_parameters is None else f"{info.trained_parameters:,}"),
             ("resolution", f"{config.get('resolution', na(info.image_size))} px"),
             ("training images", data.get("images", "n/a"))]
    if booth:
        prior = (f"yes: {booth.get('class_images', 0)} class images ({booth.get('generated_class_images', 0)} made "
                 f"by the base model), loss weight {booth.get('prior_loss_weight')}")
        facts.append(("prior preservation", prior if booth.get("prior_preservation") else "no"))
    facts += [("learning rate", _finetune_lr(info, config)),
              ("batch × accumulation", f"{config.get('train_batch_size', '?')} × "
                                       f"{config.get('gradient_accumulation_steps', '?')}"),
              ("precision", info.precision or config.get("precision", config.get("mixed_precision", "n/a"))),
              ("EMA", "yes" if info.ema else "no"), *_run_facts(info)]
    prompts = [(label, prompt) for label, prompt in (info.prompts or {}).items()]
    if booth:
        prompts = [("instance prompt", booth.get("instance_prompt", ""))] + (
            [("class prompt", booth["class_prompt"])] if booth.get("class_prompt") else []) + [
            (f"generate: {label}", prompt) for label, prompt in prompts]
    return {"title": f"Stable Diffusion fine-tuned ({METHODS.get(method, method)})",
            "facts": table(["", ""], facts), "prompts": table(["", "prompt"], prompts),
            "samples": [f for f in [_validation_figure(run, columns)] if f],
            "class_images": _class_images_figure(run, booth, columns),
            "note": "Fine-tuning changes how the base model draws these prompts; the validation images below use the "
                    "same seeds at every step, so differences between rows come from training alone."}


def _finetune_lr(info: ModelRecord, config: dict[str, Any]) -> str:
    """The peak learning rate used, as the model recorded it (models from before it was recorded: the config's)."""
    value = info.learning_rate if info.learning_rate is not None else config.get("learning_rate")
    return f"{value:g}" if isinstance(value, int | float) else "n/a (method default)"


def _validation_figure(run: RunFolder, columns: int, most_steps: int = 4) -> dict[str, str] | None:
    """Validation images: one row per (step, prompt), same seeds each step; at most ``most_steps`` steps shown."""
    steps = sorted(p for p in run.path(MODEL, "validation").glob("step-*") if p.is_dir())
    if len(steps) > most_steps:  # first, last and evenly spaced between
        picks = np.linspace(0, len(steps) - 1, most_steps).round().astype(int)
        steps = [steps[i] for i in sorted(set(picks))]
    rows = []
    for folder in steps:
        prompts = RunFolder(folder).json("prompts.json") or []
        for p, prompt in enumerate(prompts):
            tiles = _tiles(folder, sorted(f.name for f in folder.glob(f"prompt{p:02d}-*.png"))[:columns])
            if tiles:
                rows.append((f"step {_step_of(folder)}: “{_short(prompt)}”", tiles))
    if not rows:
        return None
    return figure(figures.labelled_grids(rows, columns), "Validation images during fine-tuning (same seeds at every "
                  "step).", "validation images at several fine-tuning steps")


def _class_images_figure(run: RunFolder, booth: dict[str, Any], columns: int) -> dict[str, str] | None:
    named = booth.get("class_images_dir")
    if not named:
        return None
    folder = run.path(MODEL) / named  # relative to the model folder (older models: an absolute path)
    if not folder.is_dir():
        return None
    paths = sorted(p.name for p in folder.glob("*.png"))[:columns]
    tiles = _tiles(folder, paths)
    if not tiles:
        return None
    label = f"class prompt: “{_short(booth.get('class_prompt', ''))}”"
    return figure(figures.labelled_grids([(label, tiles)], columns),
                  "Prior-preservation class images (made by the base model before fine-tuning, unless given): what "
                  "the base model draws for the class prompt.", "prior preservation class images")
