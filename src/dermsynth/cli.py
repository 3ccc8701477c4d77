"""The `dermsynth` command line. Each command is a thin wrapper over the Python API.

Exit codes: 0 success, 2 a user mistake (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dermsynth.audit.config import AuditConfig, feature_spaces_help
from dermsynth.classify.models import classifiers_help
from dermsynth.config import default_of
from dermsynth.data.config import PrepareConfig
from dermsynth.data.readers import readers_help
from dermsynth.diffusion.sd.config import PICKLE_SUFFIXES, FinetuneConfig
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.regimes import regimes_help

# No network at run time unless the user names a hub model (stages that accept hub ids lift this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress bars only

app = typer.Typer(
    name="dermsynth",
    help="Synthetic dermoscopy images with diffusion models, audited for fidelity and memorization, "
    "and validated on a real, patient-disjoint skin-cancer test set.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _main_process() -> bool:
    """False in the other processes of a torchrun / accelerate launch (only the main one prints results)."""
    from dermsynth.distributed import current_share

    return current_share().is_main


def _d(model: Any, field: str, text: str, unit: str = "") -> str:
    """A help text ending in the settings model's default for ``field`` (so the two cannot drift apart)."""
    return f"{text} {default_of(model, field, unit)}."


def _old_option(old: str, old_value: Any, new: str, value: Any) -> Any:
    """The value of option ``new``, or of its old name ``old`` (hidden; read until the next release)."""
    from dermsynth.config import deprecation_notice

    if old_value is None:
        return value
    if value is not None:
        raise DermsynthError(f"{old} is the old name of {new}: give only {new}")
    deprecation_notice(old, new)
    return old_value


# --------------------------------------------------------------------------- prepare / info


