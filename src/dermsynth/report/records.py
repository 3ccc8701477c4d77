"""Typed records of what the stages wrote, validated once when the report reads them: a field that is absent is
None (the section shows "n/a"), a field of the wrong type is a one-line error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from dermsynth.errors import DermsynthError


class ModelRecord(BaseModel):
    """``dermsynth_model.json``: a model trained from scratch (pixel, latent or cascade family) or a Stable Diffusion
    fine-tune. Keys a newer writer adds are kept (``extra``), so an older report reads a newer model."""

    model_config = ConfigDict(extra="allow")

    family: str = ""
    classes: list[str] = []
    preset: str | None = None
    image_size: int | None = None
    parameters: int | None = None
    trained_parameters: int | None = None
    data: dict[str, Any] = {}
    steps: int | None = None
    stopped_by: str | None = None
    seconds: float | None = None
    final_loss: float | None = None
    device: str | None = None
    autoencoder: dict[str, Any] | None = None
    base_model: dict[str, Any] | None = None  # cascade: the base pixel model's record
    super_resolution: dict[str, Any] | None = None  # cascade: the super-resolution stage's record
    config: dict[str, Any] | None = None
    method: str | None = None
    lora: dict[str, Any] | None = None
    dreambooth: dict[str, Any] | None = None
    base: str | None = None
    base_kind: str | None = None
    base_sha256: str | None = None
    weights_sha256: str | None = None
    precision: str | None = None
    ema: bool | None = None
    prompts: dict[str, str] | None = None
    learning_rate: float | None = None
    reproducible: dict[str, Any] | None = None

    @property
    def is_finetune(self) -> bool:
        return self.family.startswith("stable-diffusion")

    @classmethod
    def read(cls, data: dict[str, Any] | None, path: Path) -> ModelRecord | None:
        if data is None:
            return None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise DermsynthError(f"{path}: {where}: {error['msg']}; train the model again or restore the file"
                                 ) from None


def na(value: Any, suffix: str = "") -> str:
    """A recorded value as the report prints it: "n/a" where the record has none."""
    return "n/a" if value is None else f"{value}{suffix}"
