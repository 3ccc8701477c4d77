"""Model folders by family: what `generate` needs from any model, whichever way it was made.

A model folder holds ``dermsynth_model.json`` whose ``family`` names the adapter that loads it: a class with
``from_folder(folder, info, device)`` returning an :class:`ImageGenerator`, registered with
:func:`register_family`. Adapters named as "module:Class" are imported only when used, so a family's heavy
dependencies cost nothing to the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError
from dermsynth.registry import Registry
from dermsynth.utils import read_json

MODEL_JSON = "dermsynth_model.json"


class ImageGenerator(Protocol):
    """A loaded model, ready to turn (class, seed) pairs into images: everything `generate` uses.

    :class:`GeneratorBase` supplies the text-to-image members for a family without prompts.
    """

    family: str
    classes: list[str]
    sha256: str
    # Of sampling, "fp32", "bf16" or "fp16": it changes pixels slightly, so it is recorded and a resumed folder
    # must keep it.
    precision: str
    defaults: dict[str, Any]  # scheduler, steps, guidance_scale
    batch_size: int  # images per sampling batch unless `generate` is given one (memory, not results)
    # Text-to-image: takes per-class prompts, a negative prompt, metadata prompts and init images (the four
    # attributes below); `generate` refuses those options for a family without.
    takes_prompts: bool
    prompts: dict[str, str]  # per class
    negative_prompts: dict[str, str]  # per class
    item_prompts: dict[str, list[str]]  # per class, taken in turn by image index (e.g. from metadata)
    source: Any  # image-to-image / inpainting start images (sd.generate.ImageSource), or None
    conditioning: Conditioning  # what the class embedding means: labels, or diagnoses drawn per label

    def prompt(self, label: str) -> str: ...

    def prompt_for(self, label: str, index: int) -> str:
        """The prompt of image ``index`` of class ``label``, recorded in the manifest."""
        ...

    def negative_prompt(self, label: str) -> str: ...

    def diagnosis_for(self, label: str, seed: int) -> str:
        """The diagnosis image ``seed`` of ``label`` is conditioned on ("" unless the model conditions on them)."""
        ...

    def use_prompts(self, prompts: dict[str, str]) -> None:
        """Per-class prompts in place of the model's own (for the classes given)."""
        ...

    def use_negative_prompt(self, text: str) -> None: ...

    def use_start_images(self, init_images: str | Path, strength: float, mask_from: str | None) -> None:
        """Image-to-image / inpainting from ``init_images`` (a prepared dataset or class folders)."""
        ...

    def use_item_prompts(self, prepared: str | Path) -> None:
        """Take each image's prompt in turn from a prepared dataset's metadata prompts."""
        ...

    def __call__(self, labels: list[str], seeds: list[int], *, steps: int, scheduler: str,
                 guidance_scale: float, indices: list[int] | None = None) -> np.ndarray:
        """Float images (N, H, W, 3), nominally in [0, 1], unclipped (NaN and overflow are left for QC).
        ``indices`` are the images' indices within their class (image-to-image picks start images by them)."""
        ...


DIAGNOSIS_DRAW_SEED = 0xD1A6  # mixed into an image's seed for its diagnosis draw


@dataclass(frozen=True)
class Conditioning:
    """What a model's class embedding means. "label": the classes themselves. "diagnosis": one embedding per
    diagnosis (``classes``), each belonging to one label (``label_of``); an image of a label gets a diagnosis of that
    label drawn by its seed in the real training proportions (``counts``), so HAM10000's "malignant" is melanoma,
    basal cell carcinoma or actinic keratosis, each drawn as often as the training sample holds it."""

    scheme: str = "label"
    classes: tuple[str, ...] = ()
    label_of: dict[str, str] | None = None
    counts: dict[str, int] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Conditioning:
        if not record or record.get("scheme", "label") == "label":
            return cls()
        return cls("diagnosis", tuple(record["classes"]), dict(record["label_of"]), dict(record["counts"]))

    def diagnosis(self, label: str, seed: int) -> str:
        """The diagnosis of image ``seed`` of class ``label`` ("" under the label scheme)."""
        if self.scheme == "label":
            return ""
        choices = [d for d in self.classes if self.label_of[d] == label]
        weights = np.array([self.counts[d] for d in choices], dtype=np.float64)
        rng = np.random.default_rng([int(seed), DIAGNOSIS_DRAW_SEED])
        return str(rng.choice(choices, p=weights / weights.sum()))

    def targets(self, labels: list[str], seeds: list[int], classes: list[str]) -> list[int]:
        """The class embeddings to sample ``labels`` with: the label's index, or its drawn diagnosis's."""
        if self.scheme == "label":
            return [classes.index(label) for label in labels]
        return [self.classes.index(self.diagnosis(label, seed)) for label, seed in zip(labels, seeds, strict=True)]


