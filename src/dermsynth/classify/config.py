"""Settings of classifier training (pydantic; no torch import here): validate's runs and the audit's feature CNN."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from dermsynth.config import StrictModel


class ClassifierTrainConfig(StrictModel):
    """Classifier training. Unset (null) values take the model's preset default (see docs/validation.md)."""

    _renamed: ClassVar[dict[str, str]] = {"lr": "learning_rate", "grad_clip": "max_grad_norm"}

    epochs: int | None = Field(None, ge=1, le=10_000, description="Training epochs (upper bound with patience).")
    batch_size: int | None = Field(None, ge=1, le=4096, description="Training batch size.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Peak AdamW learning rate.")
    weight_decay: float | None = Field(None, ge=0, lt=1, description="AdamW weight decay (not on biases/norms).")
    warmup_fraction: float | None = Field(
        None, ge=0, le=1, description="Linear warmup over this fraction of all steps, then linear decay to 0.")
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better validation score; null = never.")
    selection_metric: Literal["auroc", "balanced_accuracy", "accuracy", "loss"] = Field(
        "auroc", description="Validation metric (real images only) that picks the checkpoint.")
    precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="bf16 autocast or no (fp32); auto = the preset's measured choice (bf16 on CPU and CUDA).")
    augment: bool = Field(True, description="Random flips, 90-degree rotations and colour jitter on training images.")
    jitter: float = Field(0.1, ge=0, le=0.5, description="Colour jitter spread (brightness/contrast/saturation).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this value; null = no clip.")
    eval_batch_size: int = Field(256, ge=1, description="Batch size for validation/test inference.")
    track_test: bool = Field(
        True, description="Record test accuracy/AUROC per epoch for plotting only (never used for selection).")
