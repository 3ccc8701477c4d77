"""Image classifiers of the validation stage (transformers models, no torchvision/timm).

- a registered name (:mod:`dermsynth.classify.models`, where each entry also carries its training preset):
  ``cnn``, ``ResNetForImageClassification`` from a small config (basic blocks, widths 32-256, one block per
  stage, 1.23 M parameters), trained from scratch, fast on a CPU at 64-128 px; ``vit``,
  ``ViTForImageClassification`` from a small config (patch = side / 8, hidden 192, 6 layers, 3 heads), trained
  from scratch, for offline use at small sizes.
- anything else: a pretrained image-classification checkpoint, by local folder or (only when named) hub id,
  e.g. a local copy of ``google/vit-base-patch16-224-in21k``; its head is replaced for our classes, and its own
  input size and normalisation (``preprocessor_config.json``) are used.

A trained classifier is a folder: ``model.safetensors`` + ``config.json`` (``save_pretrained``) and a
``preprocessor_config.json`` holding the input size and normalisation, loadable by :func:`load_classifier` and
by transformers' Auto classes. :func:`extract_features` gives penultimate (pooled) features for the audit stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

from dermsynth.classify.models import CLASSIFIERS, label_maps
from dermsynth.classify.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageSpec, load_image, normalize, square_resize
from dermsynth.errors import DermsynthError
from dermsynth.progress import quiet_hf_libraries
from dermsynth.utils import hub_access

PROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class Classifier:
    model: PreTrainedModel
    spec: ImageSpec
    classes: list[str]
    pretrained: bool
    head: str = "classifier"  # the submodule whose input is the penultimate feature

    def features(self, images: Sequence[str | Path | np.ndarray | Image.Image], batch_size: int = 64,
                 device: str = "cpu") -> np.ndarray:
        """Penultimate (pooled) features (N, D), as :func:`extract_features`."""
        return extract_features(self, images, batch_size, device)


def build_classifier(model: str, classes: Sequence[str], image_size: int | None = None,
                     overrides: dict[str, Any] | None = None) -> Classifier:
    """A registered classifier (from scratch: random weights, ``image_size`` required) or a pretrained checkpoint
    (a registered name, folder or hub id) with a new head.

    ``overrides`` changes fields of the preset's transformers config (tests build tiny models this way).
    """
    classes = list(classes)
    kind = CLASSIFIERS.find(model)
    if kind is not None and kind.build is not None:
        if image_size is None:
            raise ValueError(f"image_size is required for the {model} preset")
        net = kind.build(classes, image_size, overrides if overrides is not None else {})
        return Classifier(net, ImageSpec(image_size), classes, pretrained=False, head=kind.head)
    if overrides:
        fresh = "/".join(name for name, entry in CLASSIFIERS.items() if entry.build is not None)
        raise DermsynthError(f"architecture overrides apply to the {fresh} presets, not to a pretrained checkpoint")
    if kind is not None and kind.checkpoint is not None:
        return replace(_load(kind.checkpoint, classes, image_size), head=kind.head)
    return _load(model, classes, image_size)


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _read_spec(source: str, config: PretrainedConfig) -> ImageSpec:
    """Input side and mean/std from the checkpoint's preprocessor config (ImageNet values when it has none)."""
    from transformers.utils import cached_file

    path = cached_file(source, PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False)
    data = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    size = data.get("size", {})
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    side = int(side or getattr(config, "image_size", 224))
    mean, std = data.get("image_mean", IMAGENET_MEAN), data.get("image_std", IMAGENET_STD)
    return ImageSpec(side, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _load(source: str, classes: list[str], image_size: int | None) -> Classifier:
    local = Path(source).expanduser()
    if not local.exists() and not _is_hub_id(source):
        raise DermsynthError(f"model must be {', '.join(CLASSIFIERS)}, a local checkpoint folder or a hub id; "
                             f"not found: {source}")
    name = str(local) if local.exists() else source
    try:
        with hub_access(not local.exists()):
            net = AutoModelForImageClassification.from_pretrained(name, ignore_mismatched_sizes=True,
                                                                  **label_maps(classes))
            spec = _read_spec(name, net.config)
    except (OSError, ValueError) as exc:
        raise DermsynthError(f"cannot load a pretrained image classifier from {source}: "
                             f"{str(exc).splitlines()[0]}") from None
    if image_size is not None and image_size != spec.size:
        raise DermsynthError(f"{source} runs at {spec.size} px; leave image_size unset for pretrained models")
    return Classifier(net, spec, classes, pretrained=True)


def save_classifier(classifier: Classifier, folder: str | Path) -> Path:
    """Write ``folder`` (safetensors weights, config, preprocessor config) atomically: complete or absent."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf_libraries():
        classifier.model.save_pretrained(tmp)
    spec = classifier.spec
    processor = {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "resample": 3,
        "size": {"height": spec.size, "width": spec.size}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(spec.mean), "image_std": list(spec.std),
    }
    (tmp / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_classifier(folder: str | Path) -> Classifier:
    """Load a folder written by :func:`save_classifier` (classes from ``config.id2label``)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DermsynthError(f"not a classifier folder (no config.json): {folder}")
    net = AutoModelForImageClassification.from_pretrained(folder)
    classes = [net.config.id2label[i] for i in range(net.config.num_labels)]
    return Classifier(net, _read_spec(str(folder), net.config), classes, pretrained=True)


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.inference_mode()
def predict_proba(classifier: Classifier, images: np.ndarray, batch_size: int = 128, device: str = "cpu",
                  bf16: bool = False) -> np.ndarray:
    """Class probabilities (N, K) for uint8 NHWC images already at the classifier's size."""
    model = classifier.model.to(device).eval()
    out = []
    for part in batches(len(images), batch_size):
        x = normalize(torch.from_numpy(images[part]).to(device), classifier.spec)
        with autocast(device, bf16):
            logits = model(pixel_values=x).logits
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(classifier.classes)), dtype=np.float32)


def _as_array(item: str | Path | np.ndarray | Image.Image, size: int) -> np.ndarray:
    if isinstance(item, str | Path):
        return load_image(item, size)
    if isinstance(item, Image.Image):
        item = np.asarray(item.convert("RGB"))
    return square_resize(np.asarray(item, dtype=np.uint8), size)


@torch.inference_mode()
def extract_features(model: Classifier | str | Path, images_or_paths: Sequence[str | Path | np.ndarray | Image.Image],
                     batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Penultimate (pooled) features (N, D) float32: the input of the classification head.

    ``model`` is a :class:`Classifier` or a saved classifier folder; images are paths, HxWx3 uint8 arrays or PIL
    images, passed through the same transform as at training (square crop, resize, normalise).
    """
    classifier = model if isinstance(model, Classifier) else load_classifier(model)
    net = classifier.model.to(device).eval()
    captured: list[torch.Tensor] = []
    head = net.get_submodule(classifier.head)  # its input is the pooled penultimate feature
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].flatten(1).float().cpu()))
    try:
        for part in batches(len(images_or_paths), batch_size):
            arrays = np.stack([_as_array(item, classifier.spec.size) for item in images_or_paths[part]])
            net(pixel_values=normalize(torch.from_numpy(arrays).to(device), classifier.spec))
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(captured).numpy()
