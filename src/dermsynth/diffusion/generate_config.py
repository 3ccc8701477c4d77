"""Settings of the generate stage (pydantic, no torch import): one model for the CLI, the Python API and
`dermsynth run`, so that every default is written once."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from dermsynth.config import StrictModel

# What a model folder that records no sampling defaults is sampled with.
FALLBACK_SAMPLING = {"scheduler": "dpm++", "steps": 20, "guidance_scale": 1.0}


class GenerateConfig(StrictModel):
    per_class: int | None = Field(None, ge=1, description="Images per class (give this or balance).")
    balance: Path | None = Field(
        None, description="A prepared dataset: fill each class of its train split up to the largest class.")
    classes: list[str] | None = Field(None, min_length=1, description="A subset of the model's classes.")
    seed: int = Field(0, description="Base seed; image i of class c gets seed + 1000000 * c + i.")
    steps: int | None = Field(None, ge=1, le=1000, description="Sampling steps (default: the model's).")
    scheduler: str | None = Field(
        None, description="ddim, ddpm, dpm++, dpm++-sde, unipc, euler, euler-a (default: the model's).")
    guidance: float | dict[str, float] | None = Field(
        None, description="Classifier-free guidance: one value, or one per class ({benign: 2, malignant: 1.5}, as "
        "`dermsynth tune-guidance` picks them; classes left out take the model's) (default: the model's).")
    batch_size: int | None = Field(
        None, ge=1, description="Images per sampling batch (default: the model family's; see `ImageGenerator`).")
    device: str = Field("auto", description="auto, cpu, cuda, mps.")
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads for torch; null = torch's default, or under a launcher the "
        "cores split between the processes on the machine.")
    prompts: dict[str, str] | None = Field(
        None, description="CLASS: PROMPT for text-to-image models (default: the model's).")
    negative_prompt: str | None = Field(None, description="Negative prompt (default: the model's).")
    prompts_from: Path | None = Field(
        None, description="A prepared dataset: each image takes the next metadata prompt of its class (train split).")
    init_images: Path | None = Field(
        None, description="Image-to-image: a prepared dataset or a folder of class folders to start from.")
    strength: float = Field(0.6, gt=0, le=1, allow_inf_nan=False, description="Image-to-image noise strength.")
    mask_from: str | None = Field(
        None, description="Inpainting with init_images: 'lesion' (segmented) or a folder of masks named like the "
                          "images.")

    @field_validator("guidance")
    @classmethod
    def _finite_and_not_negative(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        values = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(not 0 <= v < float("inf") for v in values):
            raise ValueError("takes finite numbers of 0 or more (2, or benign=2,malignant=1.5)")
        return value


def parse_guidance(text: str | None) -> float | dict[str, float] | None:
    """``--guidance``: "2" or "benign=2,malignant=1.5"."""
    if text is None:
        return None
    if "=" not in text:
        return float(text)
    pairs = [part.partition("=") for part in text.split(",") if part.strip()]
    return {label.strip(): float(value) for label, _, value in pairs}
