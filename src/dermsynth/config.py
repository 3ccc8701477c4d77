"""Configuration models, loaded from YAML and validated with pydantic.

Every field carries a description; unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from dermsynth.errors import DermsynthError
from dermsynth.progress import console
from dermsynth.registry import Registry, one_of

# Dataset readers by name. dermsynth.data.readers registers them (`import dermsynth` imports it); the registry
# lives here, below the data layer, so that PrepareConfig can check `dataset` against it.
READERS: Registry[Any] = Registry("dataset")
# One vocabulary in every stage: seed, device, threads, precision, max_steps, max_grad_norm, snr_gamma, learning_rate.
# precision: auto (the stage's measured choice for the device), no (fp32), bf16 or fp16 autocast; a stage that
# cannot run one of them leaves it out of its Literal.
Precision = Literal["auto", "no", "bf16", "fp16"]
# Old values of shared fields, read (with a notice) until the next release.
OLD_VALUES: dict[str, dict[str, str]] = {"precision": {"fp32": "no"}}

_quiet_renames: ContextVar[bool] = ContextVar("quiet_renames", default=False)


@contextlib.contextmanager
def quiet_renames() -> Iterator[None]:
    """Validate configs that dermsynth saved itself (checkpoints, model JSONs): old names pass without a notice."""
    token = _quiet_renames.set(True)
    try:
        yield
    finally:
        _quiet_renames.reset(token)


def deprecation_notice(old: str, new: str, what: str = "name") -> None:
    """One stderr line saying that ``old`` is read as ``new`` for one more release."""
    if not _quiet_renames.get():
        console.print(f"deprecated: {old} is now {new} (the old {what} is read until the next release)",
                      soft_wrap=True, markup=False, highlight=False)


def current_names(model: type[BaseModel], data: Any, nested: bool = True) -> Any:
    """``data`` with the old field names (``model._renamed``, nested models too) and old values (OLD_VALUES)
    replaced by the current ones, one notice each. A setting given under both names is left for validation to
    refuse. Callers that merge overrides into a user's YAML call this first, so that the override wins."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    data = dict(data)
    for old, new in getattr(model, "_renamed", {}).items():
        if old in data and new not in data:
            data[new] = data.pop(old)
            deprecation_notice(repr(old), repr(new))
    for name, values in OLD_VALUES.items():
        value = data.get(name)
        if name in fields and isinstance(value, str) and value in values:
            data[name] = values[value]
            deprecation_notice(f"{name} {value!r}", repr(values[value]), "value")
    for name, field in fields.items() if nested else ():
        inner, key = _model_in(field.annotation), field.alias or name
        if inner is not None and isinstance(data.get(key), dict):
            data[key] = current_names(inner, data[key])
    return data


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of a field typed ``Model`` or ``Model | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Renamed fields, {"old": "new"}: the old name is read, with a notice, until the next release.
    _renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _read_old_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in cls._renamed.items():
                if old in data and new in data:
                    raise PydanticCustomError(
                        "renamed_twice", "{old} is the old name of {new}: give only {new}", {"old": old, "new": new})
        return current_names(cls, data, nested=False)  # nested models read theirs when they are validated


class SplitConfig(StrictModel):
    val: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction of images for the validation split.")
    test: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction of images for the real, held-out test split.")
    seed: int = Field(0, description="Seed of the grouped, stratified split (same seed + data = same split).")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must be below 1 so that a training split remains")
        return self


