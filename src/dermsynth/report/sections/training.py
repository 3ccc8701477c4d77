"""The report's training section: the from-scratch or fine-tuned model, its curves and samples."""

from __future__ import annotations

from typing import Any

import numpy as np

from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.report import figures
from dermsynth.report.folder import MODEL, RunFolder, Section, _short, _step_of, _tiles, _yaml, figure
from dermsynth.report.format import finite, fmt, table

METHODS = {"dreambooth": "DreamBooth", "lora": "DreamBooth with LoRA", "captions": "caption fine-tuning"}


def training_section(run: RunFolder) -> Section | None:
    info, log = run.json(MODEL, MODEL_JSON), run.csv(MODEL, "train_log.csv")
    if info is None and log is None:
        return None
    section = {"unfinished": info is None,
               "curve": figure(figures.training_curve(log) if log is not None and len(log) else None,
                               "Training loss per step.", "training loss curve"),
               "prompts": None, "class_images": None, "note": None}
    info = info or {}
    section.update(finetune_details(run, info) if is_finetuned(run, info) else scratch_details(run, info))
    return section


def is_finetuned(run: RunFolder, info: dict[str, Any]) -> bool:
    """A Stable Diffusion fine-tune (finished: by its model JSON; running: by its config in the run's YAML)."""
    if info:
        return str(info.get("family", "")).startswith("stable-diffusion")
    return bool((_yaml(run.text("config.resolved.yaml")) or {}).get("finetune"))


def scratch_details(run: RunFolder, info: dict[str, Any]) -> Section:
    facts = [("family", info.get("family", "n/a")), ("preset", info.get("preset", "n/a")),
             ("classes", ", ".join(info.get("classes", []))), ("image size", info.get("image_size", "n/a")),
             ("parameters", f"{info['parameters']:,}" if "parameters" in info else "n/a"),
             ("training images", info.get("data", {}).get("images", "n/a")),
             ("steps", info.get("steps", "n/a")), ("stopped by", info.get("stopped_by", "n/a")),
             ("training time", f"{info['seconds']:.0f} s" if finite(info.get("seconds")) else "n/a"),
             ("final loss", fmt(info.get("final_loss"), 4)), ("device", info.get("device", "n/a"))]
    grids = sorted(run.path(MODEL, "samples").glob("step-*.png"))
    final = run.path(MODEL, "samples", "final.png")
    samples = []
    if grids:
        samples.append(figure(figures.embed_png_file(grids[0]), f"Samples after {_step_of(grids[0])} steps "
                              "(early training; the reference study's Figure 1 shows the same stage).",
                              "early training samples"))
    if final.is_file():
        samples.append(figure(figures.embed_png_file(final), f"Samples of the finished model "
                              f"({info.get('steps', '?')} steps; one row per class, same seeds as above).",
                              "final training samples"))
    autoencoder = info.get("autoencoder")
    if autoencoder:
        facts += _autoencoder_facts(autoencoder)
        grid = run.path(MODEL, autoencoder.get("reconstructions_grid", "autoencoder/reconstructions.png"))
        samples.insert(0, figure(figures.embed_png_file(grid) if grid.is_file() else None,
                                 "Stage 1: real val images (top) and the autoencoder's reconstructions (bottom).",
                                 "autoencoder reconstructions"))
    title = "Latent diffusion model trained from scratch" if autoencoder else "Diffusion model trained from scratch"
    return {"title": title, "facts": table(["", ""], facts), "samples": [s for s in samples if s]}


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


def finetune_details(run: RunFolder, info: dict[str, Any], columns: int = 8) -> Section:
    """Stable Diffusion fine-tuning: base model, method, prompts, prior-preservation images, validation images."""
    config = info.get("config") or (_yaml(run.text("config.resolved.yaml")) or {}).get("finetune") or {}
    method = config.get("method", info.get("method", "dreambooth"))
    lora, booth, data = info.get("lora"), info.get("dreambooth") or {}, info.get("data", {})
    weights = "full UNet" + (" and text encoder" if config.get("train_text_encoder") else "")
    if lora:
        rank = lora.get("rank", "?")
        weights = f"LoRA adapter (rank {rank}, alpha {lora.get('alpha') or rank})"
    facts = [("method", METHODS.get(method, method)),
             ("base model", f"{info.get('base', config.get('base', 'n/a'))} ({info.get('base_kind', 'n/a')})"),
             ("trained weights", weights),
             ("trained parameters", f"{info['trained_parameters']:,}" if "trained_parameters" in info else "n/a"),
             ("resolution", f"{config.get('resolution', info.get('image_size', 'n/a'))} px"),
             ("training images", data.get("images", "n/a"))]
    if booth:
        prior = (f"yes: {booth.get('class_images', 0)} class images ({booth.get('generated_class_images', 0)} made "
                 f"by the base model), loss weight {booth.get('prior_loss_weight')}")
        facts.append(("prior preservation", prior if booth.get("prior_preservation") else "no"))
    facts += [("learning rate", _finetune_lr(info, config)),
              ("batch × accumulation", f"{config.get('train_batch_size', '?')} × "
                                       f"{config.get('gradient_accumulation_steps', '?')}"),
              ("precision", info.get("precision", config.get("precision", config.get("mixed_precision", "n/a")))),
              ("EMA", "yes" if info.get("ema") else "no"),
              ("steps", info.get("steps", "n/a")), ("stopped by", info.get("stopped_by", "n/a")),
              ("training time", f"{info['seconds']:.0f} s" if finite(info.get("seconds")) else "n/a"),
              ("final loss", fmt(info.get("final_loss"), 4)), ("device", info.get("device", "n/a"))]
    prompts = [(label, prompt) for label, prompt in (info.get("prompts") or {}).items()]
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


def _finetune_lr(info: dict[str, Any], config: dict[str, Any]) -> str:
    """The peak learning rate used, as the model recorded it (models from before it was recorded: the config's)."""
    value = info.get("learning_rate", config.get("learning_rate"))
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
