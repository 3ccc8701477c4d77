"""Feature spaces for fidelity metrics and feature-based memorization, stated in every audit output.

- ``classifier`` (default, offline): a small CNN trained here on the real training split (the validation stage's
  ``cnn`` preset); its penultimate features know what distinguishes dermoscopy images, unlike ImageNet ones.
- ``classifier:PATH``: a classifier folder saved by ``dermsynth validate`` (or any image-classification model).
- ``hf:ID_OR_PATH``: a transformers vision backbone (DINOv2, CLIP vision tower, ViT ...), pooled output; a hub
  id is only fetched when named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dermsynth.errors import DermsynthError
from dermsynth.utils import hub_access


@dataclass
class FeatureSpace:
    name: str
    description: str
    extract: object  # Callable[[np.ndarray], np.ndarray]: uint8 NHWC images -> (N, D) float32

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.extract(images)


def classifier_space(path: str | Path, description: str, device: str = "cpu") -> FeatureSpace:
    from dermsynth.classify.classifiers import extract_features, load_classifier

    classifier = load_classifier(path)
    return FeatureSpace(f"classifier:{path}", description,
                        lambda images: extract_features(classifier, list(images), device=device))


def trained_classifier_space(train_images: np.ndarray, train_targets: np.ndarray, val_images: np.ndarray,
                             val_targets: np.ndarray, classes: list[str], folder: Path, epochs: int, seed: int,
                             device: str = "cpu", note: str = "") -> FeatureSpace:
    """Train (or reuse from ``folder``) the default feature network on real images only."""
    from dermsynth.classify.classifiers import build_classifier, save_classifier
    from dermsynth.classify.config import ClassifierTrainConfig
    from dermsynth.classify.images import ImageSet
    from dermsynth.classify.training import fit, resolve_settings

    description = (f"penultimate features of a small CNN (cnn preset, {train_images.shape[1]} px) trained by the "
                   f"audit on {len(train_images)} real training images for {epochs} epochs, seed {seed}{note}")
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        classifier = build_classifier("cnn", classes, image_size=train_images.shape[1])
        settings = resolve_settings(ClassifierTrainConfig(epochs=epochs, patience=None, track_test=False), "cnn",
                                    device)

        def as_set(images: np.ndarray, targets: np.ndarray) -> ImageSet:
            return ImageSet(images, targets.astype(np.int64), [str(i) for i in range(len(images))],
                            np.zeros(len(images), dtype=bool))

        fit(classifier, as_set(train_images, train_targets), as_set(val_images, val_targets), settings, seed=seed,
            device=device)
        save_classifier(classifier, folder)
    return classifier_space(folder, description, device)


def named_space(spec: str, device: str = "cpu") -> FeatureSpace:
    """A feature space the user names: ``classifier:PATH`` (a saved classifier folder) or ``hf:ID_OR_PATH``;
    ``device`` may be ``auto``."""
    from dermsynth.utils import pick_device

    device = pick_device(device)
    if spec.startswith("classifier:"):
        path = Path(spec.split(":", 1)[1])
        if not path.is_dir():
            raise DermsynthError(f"features: classifier folder not found: {path}")
        return classifier_space(path, f"penultimate features of the classifier in {path}", device)
    if spec.startswith("hf:"):
        return hf_space(spec.split(":", 1)[1], device)
    raise DermsynthError(f"features: unknown feature space {spec!r} (classifier:PATH or hf:ID_OR_PATH)")


def hf_space(source: str, device: str = "cpu") -> FeatureSpace:
    """Pooled output of a transformers vision model, with its own image processor."""

    from transformers import AutoImageProcessor, AutoModel

    try:
        with hub_access(not Path(source).exists()):  # the user named a hub model: allow this one download
            processor = AutoImageProcessor.from_pretrained(source)
            model = AutoModel.from_pretrained(source).to(device).eval()
    except (OSError, ValueError) as exc:
        raise DermsynthError(f"features hf:{source}: cannot load ({str(exc).splitlines()[0]})") from None
    vision = getattr(model, "vision_model", model)  # CLIP: use the vision tower only

    @torch.inference_mode()
    def extract(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), 64):
            inputs = processor(images=list(images[start:start + 64]), return_tensors="pt").to(device)
            result = vision(pixel_values=inputs["pixel_values"])
            pooled = getattr(result, "pooler_output", None)
            if pooled is None:
                pooled = result.last_hidden_state.mean(dim=1)
            out.append(pooled.flatten(1).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    return FeatureSpace(f"hf:{source}", f"pooled output of the pretrained vision model {source}", extract)