@app.command()
def prepare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the prepared dataset.")],
    dataset: Annotated[str | None, typer.Option(
        help=readers_help() + " (default: sample; with --root alone, the reader whose layout the folder shows).")
    ] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset folder.")] = None,
    csv: Annotated[Path | None, typer.Option(help="Metadata CSV, when not in its usual place under --root.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with prepare settings (options override it).")] = None,
    label_scheme: Annotated[str | None, typer.Option(
        help=_d(PrepareConfig, "label_scheme", "binary (benign/malignant) or diagnosis"))] = None,
    image_size: Annotated[int | None, typer.Option(
        help=_d(PrepareConfig, "preprocess.image_size", "Side of the square output images"))] = None,
    hair_removal: Annotated[bool | None, typer.Option(
        "--hair-removal/--no-hair-removal",
        help=_d(PrepareConfig, "preprocess.hair_removal", "DullRazor-style hair removal"))] = None,
    center: Annotated[bool | None, typer.Option(
        "--center/--no-center", help=_d(PrepareConfig, "preprocess.center", "Crop around the segmented lesion"))
    ] = None,
    color_constancy: Annotated[bool | None, typer.Option(
        "--color-constancy/--no-color-constancy",
        help=_d(PrepareConfig, "preprocess.color_constancy", "Shades-of-grey colour balance"))] = None,
    min_source_side: Annotated[int | None, typer.Option(
        help=_d(PrepareConfig, "preprocess.min_source_side",
                "Skip source images whose short side is below this", " px"))] = None,
    val: Annotated[float | None, typer.Option(help=_d(PrepareConfig, "split.val", "Validation fraction"))] = None,
    test: Annotated[float | None, typer.Option(help=_d(PrepareConfig, "split.test", "Test fraction"))] = None,
    seed: Annotated[int | None, typer.Option(help=_d(PrepareConfig, "split.seed", "Split seed"))] = None,
    max_images: Annotated[int | None, typer.Option(help="Keep at most N images (stratified), for quick runs.")] = None,
    workers: Annotated[int | None, typer.Option(
        help=_d(PrepareConfig, "workers", "Worker processes for preprocessing"))] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Read a dataset, split it by patient, preprocess images, write metadata.csv + images + prepare.json."""
    from dermsynth.config import stage_config
    from dermsynth.data.config import PrepareConfig
    from dermsynth.data.prepare import prepare as run_prepare

    cfg = stage_config(PrepareConfig, config, {
        "dataset": dataset, "root": root, "csv": csv, "label_scheme": label_scheme, "max_images": max_images,
        "workers": workers, "preprocess.image_size": image_size, "preprocess.hair_removal": hair_removal,
        "preprocess.center": center, "preprocess.color_constancy": color_constancy,
        "preprocess.min_source_side": min_source_side, "split.val": val,
        "split.test": test, "split.seed": seed,
    })
    result = run_prepare(cfg, out, progress=not quiet)
    _print_prepare_summary(result.summary, out)


def _print_prepare_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{out}: {summary['images']} images, grouped by {summary['grouping'].split(' (')[0]}")
    table.add_column("split")
    table.add_column("groups", justify="right")
    for label in summary["classes"]:
        table.add_column(label, justify="right")
    table.add_column("total", justify="right")
    for name, part in summary["splits"].items():
        counts = [str(part["labels"].get(label, 0)) for label in summary["classes"]]
        table.add_row(name, str(part["groups"]), *counts, str(part["images"]))
    console.print(table)
    if summary["skipped_count"]:
        reasons = ", ".join(f"{n} {r}" for r, n in summary["skipped_by_reason"].items())
        console.print(f"skipped {summary['skipped_count']}: {reasons} (listed in prepare.json)")


@app.command()
def info(prep: Annotated[Path, typer.Argument(help="A prepared dataset folder.")]) -> None:
    """Summarise a prepared dataset: classes, splits, grouping, skipped images."""
    from dermsynth.data.dataset import load_prepared
    from dermsynth.data.splits import grouping_level, split_summary

    dataset = load_prepared(prep)
    # Counts come from metadata.csv (checked on loading), so a hand-edited prepare.json cannot mislead them.
    summary = dataset.summary
    _print_prepare_summary({"images": len(dataset.metadata), "grouping": grouping_level(dataset.metadata),
                            "classes": dataset.classes, "splits": split_summary(dataset.metadata),
                            "skipped_count": summary.get("skipped_count", 0),
                            "skipped_by_reason": summary.get("skipped_by_reason", {})}, prep)
    settings = dataset.summary.get("settings", {})
    typer.echo(f"source: {settings.get('dataset', '?')}  label scheme: {settings.get('label_scheme', '?')}  "
               f"image size: {dataset.image_size}")
    typer.echo(f"grouping: {summary.get('grouping', grouping_level(dataset.metadata))}")


# --------------------------------------------------------------------------- train / generate


_STAGES_HELP = ("A multi-stage preset (latent: autoencoder, then diffusion; cascade: base, then super-resolution) "
                "splits the budget between its stages in the ratio of their preset step budgets.")


def _schedulers_help() -> str:
    from dermsynth.diffusion.schedulers import EDM_SCHEDULERS, SCHEDULERS

    return (f"{', '.join(SCHEDULERS)}; models trained with EDM (the cpu presets): {', '.join(EDM_SCHEDULERS)} "
            "(default: the model's).")


def _label_scheme_help() -> str:
    from dermsynth.diffusion.scratch.config import LABEL_SCHEME_HELP

    return LABEL_SCHEME_HELP + " (default: label)"


def _presets_help() -> str:
    from dermsynth.diffusion.training import presets_help

    return presets_help()


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="A prepared dataset folder (its train split is used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    preset: Annotated[str | None, typer.Option(
        help=_presets_help() + " Default: the --config file's preset: key, else cpu-fast.")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML with training settings, stacked on its own preset: key (the shipped configs/train-*.yaml name "
             "theirs) or on --preset.")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="Also stop after this much training time, all runs and stages together; off by default, since a "
             "minute cap makes the model depend on the machine's speed. " + _STAGES_HELP)] = None,
    max_steps: Annotated[int | None, typer.Option(
        help="Optimisation steps of the whole run (default: the preset's). " + _STAGES_HELP)] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed (default: 0).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps (default: auto).")] = None,
    real_per_class: Annotated[int | None, typer.Option(
        help="Train on this many images per class: the sample `validate --real-per-class` uses (same seed 0), so "
             "generator and classifier see the same real images.")] = None,
    label_scheme: Annotated[str | None, typer.Option(help=_label_scheme_help())] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a small class-conditional diffusion model from scratch (EMA weights, samples, checkpoints): pixel,
    latent or cascade, by preset."""
    from dermsynth.diffusion.training import train as run_train

    result = run_train(data, out, preset, config, max_minutes=max_minutes, max_steps=max_steps, seed=seed,
                       device=device, real_per_class=real_per_class, label_scheme=label_scheme, resume=resume,
                       progress=not quiet)
    info = result.info
    if result.skipped:
        typer.echo(f"{out}: already trained with these settings ({info['steps']} steps); nothing to do")
        return
    typer.echo(f"{out}: {info['steps']} steps in {info['seconds']:.0f} s (stopped by {info['stopped_by']}), "
               f"final loss {info['final_loss']:.4f}; samples: {out / info['sample_grid']}")


