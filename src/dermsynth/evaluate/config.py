"""Settings of the validation stage (pydantic; loaded from YAML, unknown keys are errors). No torch import here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from dermsynth.classify.config import ClassifierTrainConfig
from dermsynth.classify.models import classifiers_help
from dermsynth.config import StrictModel


class ValidateConfig(StrictModel):
    """Downstream validation: train classifiers on real / mixed / synthetic images, test on real images."""

    # Fields added after a release: unset, they leave `dermsynth run`'s stage marker as that release wrote it.
    _added_later: ClassVar[frozenset[str]] = frozenset({"reconstruction"})

    real: Path = Field(description="Prepared dataset folder (written by 'dermsynth prepare').")
    synthetic: list[Path] = Field(
        default_factory=list,
        description="Synthetic folders of class sub-folders (SYN/images/<class>/ or SYN/<class>/, PNG/JPEG, any "
                    "size); each regime using synthetic images runs once per folder.")
    synthetic_preprocess: bool = Field(
        True, description="Pass a synthetic folder not made by dermsynth (no manifest.csv + generate.json) through "
        "the real images' preprocessing (vignette, lesion-centred crop, resize, hair removal) first, cached: a "
        "classifier must not learn framing instead of disease.")
    test: list[Path] = Field(
        default_factory=list, description="External test sets: prepared datasets from other sources (another "
        "clinic, dermatoscope or collection). Every image of each is a test image; none is trained on.")
    external_duplicate_threshold: float = Field(
        0.95, gt=0, le=1, description="External images whose descriptor correlates above this with a training "
        "image (real or synthetic) are content duplicates (public collections overlap): listed and removed.")
    reconstruction: Path | None = Field(
        None, description="For the reconstruct controls: the generator's reconstructions of the run's own real "
        "training sample (dermsynth reconstruct --split train --model MODEL --model-sample).")
    regimes: list[str] = Field(
        ["real", "hybrid:0.5", "synthetic"],
        description="real, hybrid:<fraction> (synthetic share at equal size), add:<n>, synthetic (= hybrid:1); "
        "the controls <method>:<fraction> and <method>-add:<n>, copies made from the run's own real images by "
        "augment (strong augmentation), lowpass (the synthetic set's sharpness and colour), reconstruct (the "
        "generator's autoencoder) or mixup (same-class mixes).")
    seeds: int = Field(3, ge=1, le=100, description="Seeds per regime: first_seed, first_seed + 1, ...")
    first_seed: int = Field(0, ge=0, description="First seed (model init, data order, augmentation, mixing).")
    model: str = Field("cnn", description=f"{classifiers_help()}.")
    architecture: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the cnn/vit preset's transformers config (e.g. tiny tests).")
    image_size: int | None = Field(
        None, ge=8, le=1024, description="Input side for cnn/vit; default: the prepared images' size.")
    real_per_class: int | None = Field(
        None, ge=1, description="Limited-data setting: this many real training images per class (val/test unchanged).")
    subsample_seed: int | None = Field(
        0, description="Seed of the real_per_class sample; null = the run's seed (the sample then varies by seed).")
    class_mix: Literal["proportional", "balanced"] = Field(
        "proportional", description="add:<n>: split n by the real class sizes, or fill the smallest classes first.")
    train: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for the confidence intervals.")
    subgroups: list[str] | None = Field(
        None, description="Metadata fields to report subgroups by: sex, age_band (from age_approx), anatom_site, "
        "source, fitzpatrick, or any metadata column; null = those of the first five the metadata has.")
    subgroup_min_images: int = Field(
        30, ge=1, description="Smallest subgroup of test images given metrics (smaller ones: 'too small').")
    subgroup_min_per_class: int = Field(10, ge=1, description="Smallest count of each class in a reported subgroup.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    save_checkpoint: bool = Field(False, description="Save each run's selected classifier under <run>/checkpoint/.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps.")
    shard: str | None = Field(
        None, description="K/N: run only every N-th run of the plan, starting at the K-th (one task of a job array "
        "of N; each writes its own run folders, and any call's summary lists the runs not finished yet).")
    threads: int | None = Field(
        None, ge=1, le=256,
        description="CPU threads for torch; null = torch's default. 1 is several times faster on a CPU that other "
                    "processes keep busy (measured in bench/RESULTS.md).")

    @field_validator("shard")
    @classmethod
    def _shard_form(cls, value: str | None) -> str | None:
        from dermsynth.distributed import parse_shard
        from dermsynth.errors import DermsynthError

        try:
            return str(parse_shard(value)) if value is not None else None
        except DermsynthError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("regimes")
    @classmethod
    def _known_regimes(cls, value: list[str]) -> list[str]:
        from dermsynth.errors import DermsynthError
        from dermsynth.evaluate.regimes import parse_regime

        if not value:
            raise ValueError("at least one regime is needed")
        try:
            names = [parse_regime(text).name for text in value]
        except DermsynthError as exc:
            raise ValueError(str(exc)) from None
        if len(set(names)) != len(names):
            raise ValueError("a regime is listed twice")
        return names
