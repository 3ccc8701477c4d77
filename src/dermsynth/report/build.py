"""`dermsynth report`: gather a run folder's stage outputs into one self-contained HTML page and a Markdown summary.

Each ``*_section`` function reads one stage's outputs and returns the template's context for that section, or
None when the stage's outputs are absent (the page then says the stage was not run). Figures are embedded as
base64 PNG data URIs and the CSS is inline, so ``report.html`` opens anywhere without a network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.data.config import READERS
from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.errors import DermsynthError
from dermsynth.layout import RUN_FOLDERS
from dermsynth.report import figures
from dermsynth.report.format import finite, fmt, pct, table
from dermsynth.report.reader_section import reader_section
from dermsynth.report.results import (
    REFERENCE_STUDY,
    external_sections,
    headline,
    majority,
    paired_differences,
    results_table,
    subgroup_table,
    too_small_groups,
)
from dermsynth.utils import read_marker, write_text_atomic

Section = dict[str, Any]

# Where each stage writes inside a run folder, and which files show that it ran.
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {  # folder, and the files that show the stage ran
    "prepare": (RUN_FOLDERS["prepare"], ("prepare.json",)),
    "train": (RUN_FOLDERS["train"], ("dermsynth_model.json", "train_log.csv")),
    "generate": (RUN_FOLDERS["generate"], ("manifest.csv", "generate.json")),
    "audit": (RUN_FOLDERS["audit"], ("audit.json",)),
    "validate": (RUN_FOLDERS["validate"], ("summary.json", "validate.json")),
    "reader_study": (RUN_FOLDERS["reader_study"], ("key/study.json",)),
}
NOT_RUN_HINT = {
    "prepare": "dermsynth prepare --dataset ... --out RUN/prepared",
    "train": "dermsynth train --data RUN/prepared --out RUN/model",
    "finetune": "dermsynth finetune --method lora --base BASE --data RUN/prepared --out RUN/model",
    "generate": "dermsynth generate --model RUN/model --out RUN/synthetic --per-class N",
    "audit": "dermsynth audit --real RUN/prepared --synthetic RUN/synthetic --out RUN/audit",
    "validate": "dermsynth validate --real RUN/prepared --synthetic RUN/synthetic --out RUN",
    "reader_study": "dermsynth reader-study build --real RUN/prepared --synthetic RUN/synthetic --out "
                    "RUN/reader_study",
}
TILE = 64  # side of image tiles in grids (px)


# --------------------------------------------------------------------------- reading the run folder


@dataclass
class RunFolder:
    root: Path

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def json(self, *parts: str) -> Any:
        path = self.path(*parts)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DermsynthError(f"{path}: not valid JSON ({exc})") from None

    def csv(self, *parts: str) -> pd.DataFrame | None:
        path = self.path(*parts)
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "lesion_id": str})
        except (ValueError, pd.errors.ParserError) as exc:
            raise DermsynthError(f"{path}: not a readable CSV ({exc})") from None

    def text(self, *parts: str) -> str | None:
        path = self.path(*parts)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def stage_ran(self, stage: str) -> bool:
        folder, markers = STAGES[stage]
        if any(self.path(folder, m).is_file() for m in markers):
            return True
        return stage == "validate" and any(self.path(folder).glob("*/*/metrics.json"))


# --------------------------------------------------------------------------- formatting


def figure(png: bytes | None, caption: str, alt: str) -> dict[str, str] | None:
    return None if png is None else {"uri": figures.data_uri(png), "caption": caption, "alt": alt}


# --------------------------------------------------------------------------- sections


def overview_section(run: RunFolder) -> Section:
    config = _yaml(run.text("config.resolved.yaml")) or {}
    stages = []
    for stage, (folder, _) in STAGES.items():
        marker = read_marker(run.path(folder, ".stage.json"))  # damaged: it only dates the stage
        name = stage
        if stage == "train" and is_finetuned(run, run.json(folder, MODEL_JSON) or {}):
            name = "finetune"
        stages.append({"key": stage, "name": name, "folder": folder, "ran": run.stage_ran(stage),
                       "finished": marker.get("finished_utc", ""), "hint": NOT_RUN_HINT[name]})
    return {"name": config.get("name") or run.root.resolve().name, "root": str(run.root),
            "stages": stages, "by_name": {s["key"]: s for s in stages},
            "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def dataset_section(run: RunFolder) -> Section | None:
    summary = run.json("prepared", "prepare.json")
    if summary is None:
        return None
    classes = list(summary["classes"])
    counts = []
    for name, part in summary["splits"].items():
        counts.append([name, part["groups"], *(part["labels"].get(c, 0) for c in classes), part["images"]])
    totals = [sum(part["labels"].get(c, 0) for part in summary["splits"].values()) for c in classes]
    counts.append(["all", sum(p["groups"] for p in summary["splits"].values()), *totals, summary["images"]])
    meta = run.csv("prepared", "metadata.csv")
    settings = summary.get("settings", {})
    return {
        "source": _source_name(summary, meta),
        "images": summary["images"],
        "classes": classes,
        "counts": table(["split", "groups", *classes, "images"], counts),
        "grouping": summary["grouping"],
        "guarantee": grouping_guarantee(summary["grouping"]) + (
            " Images with the same content under different ids were found by image similarity and kept in one split."
            if settings.get("group_duplicates") else ""),
        "split_seed": settings.get("split", {}).get("seed"),
        "skipped": table(["reason", "images"], summary.get("skipped_by_reason", {}).items()),
        "skipped_count": summary.get("skipped_count", 0),
        "duplicates": table(["image", "same content as", "similarity"],
                            [(d["image_id_1"], d["image_id_2"], fmt(d.get("similarity"), 3))
                             for d in summary.get("content_duplicates", [])]),
        "missing": table(["field", "missing"], summary.get("missing_values", {}).items()),
        "figure": figure(figures.metadata_figure(meta, classes) if meta is not None and len(meta) else None,
                         "Metadata distributions of the prepared images, stacked by class.",
                         "age histogram, sex and anatomic site counts"),
    }


def grouping_guarantee(grouping: str) -> str:
    level = grouping.split(" (")[0]
    if level == "patient":
        return "No patient has images in two splits: the test set is patient-disjoint from training."
    if level.startswith("lesion"):
        return ("No lesion has images in two splits. There are no patient ids, so a patient with several lesions "
                "may still appear in both training and test.")
    if level.startswith("patient, else"):
        return ("Images are grouped by patient where a patient id exists, else by lesion, else by image: only the "
                "rows with a patient id are guaranteed patient-disjoint.")
    return ("Each image is its own group: without patient or lesion ids, the same patient or lesion may appear in "
            "training and test.")


def preprocessing_section(run: RunFolder, count: int = 6) -> Section | None:
    pre, meta = run.csv("prepared", "preprocess.csv"), run.csv("prepared", "metadata.csv")
    summary = run.json("prepared", "prepare.json")
    if pre is None or meta is None or summary is None or pre.empty:
        return None
    table_ = pre.merge(meta[["image_id", "path", "label"]], on="image_id")
    settings = summary.get("settings", {}).get("preprocess", {})
    picked = pick_examples(table_, count)
    examples = [e for e in (_example(run, row) for row in picked) if e is not None]
    centered = pre["centered"].astype(str).str.lower() == "true"
    return {
        "settings": table(["setting", "value"], [(k, v) for k, v in settings.items()
                                                if k in ("image_size", "vignette", "center", "margin",
                                                         "hair_removal", "color_constancy")]),
        "centered_rate": pct(centered.mean()),
        "lesion_fraction_median": pct(pd.to_numeric(pre["lesion_fraction"], errors="coerce").median()),
        "figure": figure(figures.preprocessing_figure(examples) if examples else None,
                         "Before and after: the original image with the crop box (cyan), then the processed image.",
                         "original images with crop boxes beside the processed images"),
        "missing_originals": not examples,
    }


def pick_examples(frame: pd.DataFrame, count: int) -> list[pd.Series]:
    """Up to ``count`` rows whose original is on disk, deterministically: the one hair removal changed most (from
    prepare's ``hair_fraction``, when it removed hair), an uncentred one (centre-crop fallback), then evenly spaced
    rows of each class in turn."""
    frame = frame[[Path(str(p)).is_file() for p in frame["source_path"]]].sort_values("image_id")
    if frame.empty:
        return []
    chosen: list[pd.Series] = []

    def add(row: pd.Series, tag: str | None = None) -> None:
        if len(chosen) < count and all(row["image_id"] != c["image_id"] for c in chosen):
            chosen.append(row.copy())
            chosen[-1]["tag"] = tag

    hair = pd.to_numeric(frame.get("hair_fraction", pd.Series(dtype=float)), errors="coerce")
    if hair.notna().any() and hair.max() > 0.01:
        add(frame.loc[hair.idxmax()], "hair removed")
    uncentred = frame[frame["centered"].astype(str).str.lower() != "true"]
    if len(uncentred):
        add(uncentred.iloc[0], "no lesion found: centre crop")
    spaced = [part.iloc[np.linspace(0, len(part) - 1, min(len(part), count)).astype(int)]
              for _, part in frame.groupby("label")]
    for i in range(count):
        for part in spaced:
            if i < len(part):
                add(part.iloc[i])
    return chosen


def _scaled_box(row: pd.Series, image) -> tuple[float, float, float, float]:
    """The crop box (in the decoded image's pixels, possibly a reduced-scale decode) in ``image``'s pixels."""
    sx, sy = image.width / float(row["decoded_width"]), image.height / float(row["decoded_height"])
    return row["box_x0"] * sx, row["box_y0"] * sy, row["box_x1"] * sx, row["box_y1"] * sy


def open_rgb(path: str | Path, side: int):
    """An image decoded near ``side`` px (long side) as a PIL RGB image, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced DCT scale
            rgb = image.convert("RGB")
    except (OSError, ValueError):
        return None
    rgb.thumbnail((side, side))
    return rgb


def _example(run: RunFolder, row: pd.Series) -> dict[str, Any] | None:
    processed = figures.load_thumb(run.path("prepared", row["path"]), TILE * 2)
    original = open_rgb(row["source_path"], 360)
    if original is None or processed is None:
        return None
    box = _scaled_box(row, original)
    tag = row.get("tag")
    title = f"{row['image_id']} ({row['label']})" + (f"\n{tag}" if isinstance(tag, str) else "")
    return {"original": np.asarray(original), "box": box, "processed": processed, "title": title}


def training_section(run: RunFolder) -> Section | None:
    info, log = run.json("model", MODEL_JSON), run.csv("model", "train_log.csv")
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
    grids = sorted(run.path("model", "samples").glob("step-*.png"))
    final = run.path("model", "samples", "final.png")
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
        grid = run.path("model", autoencoder.get("reconstructions_grid", "autoencoder/reconstructions.png"))
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


METHODS = {"dreambooth": "DreamBooth", "lora": "DreamBooth with LoRA", "captions": "caption fine-tuning"}


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
    steps = sorted(p for p in run.path("model", "validation").glob("step-*") if p.is_dir())
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
    folder = run.path("model") / named  # relative to the model folder (older models: an absolute path)
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


def _step_of(path: Path) -> str:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return str(int(digits)) if digits else path.stem


def generated_section(run: RunFolder, prompts_per_class: int = 2, columns: int = 10) -> Section | None:
    manifest, summary = run.csv("synthetic", "manifest.csv"), run.json("synthetic", "generate.json")
    if manifest is None and summary is None:
        return None
    summary = summary or {}
    settings = summary.get("settings", {})
    counts = [(label, n, summary.get("rejected", {}).get(label, 0)) for label, n in summary.get("counts", {}).items()]
    rows = _prompt_rows(run, manifest, prompts_per_class, columns) if manifest is not None else []
    return {
        "status": summary.get("status", "n/a"),
        "counts": table(["class", "accepted", "rejected by QC"], counts),
        "reasons": ", ".join(f"{n} {r}" for r, n in summary.get("rejected_by_reason", {}).items()) or "none",
        "settings": table(["setting", "value"], [(k, settings[k]) for k in ("scheduler", "steps", "guidance_scale",
                                                                           "seed") if k in settings]),
        "figure": figure(figures.labelled_grids(rows, columns) if rows else None,
                         "Generated images per class and prompt (the reference study's Figures 1–2).",
                         "grids of synthetic images per class and prompt"),
    }


def _prompt_rows(run: RunFolder, manifest: pd.DataFrame, per_class: int, columns: int
                 ) -> list[tuple[str, list[np.ndarray]]]:
    """One grid row per class and prompt; one row per class when its prompts are many (per-image captions)."""
    rows = []
    for label, part in manifest.groupby("label", sort=False):
        prompts = part["prompt"].fillna("").astype(str)
        if prompts.nunique() > per_class:
            groups = [(f"{label}: {prompts.nunique()} different prompts, e.g. “{_short(prompts.iloc[0])}”", part)]
        else:
            groups = [(f"{label}: “{_short(prompt)}” ({len(group)} images)", group)
                      for prompt, group in part.groupby(prompts, sort=False)]
        for title, group in groups:
            tiles = _tiles(run.path("synthetic"), group["path"].head(columns))
            if tiles:
                rows.append((title, tiles))
    return rows


def _short(text: Any, limit: int = 90) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _tiles(root: Path, paths: Iterable[Any]) -> list[np.ndarray]:
    tiles = (figures.load_thumb(p if Path(str(p)).is_absolute() else root / str(p), TILE) for p in paths)
    return [t for t in tiles if t is not None]


def comparison_section(run: RunFolder, per_side: int = 6) -> Section | None:
    meta, manifest = run.csv("prepared", "metadata.csv"), run.csv("synthetic", "manifest.csv")
    if meta is None or manifest is None:
        return None
    pairs = []
    for label in manifest["label"].drop_duplicates():
        real = meta[(meta["label"] == label) & (meta["split"] == "train")]
        real = real.sample(min(per_side, len(real)), random_state=0) if len(real) else real
        synthetic = manifest[manifest["label"] == label].head(per_side)
        pairs.append((str(label), _tiles(run.path("prepared"), real["path"]),
                      _tiles(run.path("synthetic"), synthetic["path"])))
    pairs = [p for p in pairs if p[1] or p[2]]
    return {"figure": figure(figures.side_by_side(pairs, per_side) if pairs else None,
                             "Real training images (left) beside synthetic images (right), per class "
                             "(the reference study's Figure 3).", "real and synthetic images side by side")}


# --------------------------------------------------------------------------- validation


def validation_runs(root: Path) -> list[dict[str, Any]]:
    """Every finished run (as validate reads them): its regime label, seed, metrics and per-epoch history."""
    from dermsynth.evaluate.runs import finished_runs

    runs = [{"folder": r.folder.parent.name, "regime": r.regime, "source": r.source, "seed": r.seed,
             "metrics": r.metrics, "history": r.history} for r in finished_runs(root)]
    many_sources = len({r["source"] for r in runs if r["source"]}) > 1
    for item in runs:
        item["label"] = item["regime"] + (f" @{item['source']}" if many_sources and item["source"] else "")
    return runs


def validation_section(run: RunFolder) -> Section | None:
    root = run.path("validation")
    summary, info = run.json("validation", "summary.json"), run.json("validation", "validate.json")
    runs = validation_runs(root) if root.is_dir() else []
    if summary is None and not runs:
        return None
    confidence = float((summary or {}).get("confidence", 0.95))
    results = results_table(summary) if summary else None
    n_classes = len((info or {}).get("classes") or ["", ""])
    diff_table, verdicts = paired_differences(summary, n_classes) if summary else (None, [])
    return {
        "level": f"{confidence * 100:.0f} %",
        "bootstrap": (summary or {}).get("bootstrap"),
        "facts": table(["", ""], _validation_facts(info, runs)),
        "results": results,
        "differences": diff_table,
        "verdicts": verdicts,
        "headline": headline(verdicts),
        "subgroups": subgroup_table(summary) if summary else None,
        "external": external_sections(summary, n_classes) if summary else [],
        "too_small": too_small_groups(summary) if summary else "",
        "curves": _curves_figure(runs),
        "reference": REFERENCE_STUDY,
        "unfinished": summary is None,
    }


def _validation_facts(info: dict | None, runs: list[dict]) -> list[tuple[str, Any]]:
    info = info or {}
    config = info.get("config", {})
    settings = runs[0]["metrics"].get("settings", {}) if runs else {}
    test_counts = info.get("counts", {}).get("test", {})
    facts = [("classifier", config.get("model", "n/a")), ("input size", info.get("image_size", "n/a")),
             ("epochs (max)", settings.get("epochs", "n/a")),
             ("learning rate", settings.get("learning_rate", settings.get("lr", "n/a"))),  # lr: older runs
             ("batch size", settings.get("batch_size", "n/a")),
             ("seeds", ", ".join(str(s) for s in sorted({r['seed'] for r in runs})) or "n/a"),
             ("regimes", ", ".join(dict.fromkeys(r["label"] for r in runs)) or "n/a"),
             ("test images (real)", ", ".join(f"{k} {v}" for k, v in test_counts.items()) or "n/a"),
             ("accuracy of always predicting the majority class", majority(test_counts)),
             ("checkpoint selection", "best epoch on the real validation split; the test split is used once"),
             ("device", info.get("device", "n/a"))]
    return facts


def _curves_figure(runs: list[dict[str, Any]]) -> dict[str, str] | None:
    frames: dict[str, list[pd.DataFrame]] = {}
    for item in runs:
        if item["history"] is not None and len(item["history"]):
            frames.setdefault(item["label"], []).append(item["history"].assign(seed=item["seed"]))
    if not frames:
        return None
    order = sorted(frames, key=lambda label: label != "real")  # the baseline first, then as the runs appear
    curves = {label: pd.concat(frames[label], ignore_index=True) for label in order}
    every = pd.concat(curves.values(), ignore_index=True)
    panels = [(c, t) for c, t in (("test_accuracy", "test accuracy"), ("test_auroc", "test AUROC"))
              if c in every and every[c].notna().any()]
    note = "Test metrics per epoch are recorded for this plot only; checkpoints are chosen on the validation split."
    if not panels:
        panels = [(c, t) for c, t in (("val_accuracy", "validation accuracy"), ("val_auroc", "validation AUROC"))
                  if c in every and every[c].notna().any()]
        note = "Per-epoch test metrics were not recorded (track_test off): validation metrics are shown instead."
    if not panels:
        return None
    return figure(figures.metric_curves(curves, panels),
                  f"Mean over seeds per epoch, band ± 1 sd (the reference study's Figure 4). {note}",
                  "test accuracy per epoch for each regime")


# --------------------------------------------------------------------------- audit


FIDELITY_ROWS = (("fid", "FID ↓", 2), ("kid_mean", "KID ↓", 3), ("precision", "precision ↑", 3),
                 ("recall", "recall ↑", 3), ("density", "density ↑", 3), ("coverage", "coverage ↑", 3))


def audit_section(run: RunFolder) -> Section | None:
    report = run.json("audit", "audit.json")
    if report is None:
        return None
    fidelity, memo = report.get("fidelity", {}), report.get("memorization", {})
    overall = fidelity.get("overall", {})
    syn, ref = overall.get("synthetic_vs_train", {}), overall.get("real_test_vs_train", {})
    rows = [(label, _metric(syn, key, digits), _metric(ref, key, digits)) for key, label, digits in FIDELITY_ROWS]
    if "n_fake" in syn:  # sample sizes: FID and KID are biased by them, so both columns use the same number
        rows.insert(0, ("images compared (train vs other)", f"{syn.get('n_real')} vs {syn.get('n_fake')}",
                        f"{ref.get('n_real')} vs {ref.get('n_fake')}"))
    per_class = []
    for name, pair in (fidelity.get("per_class") or {}).items():
        if pair:
            s, r = pair["synthetic_vs_train"], pair["real_test_vs_train"]
            per_class.append((name, fmt(s.get("fid"), 2), fmt(r.get("fid"), 2), fmt(s.get("precision")),
                              fmt(r.get("precision")), fmt(s.get("recall")), fmt(r.get("recall"))))
        else:
            per_class.append((name, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"))
    return {
        "feature_space": {"name": report.get("feature_space", {}).get("name", "not recorded"),
                          "description": report.get("feature_space", {}).get("description", "")},
        "counts": report.get("counts", {}),
        "fidelity": table(["metric", "synthetic vs real train", "real test vs real train (reference)"], rows),
        "fid_ratio": fmt(overall.get("fid_ratio"), 2),
        "resolution": _fidelity_resolution(fidelity, report.get("image_size")),
        "per_class": table(["class", "FID synthetic", "FID real test", "precision synthetic", "precision real test",
                            "recall synthetic", "recall real test"], per_class),
        "diversity": table(["class", "synthetic mean pairwise cosine", "real train mean pairwise cosine"],
                           [(k, fmt(v.get("synthetic_mean_pairwise_cosine")), fmt(v.get("real_train_mean_pairwise_"
                                                                                         "cosine")))
                            for k, v in (report.get("diversity") or {}).items()]),
        **_differences(report),
        "memorization": _memorization(run, memo, report.get("counts", {}).get("synthetic")),
        "notes": report.get("notes", []),
        "partial": report.get("partial", False),
        "pairs": figure(figures.embed_png_file(run.path("audit", "top_pairs.png")),
                        "The synthetic images closest to a training image, each above its nearest training image.",
                        "closest synthetic and training image pairs"),
        "histogram": figure(figures.embed_png_file(run.path("audit", "similarity.png")),
                            "Similarity to the nearest training image: synthetic vs held-out real images.",
                            "similarity histograms"),
    }


def _fidelity_resolution(fidelity: dict[str, Any], audit_size: int | None) -> str:
    """Where fidelity was measured, and the FID ratio at the audit size when it was matched to a smaller generator."""
    size = fidelity.get("resolution", audit_size)
    at_audit = fidelity.get("at_audit_size")
    if not at_audit:
        return f"Images compared at {size} px." if size else ""
    ratio = fmt((at_audit.get("overall") or {}).get("fid_ratio"), 2)
    return (f"The synthetic images are {size} px, so the real images were brought to {size} px and back to "
            f"{at_audit.get('resolution')} px before their features, as the synthetic ones are: the figures judge "
            f"what the generator draws at its own size. Compared at {at_audit.get('resolution')} px as they are, "
            f"the FID ratio is {ratio}: the resolution itself counts against the generator there.")


def _differences(report: dict[str, Any]) -> dict[str, Any]:
    """C2ST per class beside its real-vs-real reference, and the ranked domain-gap statistics in words."""
    c2st, gap = report.get("c2st") or {}, report.get("domain_gap") or {}

    def auroc(result: dict[str, Any] | None) -> str:
        if not result or not finite(result.get("auroc")):
            return "n/a (too few images)"
        return f"{result['auroc']:.3f} [{fmt(result.get('ci_low'))}, {fmt(result.get('ci_high'))}] (n = " \
               f"{result.get('n_per_set')} per set)"

    c2st_rows = [(name, auroc(entry.get("synthetic_vs_real")), auroc(entry.get("real_held_out_vs_real")))
                 for name, entry in (c2st.get("per_class") or {}).items()]
    gap_tables = []
    for name, entry in (gap.get("per_class") or {}).items():
        rows = [(r["statistic"], fmt(r.get("real_mean")), fmt(r.get("synthetic_mean")), fmt(r.get("std_diff"), 2),
                 fmt(r.get("ks"), 2), "yes" if r["statistic"] in entry.get("material", []) else "")
                for r in entry.get("rows", [])[:8]]
        gap_tables.append({"name": name, "summary": entry.get("summary", ""),
                           "table": table(["statistic", "real", "synthetic", "std. difference", "KS", "material"],
                                          rows)})
    return {
        "c2st": table(["class", "C2ST AUROC synthetic vs real train", "real held-out vs real train (reference)"],
                      c2st_rows) if c2st_rows else None,
        "c2st_method": c2st.get("method", ""), "compare_size": c2st.get("image_size") or gap.get("image_size"),
        "domain_gap": gap_tables, "domain_gap_method": gap.get("method", ""),
    }


def _metric(values: dict[str, Any], key: str, digits: int) -> str:
    if key != "kid_mean":
        return fmt(values.get(key), digits)
    # KID spans orders of magnitude (1e-3 for close sets, 1e3 for noise): significant digits, not decimals
    mean, sd = values.get("kid_mean"), values.get("kid_sd")
    text = f"{mean:.3g}" if finite(mean) else "n/a"
    return text + (f" ± {sd:.2g}" if finite(mean) and finite(sd) else "")


def _memorization(run: RunFolder, memo: dict[str, Any], total: int | None) -> dict[str, Any]:
    thresholds, controls = memo.get("thresholds", {}), memo.get("positive_controls", {})
    flagged = run.csv("audit", "flagged.csv")
    flagged_rows = [] if flagged is None else [
        (r.get("image_id", ""), r.get("label", ""), r.get("nearest_pixel_train_id", ""),
         fmt(r.get("pixel_similarity"), 3)) for r in flagged.sort_values("pixel_similarity", ascending=False)
        .head(10).to_dict("records")]
    detection = controls.get("overall")
    return {
        "flagged": memo.get("synthetic_flagged", "n/a"), "total": total if total is not None else "n/a",
        "rate": pct(memo.get("synthetic_flagged_rate")),
        "held_out_rate": pct(memo.get("held_out_real_flagged_rate")),
        "thresholds": table(["", ""], [("pixel similarity", fmt(thresholds.get("pixel"))),
                                       ("feature cosine (for review)", fmt(thresholds.get("feature"))),
                                       ("quantile of held-out real similarity", thresholds.get("quantile", "n/a")),
                                       ("calibrated on", thresholds.get("calibrated_on", "n/a"))]),
        "controls": table(["light copy of a training image", "detected"],
                          [(k, pct(v, 0)) for k, v in controls.get("flagged_rate", {}).items()]),
        "detection": pct(detection, 0),
        "weak_detector": finite(detection) and detection < 0.9,
        "control_images": controls.get("images", "n/a"),
        "flagged_table": table(["synthetic image", "class", "nearest training image", "pixel similarity"],
                               flagged_rows),
        "method": memo.get("method", ""),
    }


# --------------------------------------------------------------------------- provenance


def provenance_section(run: RunFolder) -> Section:
    prepare, model = run.json("prepared", "prepare.json"), run.json("model", "dermsynth_model.json")
    generate, validate = run.json("synthetic", "generate.json"), run.json("validation", "validate.json")
    audit, manifest = run.json("audit", "audit.json"), run.csv("synthetic", "manifest.csv")
    seeds = []
    if prepare:
        seeds.append(("split (prepare)", prepare.get("settings", {}).get("split", {}).get("seed", "n/a")))
    if model:
        seeds.append(("diffusion training", model.get("config", {}).get("seed", "n/a")))
    if generate:
        seeds.append(("generation base seed", generate.get("settings", {}).get("seed", "n/a")))
        seeds.append(("generation rule", generate.get("seed_rule", "n/a")))
    if audit:
        seeds.append(("audit", audit.get("settings", {}).get("seed", "n/a")))
    if validate:
        config = validate.get("config", {})
        first, count = config.get("first_seed", 0), config.get("seeds", 0)
        seeds.append(("classifier runs", ", ".join(str(s) for s in range(first, first + count)) or "n/a"))
    hashes = []
    if model and model.get("base"):
        hashes.append(("base model", model["base"]))
        hashes.append(("base model weights (sha256)", model.get("base_sha256") or "n/a (hub id: see its revision)"))
    if model:
        hashes.append(("diffusion model weights (sha256)", model.get("weights_sha256", "n/a")))
        hashes.append(("the same command gives these weights bit for bit", _reproducible(model.get("reproducible"))))
    if manifest is not None and "model_sha256" in manifest:
        used = sorted(manifest["model_sha256"].dropna().astype(str).unique())
        hashes.append(("model that made the synthetic images", ", ".join(used) or "n/a"))
        if model and used:
            same = used == [model.get("weights_sha256")]
            hashes.append(("synthetic images made by this run's model", "yes" if same else "no"))
    versions = run.json("versions.json") or {}
    return {
        "data": _data_provenance(prepare, run.csv("prepared", "metadata.csv")) if prepare else None,
        "seeds": table(["what", "seed"], seeds),
        "hashes": table(["", ""], hashes),
        "versions": table(["package", "version"], [(k, v if v is not None else "not installed")
                                                   for k, v in versions.items()]),
        "config": run.text("config.resolved.yaml"),
    }


def _reproducible(record: dict[str, Any] | None) -> str:
    if not record:
        return "not recorded (a model from an older version)"
    return "yes (fixed threads, a step budget)" if record["bitwise"] else "no: " + "; ".join(record["reasons"])


def _source_name(summary: dict[str, Any], meta: pd.DataFrame | None) -> str:
    dataset = summary.get("settings", {}).get("dataset", "unknown")
    sources = sorted(meta["source"].dropna().astype(str).unique()) if meta is not None and "source" in meta else []
    return f"{dataset}" + (f" ({', '.join(sources)})" if sources else "")


def _reader_licence(dataset: str) -> str:
    """For prepared folders whose prepare.json predates the licence note: the reader's registered licence."""
    reader = READERS.find(dataset)
    return reader.licence if reader is not None else "unknown: check the dataset's terms"


def _data_provenance(prepare: dict[str, Any], meta: pd.DataFrame | None) -> dict[str, str]:
    dataset = prepare.get("settings", {}).get("dataset", "unknown")
    notes = prepare.get("notes", {})
    return {"source": _source_name(prepare, meta),
            "licence": notes.get("licence") or _reader_licence(dataset),
            "root": str(prepare.get("settings", {}).get("root") or "(embedded)"),
            "version": prepare.get("dermsynth_version", "n/a")}


# --------------------------------------------------------------------------- rendering


def _yaml(text: str | None) -> dict[str, Any] | None:
    import yaml

    if not text:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def gather(run_dir: str | Path) -> dict[str, Any]:
    """The template context of every section; raises DermsynthError when there is nothing to report."""
    root = Path(run_dir)
    if not root.exists():
        raise DermsynthError(f"run folder not found: {root}")
    if not root.is_dir():
        raise DermsynthError(f"not a folder: {root} (give the run folder that holds prepared/, model/, ...)")
    run = RunFolder(root)
    if not any(run.stage_ran(stage) for stage in STAGES):
        folders = ", ".join(f"{f}/" for f, _ in STAGES.values())
        raise DermsynthError(f"{root}: no stage output found (expected one of {folders})")
    sections = {
        "overview": (overview_section, None),
        "dataset": (dataset_section, "prepare"),
        "preprocessing": (preprocessing_section, "prepare"),
        "training": (training_section, "train"),
        "generated": (generated_section, "generate"),
        "comparison": (comparison_section, "generate"),
        "validation": (validation_section, "validate"),
        "audit": (audit_section, "audit"),
        "reader_study": (reader_section, "reader_study"),
        "provenance": (provenance_section, None),
    }
    return {name: _section(run, build, stage) for name, (build, stage) in sections.items()}


def _section(run: RunFolder, build, stage: str | None) -> Section | None:
    """One section; a stage output that lacks a field the report needs (hand-edited, or cut short) is named in one
    line rather than a traceback."""
    try:
        return build(run)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        where = f"{run.root / STAGES[stage][0]}/" if stage else str(run.root)
        raise DermsynthError(f"{where} holds a damaged or hand-edited file ({type(exc).__name__}: "
                             f"{str(exc)[:80]}); re-run {'that stage' if stage is None else repr(stage)} "
                             "into a clean folder, then 'dermsynth report' again") from None


def render_html(context: dict[str, Any]) -> str:
    import jinja2

    loader = jinja2.FunctionLoader(lambda name: (resources.files("dermsynth.report") / "templates" / name)
                                   .read_text(encoding="utf-8"))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``RUN/report.html`` (self-contained) and ``RUN/summary.md``; return their paths."""
    from dermsynth.report.markdown import summary_markdown

    context = gather(run_dir)
    root = Path(run_dir)
    html_path, md_path = root / "report.html", root / "summary.md"
    write_text_atomic(html_path, render_html(context))
    write_text_atomic(md_path, summary_markdown(context))
    _readable(html_path, md_path)
    return html_path, md_path


def _readable(*paths: Path) -> None:
    """The atomic writer's temporary files are private (0600); a report is meant to be shared: use the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        path.chmod(0o666 & ~umask)