@app.command()
def generate(
    model: Annotated[Path, typer.Option("--model", help="A model folder made by train or finetune.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the synthetic images.")],
    per_class: Annotated[int | None, typer.Option(help="Images per class.")] = None,
    balance: Annotated[Path | None, typer.Option(
        help="A prepared dataset: fill each class of its train split up to the largest class.")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated subset of the model's classes.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; image i of class c gets seed + 1000000 * c + i.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: the model's).")] = None,
    scheduler: Annotated[str | None, typer.Option(help=_schedulers_help())] = None,
    guidance: Annotated[str | None, typer.Option(
        help="Classifier-free guidance: one value, or one per class as CLASS=VALUE,... (e.g. benign=2,malignant=1.5, "
             "as `dermsynth tune-guidance` picks them) (default: the model's).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per sampling batch; memory only, the images do not change (default: the model family's: 64 "
             "pixel, 16 latent, 8 Stable Diffusion).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for torch (default: all cores; under a launcher, the cores split between processes).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    prompt: Annotated[list[str] | None, typer.Option(
        help="CLASS=PROMPT for text-to-image models; repeat per class (default: the model's).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt (default: the model's).")] = None,
    prompts_from: Annotated[Path | None, typer.Option(
        help="A prepared dataset: each image takes the next metadata prompt of its class (train split).")] = None,
    init_images: Annotated[Path | None, typer.Option(
        help="Image-to-image: a prepared dataset or a folder of class folders to start from.")] = None,
    strength: Annotated[float, typer.Option(help="Image-to-image noise strength in (0, 1].")] = 0.6,
    mask_from: Annotated[str | None, typer.Option(
        help="Inpainting with --init-images: 'lesion' (segmented) or a folder of masks named like the images.")
    ] = None,
) -> None:
    """Generate synthetic images per class with QC, a manifest and provenance in every PNG; resumable.

    Under torchrun or accelerate launch, the processes share the work (one GPU each, or the CPU cores split
    between them) and make the same images as one process would."""
    from dermsynth.diffusion.generate import generate as run_generate

    chosen = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    result = run_generate(model, out, per_class=per_class, balance=balance, classes=chosen, seed=seed, steps=steps,
                          scheduler=scheduler, guidance=_guidance_option(guidance), batch_size=batch_size,
                          device=device,
                          threads=threads, progress=not quiet, prompts=_class_prompts(prompt),
                          negative_prompt=negative_prompt, init_images=init_images, strength=strength,
                          mask_from=mask_from, prompts_from=prompts_from)
    if not _main_process():
        return
    summary = result.summary
    counts = ", ".join(f"{label} {n}" for label, n in summary["counts"].items())
    rejected = sum(summary["rejected"].values())
    typer.echo(f"{out}: {counts} images ({rejected} rejected by QC); manifest: {out / 'manifest.csv'}")


# --------------------------------------------------------------------------- finetune


