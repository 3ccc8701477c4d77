"""Settings of the audit stage (pydantic; no torch import here)."""

from __future__ import annotations

from pydantic import Field

from dermsynth.config import StrictModel


class AuditConfig(StrictModel):
    features: str = Field(
        "classifier",
        description="Feature space: classifier (a CNN trained here on the real train split), classifier:PATH "
                    "(a saved classifier folder) or hf:ID_OR_PATH (a transformers vision backbone).")
    image_size: int = Field(64, ge=16, le=1024, description="All images are compared at this square size.")
    max_images: int | None = Field(
        5000, ge=2, description="Cap per image set (seeded sample) to bound time; null = all images.")
    nearest_k: int = Field(5, ge=1, le=50, description="k of the k-NN balls of precision/recall/density/coverage.")
    kid_subsets: int = Field(50, ge=1, le=1000, description="Random subsets for KID mean and sd.")
    quantile: float = Field(
        0.995, gt=0.5, lt=1.0,
        description="Memorization threshold: this quantile of held-out real images' similarity to the train set.")
    candidates: int = Field(10, ge=1, le=200, description="Nearest candidates per similarity to verify by pixels.")
    classifier_epochs: int = Field(8, ge=1, le=200, description="Epochs of the default feature CNN.")
    positive_controls: int = Field(
        50, ge=0, le=1000, description="Training images copied with light transforms to check the detector each run.")
    seed: int = Field(0, description="Seed of subsampling, KID subsets, the feature CNN and the controls.")
    device: str = Field("auto", description="auto, cpu, cuda, mps.")