class GeneratorBase:
    """The text-to-image members of :class:`ImageGenerator` with their defaults: no prompts of its own, no start
    images. A class-conditional family sets ``family`` and overrides ``prompt``; a text-to-image one sets
    ``takes_prompts`` and fills ``prompts``."""

    takes_prompts = False
    batch_size = 64  # small pixel models: large batches keep a CPU's matrix units busy
    conditioning = Conditioning()

    def __init__(self) -> None:
        self.prompts: dict[str, str] = {}
        self.negative_prompts: dict[str, str] = {}
        self.item_prompts: dict[str, list[str]] = {}
        self.source: Any = None

    def prompt(self, label: str) -> str:
        return self.prompts.get(label) or label

    def prompt_for(self, label: str, index: int) -> str:
        prompts = self.item_prompts.get(label)
        return prompts[index % len(prompts)] if prompts else self.prompt(label)

    def negative_prompt(self, label: str) -> str:
        return self.negative_prompts.get(label, "")

    def diagnosis_for(self, label: str, seed: int) -> str:
        """The diagnosis an image was conditioned on, for the manifest ("" when the model conditions on labels)."""
        return self.conditioning.diagnosis(label, seed)

    def use_prompts(self, prompts: dict[str, str]) -> None:
        self.prompts.update(prompts)

    def use_negative_prompt(self, text: str) -> None:
        self.negative_prompts = dict.fromkeys(self.classes, text)

    def use_start_images(self, init_images: str | Path, strength: float, mask_from: str | None) -> None:
        raise DermsynthError(f"model family {self.family!r} takes no init images (only text-to-image models, such "
                             "as Stable Diffusion, do)")

    def use_item_prompts(self, prepared: str | Path) -> None:
        raise DermsynthError(f"model family {self.family!r} takes no prompts (only text-to-image models, such as "
                             "Stable Diffusion, do)")


@dataclass(frozen=True)
class Family:
    """A registered model family: the adapter class, or "module:Class" to import it only when used; and, for a
    family whose model can pass real images through one of its stages (`dermsynth reconstruct`), that codec."""

    name: str
    loader: str | type
    codec: str | type | None = None

    def adapter(self) -> Any:
        return _load(self.loader)

    def codec_class(self) -> Any:
        return _load(self.codec) if self.codec is not None else None


def _load(target: str | type) -> Any:
    if not isinstance(target, str):
        return target
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


FAMILIES: Registry[Family] = Registry("model family")


def register_family(name: str, loader: str | type, codec: str | type | None = None) -> None:
    """Models whose ``dermsynth_model.json`` says ``"family": name`` load with ``loader.from_folder``; ``codec``
    (``codec(model_folder, device)``, called with uint8 images, their class indices and seeds) is what
    `dermsynth reconstruct --model` passes real images through."""
    FAMILIES.add(name, Family(name, loader, codec))


def get_family(name: str) -> Family:
    """The family registered as ``name``; an unknown name is a one-line error listing the known ones."""
    return FAMILIES.get(name)


register_family("scratch", "dermsynth.diffusion.scratch.sampling:ScratchGenerator")
register_family("latent", "dermsynth.diffusion.scratch.sampling:LatentGenerator",
                "dermsynth.diffusion.scratch.reconstruct:AutoencoderCodec")
register_family("cascade", "dermsynth.diffusion.cascade.sampling:CascadeGenerator",
                "dermsynth.diffusion.cascade.reconstruct:SuperResolutionCodec")
register_family("stable-diffusion", "dermsynth.diffusion.sd.generate:StableDiffusionGenerator")
register_family("stable-diffusion-lora", "dermsynth.diffusion.sd.generate:StableDiffusionGenerator")


def read_model_info(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DermsynthError(f"model folder not found: {folder} (run 'dermsynth train' or 'dermsynth finetune')")
    path = folder / MODEL_JSON
    if not path.is_file():
        raise DermsynthError(f"{folder} is not a finished dermsynth model (no {MODEL_JSON})")
    info = read_json(path, "train or fine-tune the model again")
    FAMILIES.get(info.get("family"), where=str(path))  # an unknown family: one line naming the known ones
    if not info.get("classes"):
        raise DermsynthError(f"{path}: no classes recorded")
    return info


def load_generator(folder: str | Path, info: dict[str, Any] | None = None, device: str = "auto") -> ImageGenerator:
    info = info if info is not None else read_model_info(folder)
    adapter = get_family(info["family"]).adapter()
    try:
        return adapter.from_folder(Path(folder), info, device)
    except UNREADABLE_ARTIFACT_ERRORS as exc:
        # Truncated or hand-edited weights or configs: name the folder and the cure, not a traceback.
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DermsynthError(f"{folder}: the model's weights or configs cannot be read ({detail}); retrain it, or "
                             "copy the model folder again") from None