@app.command()
def finetune(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    method: Annotated[str | None, typer.Option(
        help="dreambooth, lora or captions (or `method:` in --config; default: dreambooth).")] = None,
    base: Annotated[str | None, typer.Option(
        help="Base Stable Diffusion: a diffusers folder, a .safetensors file, or a hub id (downloaded only when "
             "named, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5); or `base:` in --config.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Prepared dataset (train split: instance images "
                                                             "or captions).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with fine-tuning settings (options override it).")] = None,
    resume: Annotated[str | None, typer.Option(help="'latest' (newest checkpoint in --out) or a checkpoint "
                                                    "folder.")] = None,
    base_config: Annotated[str | None, typer.Option(
        help="Single-file base: a local diffusers folder with the configs of the same architecture.")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=f"Allow pickle checkpoints "
                                                                      f"({', '.join(sorted(PICKLE_SUFFIXES))}): "
                                                                      "loading one can run code.")] = False,
    allow_upsample: Annotated[bool, typer.Option("--allow-upsample", help="Train at a resolution above the prepared "
                                                 "images' size (they are upsampled).")] = False,
    resolution: Annotated[int | None, typer.Option(
        help=_d(FinetuneConfig, "resolution", "Training image side, a multiple of 8"))
                          ] = None,
    instance_prompt: Annotated[str | None, typer.Option(help="DreamBooth instance prompt.")] = None,
    class_prompt: Annotated[str | None, typer.Option(help="DreamBooth class prompt.")] = None,
    instance_dir: Annotated[Path | None, typer.Option(help="Folder of instance images.")] = None,
    class_dir: Annotated[Path | None, typer.Option(help="Folder of class images (missing ones generated).")] = None,
    max_steps: Annotated[int | None, typer.Option(help=_d(FinetuneConfig, "max_steps", "Optimisation steps"))] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this much training time.")] = None,
    precision: Annotated[str | None, typer.Option(help="no (fp32), bf16, fp16 (GPU), or auto (fp16 on a GPU, else "
                                                        "no) (default: no).")] = None,
    mixed_precision: Annotated[str | None, typer.Option(hidden=True)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: 0).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Fine-tune Stable Diffusion: DreamBooth with prior preservation, LoRA, or per-image captions."""
    from dermsynth.config import stage_config
    from dermsynth.diffusion.sd.config import FinetuneConfig
    from dermsynth.diffusion.sd.finetune import finetune as run_finetune

    if resume is not None and resume != "latest" and not Path(resume).is_dir():
        raise DermsynthError(f"--resume takes 'latest' or a checkpoint folder (got {resume!r})")
    values = {"method": method, "base": base, "base_config": base_config, "trust_pickle": trust_pickle or None,
              "allow_upsample": allow_upsample or None,
              "resolution": resolution, "instance_prompt": instance_prompt, "class_prompt": class_prompt,
              "instance_dir": instance_dir, "class_dir": class_dir, "max_steps": max_steps,
              "max_minutes": max_minutes, "seed": seed, "device": device,
              "precision": _old_option("--mixed-precision", mixed_precision, "--precision", precision)}
    cfg = stage_config(FinetuneConfig, config, values)
    result = run_finetune(cfg, out, data, resume=resume, progress=not quiet)
    if not result.main_process:  # under accelerate launch, one summary line
        return
    info = result.info
    typer.echo(f"{out}: {info['method']} ({info['family']}) {info['steps']} steps in {info['seconds']:.0f} s, "
               f"final loss {info['final_loss']:.4f}; classes: {', '.join(info['classes'])}")


def _guidance_option(text: str | None) -> float | dict[str, float] | None:
    from dermsynth.diffusion.generate_config import parse_guidance

    try:
        return parse_guidance(text)
    except ValueError:
        raise DermsynthError(f"--guidance takes a number or CLASS=NUMBER,... (got {text!r})") from None


def _class_prompts(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    prompts = {}
    for pair in pairs:
        label, sep, text = pair.partition("=")
        if not sep or not label.strip():
            raise DermsynthError(f"--prompt takes CLASS=PROMPT (got {pair!r})")
        prompts[label.strip()] = text.strip()
    return prompts


# --------------------------------------------------------------------------- reconstruct


@app.command()
def reconstruct(
    data: Annotated[Path, typer.Option("--data", help="The prepared real dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the reconstructions (audit reads it).")],
    model: Annotated[Path | None, typer.Option(help="A latent model (through its autoencoder) or a cascade (down "
                                                    "to its base's size, then up by its super-resolution stage).")
                     ] = None,
    bicubic: Annotated[int | None, typer.Option(help="Instead, a bicubic down-and-up by this factor (the "
                                                     "reference a latent of that size must beat).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    max_images: Annotated[int | None, typer.Option(help="A seeded sample of at most this many images.")] = None,
    model_sample: Annotated[bool, typer.Option(
        help="Only the model's own training sample (with --split train): the folder validate's reconstruct "
             "control (`reconstruction:`) needs.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Real images through a model's last stage (or bicubic): audit the folder to measure that stage's ceiling.

    A latent model's samples can be no closer to real images than its autoencoder's reconstructions, and a
    cascade's no closer than its super-resolution stage makes them from perfect low-resolution images, so
    `dermsynth audit --synthetic OUT` on them splits a fidelity gap into that stage's share and the rest's.
    The images are derived from real patients' images: not synthetic, not for sharing or training."""
    from dermsynth.diffusion.scratch.reconstruct import reconstruct as run_reconstruct

    record = run_reconstruct(data, out, model=model, bicubic=bicubic, split=split, max_images=max_images,
                             device=device, progress=not quiet, model_sample=model_sample)
    typer.echo(f"{out}: {record['images']} {split} images through {record['through']}; PSNR "
               f"{record['psnr']:.2f} dB, SSIM {record['ssim']:.3f}"
               + (f"; skipped {len(record['skipped'])} unreadable" if record["skipped"] else ""))


