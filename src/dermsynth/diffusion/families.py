"""Model folders by family: what `generate` needs from any model, whichever way it was made.

A model folder holds ``dermsynth_model.json`` whose ``family`` names the adapter that loads it. Adapters are
imported only when used, so a family's heavy dependencies cost nothing to the others.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError

MODEL_JSON = "dermsynth_model.json"

# family -> "module:Class" of its adapter; the class offers ``from_folder(folder, info, device)``.
FAMILIES: dict[str, str] = {
    "scratch": "dermsynth.diffusion.sampling:ScratchGenerator",
    "stable-diffusion": "dermsynth.diffusion.sd_generate:StableDiffusionGenerator",
    "stable-diffusion-lora": "dermsynth.diffusion.sd_generate:StableDiffusionGenerator",
}


class ImageGenerator(Protocol):
    """A loaded model, ready to turn (class, seed) pairs into images."""

    family: str
    classes: list[str]
    sha256: str
    precision: str  # "fp32", "bf16" or "fp16": recorded with the images
    defaults: dict[str, Any]  # scheduler, steps, guidance_scale
    precision: str  # of sampling: it changes pixels slightly, so a resumed folder must keep it

    def prompt(self, label: str) -> str: ...

    def negative_prompt(self, label: str) -> str: ...

    def __call__(self, labels: list[str], seeds: list[int], *, steps: int, scheduler: str,
                 guidance_scale: float) -> np.ndarray:
        """Float images (N, H, W, 3), nominally in [0, 1], unclipped (NaN and overflow are left for QC)."""
        ...


def read_model_info(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DermsynthError(f"model folder not found: {folder} (run 'dermsynth train' or 'dermsynth finetune')")
    path = folder / MODEL_JSON
    if not path.is_file():
        raise DermsynthError(f"{folder} is not a finished dermsynth model (no {MODEL_JSON})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DermsynthError(f"{path}: not valid JSON") from None
    family = info.get("family")
    if family not in FAMILIES:
        raise DermsynthError(f"{path}: unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    if not info.get("classes"):
        raise DermsynthError(f"{path}: no classes recorded")
    return info


def load_generator(folder: str | Path, info: dict[str, Any] | None = None, device: str = "auto") -> ImageGenerator:
    info = info or read_model_info(folder)
    module_name, class_name = FAMILIES[info["family"]].split(":")
    adapter = getattr(importlib.import_module(module_name), class_name)
    try:
        return adapter.from_folder(Path(folder), info, device)
    except UNREADABLE_ARTIFACT_ERRORS as exc:
        # Truncated or hand-edited weights or configs: name the folder and the cure, not a traceback.
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DermsynthError(f"{folder}: the model's weights or configs cannot be read ({detail}); retrain it, or "
                             "copy the model folder again") from None
