"""Settings of the audit stage (pydantic; no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dermsynth.config import StrictModel

# The feature spaces an audit can measure in (audit/run.py builds them; audit/features.py says what each is).
FEATURE_SPACES = {
    "classifier": "a CNN trained by the audit on the real train split",
    "classifier:PATH": "a saved classifier folder",
    "hf:ID_OR_PATH": "a transformers vision backbone, local folder or named hub id",
}


def feature_spaces_help() -> str:
    return ", ".join(f"{form} ({what})" for form, what in FEATURE_SPACES.items())


class AuditConfig(StrictModel):
    features: str = Field("classifier", description=f"Feature space: {feature_spaces_help()}.")
    feature_split: Literal["half", "all"] = Field(
        "half",
        description="With features: classifier, the CNN learns from one patient-grouped half of the real train split "
                    "and FID, KID and precision/recall compare against the other half: a network trained on the "
                    "images it later measures has memorised them, which inflates real-test-vs-train FID (on "
                    "HAM10000 ~40 vs ~2 for synthetic) and makes the FID ratio meaningless. all: train on the whole "
                    "split (the earlier, biased behaviour).")
    image_size: int = Field(64, ge=16, le=1024, description="All images are compared at this square size.")
    fidelity_resolution: Literal["matched", "audit"] = Field(
        "matched",
        description="matched: when the synthetic images are smaller than image_size, the real images pass through "
                    "their size (down, then up to image_size) before FID, KID and precision/recall, so fidelity "
                    "judges what a generator draws at its own resolution, as C2ST and the domain gap do; the "
                    "figures at image_size are kept beside them (fidelity.at_audit_size). audit: real images at "
                    "image_size, so the blur of upsampling counts against the generator.")
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
    c2st: bool = Field(
        True, description="Classifier two-sample test per class: can a small CNN tell synthetic from real training "
        "images (AUROC, 0.5 = indistinguishable), beside real held-out vs real training images.")
    c2st_folds: int = Field(5, ge=2, le=20, description="C2ST cross-validation folds.")
    c2st_epochs: int = Field(10, ge=1, le=200, description="C2ST classifier epochs per fold.")
    c2st_max_per_set: int | None = Field(
        1000, ge=2, description="C2ST: at most this many images per set and class (balanced, seeded sample).")
    domain_gap: bool = Field(
        True, description="Interpretable image statistics (lesion area, colour, sharpness, ...) per class, "
        "real vs synthetic, ranked by standardised difference.")
    compare_size: int | None = Field(
        None, ge=16, le=1024, description="Side at which C2ST and domain-gap statistics compare images; null = "
        "the smaller of image_size and the synthetic images' own size, so a low-resolution generator is judged "
        "on its content, not on the blur of upsampling (FID too, with fidelity_resolution matched).")
    synthetic_preprocess: bool = Field(
        True, description="Pass a synthetic folder not made by dermsynth (no manifest) through the real images' "
        "preprocessing first (cached): framing must not pass for a difference in the lesions.")
    seed: int = Field(0, description="Seed of subsampling, KID subsets, the feature CNN and the controls.")
    device: str = Field("auto", description="auto, cpu, cuda, mps.")