# --------------------------------------------------------------------------- audit


@app.command()
def audit(
    real: Annotated[Path, typer.Option("--real", help="The prepared real dataset the generator was trained on.")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Synthetic folder (SYN/images/<class>/ or "
                                                                  "SYN/<class>/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for audit.json, flagged.csv, figures.")],
    config: Annotated[Path | None, typer.Option(help="YAML with audit settings (options override it).")] = None,
    features: Annotated[str | None, typer.Option(
        help=f"{feature_spaces_help()} (default: classifier).")
    ] = None,
    image_size: Annotated[int | None, typer.Option(
        help=_d(AuditConfig, "image_size", "Compare images at this size"))] = None,
    max_images: Annotated[int | None, typer.Option(help=_d(AuditConfig, "max_images", "Cap per image set"))] = None,
    synthetic_preprocess: Annotated[bool | None, typer.Option(
        "--synthetic-preprocess/--no-synthetic-preprocess", help="Give a synthetic folder not made by dermsynth the "
        "real images' preprocessing first (default: on; cached).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Fidelity (FID, KID, precision/recall, density/coverage beside real-vs-real) and memorization."""
    from dermsynth.audit.config import AuditConfig
    from dermsynth.audit.run import audit as run_audit
    from dermsynth.config import stage_config

    cfg = stage_config(AuditConfig, config, {"features": features, "image_size": image_size,
                                             "max_images": max_images, "synthetic_preprocess": synthetic_preprocess,
                                             "device": device})
    report = run_audit(real, synthetic, out, cfg, progress=not quiet)
    fid = report["fidelity"]["overall"]
    memo = report["memorization"]
    typer.echo(f"{out}: FID {fid['synthetic_vs_train']['fid']:.2f} (real test vs train: "
               f"{fid['real_test_vs_train']['fid']:.2f}) in {report['feature_space']['name']}; "
               f"flagged {memo['synthetic_flagged']}/{report['counts']['synthetic']} synthetic images "
               f"(held-out real: {memo['held_out_real_flagged_rate']:.1%}; positive controls: "
               f"{memo['positive_controls'].get('overall', float('nan')):.0%})"
               + (" [partial: see notes in audit.json]" if report["partial"] else ""))


@app.command("tune-guidance")
def tune_guidance(
    model: Annotated[Path, typer.Option("--model", help="A model folder made by train (any from-scratch family).")],
    data: Annotated[Path, typer.Option("--data", help="The prepared dataset it was trained on (its val split is "
                                                      "used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the generated sets, tune.csv and tune.json.")],
    values: Annotated[str, typer.Option(help="Comma-separated guidance values to try.")] = "1,1.5,2,3",
    per_class: Annotated[int, typer.Option(help="Images per class and value (the same seeds for every value).")
                         ] = 100,
    features: Annotated[str, typer.Option(
        help="classifier (the audit's feature CNN, trained on the train split and kept in --out) or "
             "classifier:PATH (a saved one, e.g. an audit folder's feature-classifier-half).")] = "classifier",
    seed: Annotated[int, typer.Option(help="Base seed of the generated images.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Pick classifier-free guidance per class on the val split (lowest Fréchet distance to the class's real val
    images), so that the test split, which the audit reads, never informs the choice; prints the generate option."""
    from dermsynth.tune import tune_guidance as run_tune

    try:
        chosen_values = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise DermsynthError(f"--values takes comma-separated numbers (got {values!r})") from None
    record = run_tune(model, data, out, chosen_values, per_class, features, seed, device, progress=not quiet)
    for label in record["chosen"]:
        scores = ", ".join(f"{r['guidance']:g}: FD {r['fd']:.2f}" for r in record["scores"] if r["class"] == label)
        typer.echo(f"{label}: {scores}")
    typer.echo(f"{out}: chosen on the val split; generate with {record['generate_option']}")


@app.command("domain-shift")
def domain_shift(
    real: Annotated[Path, typer.Option("--real", help="The prepared real dataset the classifier trains on.")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Synthetic folder (SYN/images/<class>/ or "
                                                                  "SYN/<class>/).")],
    external: Annotated[list[Path], typer.Option(
        "--external", help="An external site's prepared dataset (every image is measured); repeat for several.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for domain_shift.json|csv|md.")],
    image_size: Annotated[int | None, typer.Option(help="Measure at this size (default: the prepared size, "
                                                        "as validate's classifier sees it).")] = None,
    real_per_class: Annotated[int | None, typer.Option(
        help="The limited-data sample validate draws (with --subsample-seed), instead of the whole train split.")
    ] = None,
    subsample_seed: Annotated[int, typer.Option(help="Seed of the --real-per-class sample.")] = 0,
    fraction: Annotated[float, typer.Option(help="Synthetic share of the training mix (hybrid:<fraction>).")] = 0.5,
    max_per_class: Annotated[int, typer.Option(help="At most this many images per set and class (seeded).")] = 1000,
    features: Annotated[str | None, typer.Option(
        help="Also compare in a feature space: classifier:PATH (a saved classifier, e.g. validate's real-only one "
             "with --save-checkpoint) or hf:ID_OR_PATH (a vision backbone).")] = None,
    device: Annotated[str, typer.Option(help="Device for --features: auto, cpu, cuda, mps.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Does the synthetic set move the training distribution towards each external site, or away from it?

    Compares the real training images, the synthetic images and each site on the audit's domain-gap statistics
    (colour, sharpness, lesion size and shape, ...), and says whether the hybrid mix is nearer the site than the
    real images alone: a check to make before trusting synthetic data for a new site."""
    from dermsynth.audit.domain_shift import run_domain_shift

    result = run_domain_shift(real, synthetic, external, out, size=image_size, real_per_class=real_per_class,
                              subsample_seed=subsample_seed, fraction=fraction, max_per_class=max_per_class,
                              features=features, device=device, progress=not quiet)
    for site, info in result["sites"].items():
        s = info["summary"]
        typer.echo(f"{site}: distance from training {s['distance_train']:.2f}, from the mix {s['distance_mix']:.2f}"
                   f" (margin {s['margin']:+.2f}): the mix moves {s['prediction']}")
        if "feature_shift" in result:
            f = result["feature_shift"][site]["summary"]
            typer.echo(f"  in feature space: Fréchet distance from training {f['distance_train']:.3g}, from the mix "
                       f"{f['distance_mix']:.3g} (relative margin {f['relative_margin']:+.1%}): {f['prediction']}")
    typer.echo(f"{out / 'domain_shift.md'}")


# --------------------------------------------------------------------------- reader study

reader_app = typer.Typer(help="A blinded reader study: can clinicians tell the synthetic lesions from real ones?",
                         no_args_is_help=True)
app.add_typer(reader_app, name="reader-study")


@reader_app.command("build")
def reader_build(
    real: Annotated[Path, typer.Option("--real", help="Prepared dataset; its held-out (val, test) images are the "
                                                      "real ones shown.")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Synthetic folder (SYN/images/<class>/ or "
                                                                  "SYN/<class>/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New study folder: reader/ for readers, key/ kept "
                                                          "apart.")],
    n: Annotated[int, typer.Option(help="Scored images, split equally over the classes.")] = 100,
    per_class: Annotated[int | None, typer.Option(help="Instead of --n: this many scored images per class.")] = None,
    synthetic_fraction: Annotated[float, typer.Option(help="Share of synthetic images in every class.")] = 0.5,
    practice: Annotated[int, typer.Option(help="Unscored practice images with feedback, shown first.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the draw and the file names.")] = 0,
    size: Annotated[int | None, typer.Option(help="Side of every image in px (default: the smaller of the real and "
                                                  "synthetic images' sides).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Draw, blind (one size and encoding, no metadata, equal file sizes, random names) and write the study."""
    from dermsynth.reader.build import StudySettings, blinding_sentence, build_study

    record = build_study(real, synthetic, out, StudySettings(n=n, per_class=per_class, seed=seed, size=size,
                                                             synthetic_fraction=synthetic_fraction,
                                                             practice=practice), progress=not quiet)
    typer.echo(f"{out}: study {record['study_id']}, {record['images']} images ({record['practice']} practice) at "
               f"{record['image_size']} px; give readers {out / 'reader'} (open index.html), keep {out / 'key'}")
    typer.echo(blinding_sentence(record["blinding"]))


@reader_app.command("serve")
def reader_serve(
    study: Annotated[Path, typer.Argument(help="A study folder from reader-study build.")],
    host: Annotated[str, typer.Option(help="Address to bind (other than localhost needs --allow-remote).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    allow_remote: Annotated[bool, typer.Option(help="Accept readers from other machines.")] = False,
) -> None:
    """Serve the reader page to a lab; answers are stored per reader in STUDY/server/answers.sqlite."""
    from dermsynth.reader.serve import serve

    serve(study, host, port, allow_remote)


@reader_app.command("score")
def reader_score(
    study: Annotated[Path, typer.Argument(help="A study folder from reader-study build.")],
    answers: Annotated[list[Path], typer.Argument(help="Answers files exported by the page or the server, one "
                                                       "per reader.")],
    audit: Annotated[Path | None, typer.Option(help="The synthetic folder's audit (its nearest.csv): each "
                                                    "convincing image's nearest real similarity.")] = None,
) -> None:
    """Accuracy per reader and pooled (exact CIs, test vs chance), sensitivity, specificity, AUROC, kappa."""
    from dermsynth.reader.score import SCORE_FOLDER, score_study

    result = score_study(study, answers, audit)
    pooled = result["pooled"]
    typer.echo(f"{study / SCORE_FOLDER / 'score.md'}: {len(result['readers'])} reader(s), pooled accuracy "
               f"{pooled['accuracy']:.1%} [{pooled['ci_lo']:.1%}, {pooled['ci_hi']:.1%}] (p vs chance "
               f"{pooled['p_vs_chance']:.3g})")


# --------------------------------------------------------------------------- run / demo


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="A study YAML (see configs/).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<config name>).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE on top of the file, dotted and repeatable: --set prepare.root=/data/ISIC2020 "
                      "--set finetune.base=/models/sd15 (values read as YAML).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan of every stage (images per class made and taken, sizes, base model, disk) "
                          "and what would stop the study; compute nothing. Every run checks this first.")] = False,
) -> None:
    """Run a whole study from one YAML; finished stages are skipped, interrupted ones resume."""
    from dermsynth.pipeline import load_run_config, run_pipeline

    run_config = load_run_config(config, set_)
    folder = out or Path("runs") / config.stem
    if dry_run:
        from dermsynth.preflight import plan_study

        plan = plan_study(run_config, folder)
        typer.echo(plan.text())
        raise typer.Exit(2 if plan.problems else 0)
    _finish_run(run_pipeline(run_config, folder))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
) -> None:
    """The study on the embedded CC0 sample (557 ISIC Archive images) with CPU settings."""
    from dermsynth.pipeline import demo_config, run_pipeline

    _finish_run(run_pipeline(demo_config(), out))


def _finish_run(outcomes) -> None:
    if not _main_process():
        return
    ran = [o.name for o in outcomes if o.status == "ran"]
    skipped = [o.name for o in outcomes if o.status == "skipped"]
    folder = outcomes[0].folder.parent if outcomes else Path(".")
    typer.echo(f"{folder}: ran {', '.join(ran) or 'nothing'}; up to date: {', '.join(skipped) or 'none'}")


# --------------------------------------------------------------------------- validate


@app.command()
def validate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (runs go to OUT/validation/).")],
    real: Annotated[Path | None, typer.Option(
        "--real", help="Prepared dataset (real train/val/test splits); or `real:` in --config.")] = None,
    synthetic: Annotated[list[Path] | None, typer.Option(
        "--synthetic", help="Synthetic folder of class sub-folders; repeat for several.")] = None,
    synthetic_preprocess: Annotated[bool | None, typer.Option(
        "--synthetic-preprocess/--no-synthetic-preprocess", help="Give synthetic folders not made by dermsynth the "
        "real images' preprocessing first (default: on; cached).")] = None,
    test: Annotated[list[Path] | None, typer.Option(
        "--test", help="External test set: a prepared dataset from another source, all of it tested on (after "
        "removing content duplicates of training images); repeat for several.")] = None,
    regimes: Annotated[str | None, typer.Option(
        help=f"Comma-separated, of: {regimes_help()} (the controls augment, lowpass, reconstruct, mixup: copies "
             "made from the run's own real images; default: real,hybrid:0.5,synthetic).")
    ] = None,
    reconstruction: Annotated[Path | None, typer.Option(
        help="For the reconstruct controls: a folder from dermsynth reconstruct --split train --model MODEL "
             "--model-sample.")] = None,
    seeds: Annotated[int | None, typer.Option(help=_d(ValidateConfig, "seeds", "Seeds per regime"))] = None,
    model: Annotated[str | None, typer.Option(help=_d(ValidateConfig, "model", f"{classifiers_help()}"))] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with validate settings (options override it).")] = None,
    real_per_class: Annotated[int | None, typer.Option(
        help="Limited-data setting: real training images per class.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side for cnn/vit (default: the prepared size).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the model's preset).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size (default: the preset's).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    lr: Annotated[float | None, typer.Option(hidden=True)] = None,
    precision: Annotated[str | None, typer.Option(help="auto, bf16 or no (fp32) (default: auto).")] = None,
    bootstrap: Annotated[int | None, typer.Option(help=_d(ValidateConfig, "bootstrap", "Bootstrap resamples"))] = None,
    save_checkpoint: Annotated[bool | None, typer.Option(
        "--save-checkpoint/--no-save-checkpoint",
            help=_d(ValidateConfig, "save_checkpoint", "Keep each run's selected classifier"))] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps (default: auto).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (1 is fastest on a busy CPU).")] = None,
    shard: Annotated[str | None, typer.Option(
        help="K/N: only every N-th run, from the K-th (task K of a job array of N; see docs/scale.md).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train classifiers on real, hybrid and synthetic training sets; test on real, patient-disjoint images.

    Under torchrun or accelerate launch, the runs are dealt to the processes (one GPU each, or the CPU cores split
    between them); the main process writes the summary."""
    from dermsynth.config import stage_config
    from dermsynth.evaluate.config import ValidateConfig
    from dermsynth.evaluate.validate import validate as run_validate

    cfg = stage_config(ValidateConfig, config, {
        "real": real, "synthetic": synthetic or None, "test": test or None, "seeds": seeds, "model": model,
        "synthetic_preprocess": synthetic_preprocess, "reconstruction": reconstruction,
        "regimes": [r.strip() for r in regimes.split(",") if r.strip()] if regimes is not None else None,
        "real_per_class": real_per_class, "image_size": image_size, "bootstrap": bootstrap,
        "save_checkpoint": save_checkpoint, "device": device, "threads": threads, "shard": shard,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.precision": precision,
        "train.learning_rate": _old_option("--lr", lr, "--learning-rate", learning_rate),
    }, required={"real": "no real data: give --real PREPARED_FOLDER (or `real:` in --config)"})
    result = run_validate(cfg, out, progress=not quiet)
    if not _main_process():  # under a launcher, the other processes' runs are in the main one's summary
        return
    typer.echo((result.out / "summary.md").read_text(encoding="utf-8"))
    typer.echo(f"{result.out}: {len(result.ran)} run(s) trained, {len(result.skipped)} already done")


# --------------------------------------------------------------------------- report


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (prepared/, model/, synthetic/, audit/, validation/).")],
) -> None:
    """Write RUN_DIR/report.html (one self-contained page) and RUN_DIR/summary.md from what the stages wrote."""
    from dermsynth.report import build_report

    html, markdown = build_report(run_dir)
    typer.echo(f"{html}\n{markdown}")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        # Outside standalone mode click returns a typer.Exit's code instead of raising it; commands return None.
        returned = app(args=argv, standalone_mode=False)
    except DermsynthError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click's usage errors are shown by click itself in standalone mode
        usage_errors, aborts = _click_exceptions()
        if isinstance(exc, usage_errors):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, aborts):
            sys.exit(130)
        raise
    sys.exit(returned if isinstance(returned, int) else 0)


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes: newer typer releases vendor click as ``typer._click``."""
    modules = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    aborts = (typer.Abort, *(m.Abort for m in modules if hasattr(m, "Abort")))
    return tuple(m.ClickException for m in modules), aborts
