"""Settings of the prepare stage (pydantic; no image libraries imported here), beside the data they describe."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from dermsynth.config import StrictModel
from dermsynth.registry import Registry, one_of

# Dataset readers by name: dermsynth.data.readers registers them (`import dermsynth` imports it), and
# PrepareConfig checks `dataset` against them.
READERS: Registry[Any] = Registry("dataset")


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

    @model_validator(mode="before")
    @classmethod
    def _reader_of_the_root(cls, data: Any) -> Any:
        """A root without a dataset: the reader whose layout the root shows (said), never the embedded sample."""
        if not isinstance(data, dict) or data.get("root") is None or data.get("dataset") is not None:
            return data
        from dermsynth.data.readers import infer_reader
        from dermsynth.progress import console

        root = Path(data["root"])
        if not root.is_dir():
            raise ValueError(f"root: folder not found: {root}")
        found = infer_reader(root)
        if found is None:
            raise ValueError(f"root {root} is given without dataset, and its layout is not one dermsynth "
                             f"recognises; name its reader with --dataset ({', '.join(READERS.names())})")
        console.print(f"dataset: {found[0]} (inferred from {found[1]} in {root})", markup=False, highlight=False)
        return {**data, "dataset": found[0]}

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        # The message pydantic gives for a Literal, with the choices read from the registry.
        if value not in READERS:
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": one_of(READERS.names())})
        return value
