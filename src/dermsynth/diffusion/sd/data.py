"""Training examples for Stable Diffusion fine-tuning: (image path, prompt, label) triples, and their batches.

DreamBooth instance/class images come from folders or from the prepared train split (by label or diagnosis);
caption fine-tuning uses each prepared image's own ``prompt``. Batches follow a seeded order that depends only on
the micro-batch number, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dermsynth.data.dataset import PreparedDataset
from dermsynth.data.images import list_images
from dermsynth.diffusion.sd.config import FinetuneConfig
from dermsynth.errors import DermsynthError


@dataclass(frozen=True)
class Example:
    path: Path
    prompt: str
    label: str


def prompt_defaults(dataset: PreparedDataset | None) -> dict[str, str]:
    """The instance/class prompts recorded by `prepare` (settings.prompt), else prepare's defaults."""
    from dermsynth.data.config import PromptConfig

    defaults = PromptConfig()
    recorded = dataset.summary.get("settings", {}).get("prompt", {}) if dataset is not None else {}
    return {k: recorded.get(k) or getattr(defaults, k) for k in ("instance_prompt", "class_prompt")}


def _train_rows(dataset: PreparedDataset, labels: list[str] | None, diagnoses: list[str] | None) -> pd.DataFrame:
    frame = dataset.split("train")
    if labels:
        unknown = sorted(set(labels) - set(dataset.classes))
        if unknown:
            raise DermsynthError(f"unknown label(s) {', '.join(unknown)}; "
                                 f"{dataset.root} has {', '.join(dataset.classes)}")
        frame = frame[frame["label"].isin(labels)]
    if diagnoses:
        frame = frame[frame["diagnosis"].astype(str).str.lower().isin([d.lower() for d in diagnoses])]
    return frame


def _folder_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DermsynthError(f"{what} folder not found: {folder}")
    return list_images(folder)


def instance_examples(cfg: FinetuneConfig, dataset: PreparedDataset | None, prompt: str) -> list[Example]:
    if cfg.instance_prompts:
        return subject_examples(cfg, dataset)
    if cfg.instance_dir is not None:
        paths = _folder_images(cfg.instance_dir, "instance image")
        label = cfg.instance_labels[0] if cfg.instance_labels else "instance"
        examples = [Example(p, prompt, label) for p in paths]
        where = str(cfg.instance_dir)
    else:
        if dataset is None:
            raise DermsynthError("DreamBooth needs instance_dir or a prepared dataset (--data) to choose from")
        labels = cfg.instance_labels
        if not labels and not cfg.instance_diagnoses:
            counts = dataset.split("train")["label"].value_counts()
            labels = [str(counts.idxmin())] if len(counts) else []
        frame = _train_rows(dataset, labels, cfg.instance_diagnoses)
        examples = [Example(dataset.root / row.path, prompt, str(row.label)) for row in frame.itertuples()]
        where = f"{dataset.root} (train split, labels {labels or 'any'}, diagnoses {cfg.instance_diagnoses or 'any'})"
    if not examples:
        raise DermsynthError(f"no instance images in {where}")
    return examples[: cfg.max_instance_images] if cfg.max_instance_images else examples


def subject_examples(cfg: FinetuneConfig, dataset: PreparedDataset | None) -> list[Example]:
    """Multi-subject DreamBooth: per label of ``instance_prompts``, its first max_instance_images training images
    under its own prompt."""
    if dataset is None:
        raise DermsynthError("instance_prompts chooses instance images from a prepared dataset (--data)")
    examples = []
    for label, prompt in cfg.instance_prompts.items():
        frame = _train_rows(dataset, [label], None)
        if frame.empty:
            raise DermsynthError(f"instance_prompts: no training images of {label!r} in {dataset.root}")
        rows = frame.head(cfg.max_instance_images) if cfg.max_instance_images else frame
        examples += [Example(dataset.root / row.path, prompt, label) for row in rows.itertuples()]
    return examples


def real_class_examples(cfg: FinetuneConfig, dataset: PreparedDataset | None, prompt: str) -> list[Example]:
    """Class images that exist already (folder and/or prepared rows), before any are generated."""
    examples: list[Example] = []
    if cfg.class_dir is not None and cfg.class_dir.is_dir():
        examples += [Example(p, prompt, "class") for p in list_images(cfg.class_dir)]
    if (cfg.class_labels or cfg.class_diagnoses) and dataset is not None:
        frame = _train_rows(dataset, cfg.class_labels, cfg.class_diagnoses)
        examples += [Example(dataset.root / row.path, prompt, "class") for row in frame.itertuples()]
    return examples


def caption_examples(cfg: FinetuneConfig, dataset: PreparedDataset | None) -> list[Example]:
    if dataset is None:
        raise DermsynthError("caption fine-tuning needs a prepared dataset (--data)")
    frame = _train_rows(dataset, cfg.caption_labels, None)
    if frame.empty:
        raise DermsynthError(f"{dataset.root}: no training images for caption fine-tuning")
    prompts = frame["prompt"].fillna("").astype(str).str.strip()
    if (prompts == "").any():
        raise DermsynthError(f"{dataset.root}: {int((prompts == '').sum())} training image(s) have an empty prompt; "
                             "re-run 'dermsynth prepare'")
    return [Example(dataset.root / path, prompt, str(label))
            for path, prompt, label in zip(frame["path"], prompts, frame["label"], strict=True)]


def most_common_prompts(examples: list[Example]) -> dict[str, str]:
    """Per label, its most frequent caption (ties: the shortest, then alphabetical) - a default generation prompt."""
    by_label: dict[str, Counter[str]] = {}
    for example in examples:
        by_label.setdefault(example.label, Counter())[example.prompt] += 1
    return {label: min(counts, key=lambda p: (-counts[p], len(p), p)) for label, counts in by_label.items()}


class BatchOrder:
    """Micro-batch ``k`` of process ``rank`` -> indices: a fresh seeded permutation per epoch, last partial batch
    dropped (at least one batch per epoch even when there are fewer images than the batch size)."""

    def __init__(self, size: int, batch: int, seed: int, processes: int = 1, rank: int = 0):
        self.size, self.batch, self.seed = size, min(batch, size), seed
        self.processes, self.rank = processes, rank
        self.per_epoch = max(1, size // self.batch)

    def indices(self, micro_step: int) -> list[int]:
        k = micro_step * self.processes + self.rank
        epoch, position = divmod(k, self.per_epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
        return order[position * self.batch:(position + 1) * self.batch].tolist()


def to_pixels(images: list[np.ndarray], flips: torch.Tensor | None) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float (N, 3, H, W) in [-1, 1], with per-image flips (N, 2 booleans) if given."""
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if flips is not None:
        pixels = torch.where(flips[:, 0, None, None, None], pixels.flip(3), pixels)
        pixels = torch.where(flips[:, 1, None, None, None], pixels.flip(2), pixels)
    return pixels