class PreprocessConfig(StrictModel):
    image_size: int = Field(256, ge=16, le=4096, description="Side of the square output images, in pixels.")
    hair_removal: bool = Field(True, description="Remove hair (DullRazor-style black-hat + inpainting).")
    vignette: bool = Field(True, description="Keep the dark dermatoscope vignette/corners out of the crop.")
    center: bool = Field(True, description="Segment the lesion and crop a square around it; off = centre square crop.")
    margin: float = Field(0.25, ge=0.0, le=3.0, description="Context around the lesion, as a fraction of its size.")
    color_constancy: bool = Field(False, description="Shades-of-grey colour constancy (Minkowski p-norm).")
    color_constancy_power: float = Field(6.0, ge=1.0, le=20.0, description="p of the shades-of-grey norm.")
    draft_factor: float = Field(
        2.0, ge=1.0, le=8.0,
        description="Large JPEGs are decoded at reduced size, keeping the short side >= draft_factor * image_size.",
    )
    min_source_side: int = Field(
        32, ge=1, description="Source images whose short side is below this many pixels are skipped (counted as "
        "'too small'): a thumbnail or an icon is not a lesion image.")
    image_format: Literal["png", "jpg"] = Field("png", description="Format of the processed images (png is lossless).")
    segmentation_channel: Literal["blue", "grey", "lab_l", "lab_lb", "pca"] = Field(
        "blue",
        description="Colour channel thresholded to segment the lesion (blue measured best on HAM10000 masks).",
    )


class PromptConfig(StrictModel):
    template: str = Field(
        "dermoscopy image of a {lesion}[ on the {anatom_site}][ of a {age_approx} year old {sex}]",
        description=(
            "Prompt template. {field} is any metadata column, plus {lesion} (diagnosis, else label + 'skin lesion'). "
            "A [bracketed part] is dropped when one of its fields is missing."
        ),
    )
    instance_prompt: str = Field(
        "dermoscopy image of a sks malignant skin lesion",
        description="DreamBooth instance prompt (the rare token 'sks' binds the instance images).",
    )
    class_prompt: str = Field("dermoscopy image of a skin lesion", description="DreamBooth class (prior) prompt.")


class PrepareConfig(StrictModel):
    dataset: str = Field("sample", description="Which dataset reader to use (`dermsynth prepare --help` "
                         "lists them).")
    root: Path | None = Field(None, description="Dataset folder (images, and metadata unless --csv names it).")
    csv: Path | None = Field(None, description="Metadata CSV (ISIC 2020 ground truth / train.csv, HAM10000 metadata).")
    duplicates: Path | None = Field(None, description="ISIC 2020 duplicates CSV; found next to the CSV when omitted.")
    drop_duplicates: bool = Field(True, description="Keep one image of each listed duplicate pair; drops recorded.")
    label_scheme: Literal["binary", "diagnosis"] = Field(
        "binary", description="binary = benign/malignant; diagnosis = one class per diagnosis."
    )
    malignant_diagnoses: list[str] = Field(
        ["mel", "bcc", "akiec"], description="HAM10000 dx codes counted as malignant in the binary scheme."
    )
    group_duplicates: bool = Field(
        True, description="Find duplicate images by content (any id, flipped/rotated too) and keep them in one split.")
    duplicate_threshold: float = Field(
        0.95, gt=0.5, le=1.0, description="Similarity (high-pass 16 px correlation) above which images are duplicates.")
    max_images: int | None = Field(None, ge=1, description="Keep at most this many images (stratified); quick runs.")
    workers: int = Field(2, ge=1, le=64, description="Worker processes for image preprocessing.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        # The message pydantic gives for a Literal, with the choices read from the registry.
        if value not in READERS:
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": one_of(READERS.names())})
        return value


Model = TypeVar("Model", bound=BaseModel)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming the first offending key, e.g. ``preprocess.image_size: Input should be ...``."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{prefix}{key}: {msg}"


def validate_config(model: type[Model], data: dict[str, Any], source: str = "config") -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DermsynthError(format_validation_error(exc, prefix=f"{source}: ")) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DermsynthError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise DermsynthError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DermsynthError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_config(model: type[Model], path: str | Path | None, overrides: dict[str, Any] | None = None) -> Model:
    """Read ``path`` (if given), apply non-None ``overrides`` on top, validate."""
    data = read_yaml(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return validate_config(model, data, source=str(path) if path else "options")
