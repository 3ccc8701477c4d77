"""The classifiers a name picks (``model: cnn``), registered with their training preset. No torch import here.

Each entry is built from scratch by its ``build`` function, or (``register_pretrained``) is a named checkpoint
folder / hub id that is fine-tuned with a new head. :func:`dermsynth.classify.classifiers.build_classifier` makes
a :class:`~dermsynth.classify.classifiers.Classifier` from an entry; `ValidateConfig.model`, `dermsynth validate
--help` and the training defaults read this registry. transformers is imported inside the builders, so that the
CLI's help and config validation stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dermsynth.errors import DermsynthError
from dermsynth.registry import Registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, ResNetConfig, ViTConfig

# (classes, image_size, architecture overrides) -> a transformers image-classification model with random weights
Build = Callable[[list[str], int, dict[str, Any]], "PreTrainedModel"]

# Training defaults of a fine-tuned checkpoint (the reference study's), for any folder or hub id.
PRETRAINED_TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 32, "learning_rate": 2e-5, "weight_decay": 0.01,
                                    "warmup_fraction": 0.1, "patience": None, "bf16": True}
TRAIN_KEYS = frozenset(PRETRAINED_TRAIN)


@dataclass(frozen=True)
class ClassifierKind:
    """A registered classifier. Exactly one of ``build`` (from scratch) and ``checkpoint`` (pretrained) is set."""

    name: str
    help: str  # a few words after the name in `dermsynth validate --help`
    train: dict[str, Any]  # the preset: TrainConfig values it fills in when left unset (all of TRAIN_KEYS)
    build: Build | None = None
    checkpoint: str | None = None  # a local folder or a hub id
    head: str = "classifier"  # the submodule whose input is the penultimate feature (Classifier.features)

    @property
    def pretrained(self) -> bool:
        """Pretrained weights: the checkpoint's own input size and normalisation; no architecture overrides."""
        return self.checkpoint is not None


CLASSIFIERS: Registry[ClassifierKind] = Registry("classifier")


def _checked_train(name: str, train: dict[str, Any]) -> dict[str, Any]:
    if set(train) != TRAIN_KEYS:  # a preset missing a key would fail only when a run reaches it
        raise ValueError(f"classifier {name!r}: the training preset needs exactly {', '.join(sorted(TRAIN_KEYS))}")
    return dict(train)


def register_classifier(name: str, *, help: str, train: dict[str, Any],
                        head: str = "classifier") -> Callable[[Build], Build]:
    """Decorator: ``build(classes, image_size, overrides)`` makes the from-scratch model ``model: name`` trains."""
    preset = _checked_train(name, train)

    def add(build: Build) -> Build:
        CLASSIFIERS.add(name, ClassifierKind(name, help, preset, build=build, head=head))
        return build

    return add


def register_pretrained(name: str, checkpoint: str, *, help: str, train: dict[str, Any] | None = None,
                        head: str = "classifier") -> ClassifierKind:
    """A short name for a pretrained checkpoint (folder or hub id); a hub id is only fetched when named."""
    kind = ClassifierKind(name, help, _checked_train(name, train if train is not None else PRETRAINED_TRAIN),
                          checkpoint=checkpoint, head=head)
    return CLASSIFIERS.add(name, kind)


def get_classifier_kind(name: str) -> ClassifierKind:
    """The entry of ``name``; an unknown name is a one-line error listing the known ones."""
    return CLASSIFIERS.get(name)


def is_pretrained(model: str) -> bool:
    """``model`` (a registered name, else a checkpoint folder / hub id) starts from pretrained weights."""
    return model not in CLASSIFIERS or CLASSIFIERS[model].pretrained


def train_preset(model: str) -> dict[str, Any]:
    """The training defaults of ``model``: its entry's preset; for any other checkpoint, PRETRAINED_TRAIN."""
    return CLASSIFIERS[model].train if model in CLASSIFIERS else PRETRAINED_TRAIN


def classifiers_help() -> str:
    """``--model`` help: each registered classifier with its help text, then the checkpoint forms."""
    names = [f"{kind.name} ({kind.help})" if kind.help else kind.name for _, kind in CLASSIFIERS.items()]
    return ", ".join([*names, "or a pretrained image-classifier folder / hub id"])


def label_maps(classes: Sequence[str]) -> dict[str, Any]:
    return {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
            "label2id": {name: i for i, name in enumerate(classes)}}


def make_config(kind: type[PretrainedConfig], settings: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """HF configs accept any key silently; a typo in ``architecture`` must be an error instead. Overrides go
    through the constructor so that derived fields (e.g. ResNet's stage names) follow them."""
    known = kind().to_dict()
    for key in overrides:
        if key not in known:
            raise DermsynthError(f"architecture: unknown {kind.model_type} setting {key!r}")
    return kind(**(settings | overrides))


# --------------------------------------------------------------------------- the built-in presets

# Measured on HAM10000 at 64 px (bench/RESULTS.md, "Classifier presets").
CNN_TRAIN = {"epochs": 30, "batch_size": 32, "learning_rate": 2e-3, "weight_decay": 0.05, "warmup_fraction": 0.1,
             "patience": 10, "bf16": True}
VIT_TRAIN = {"epochs": 30, "batch_size": 32, "learning_rate": 5e-4, "weight_decay": 0.05, "warmup_fraction": 0.1,
             "patience": 10, "bf16": True}


def cnn_config(classes: Sequence[str], overrides: dict[str, Any] | None = None) -> ResNetConfig:
    from transformers import ResNetConfig

    settings = {"num_channels": 3, "embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1],
                "layer_type": "basic", **label_maps(classes)}
    return make_config(ResNetConfig, settings, overrides or {})


def vit_config(classes: Sequence[str], image_size: int, overrides: dict[str, Any] | None = None) -> ViTConfig:
    from transformers import ViTConfig

    settings = {"image_size": image_size, "patch_size": max(1, image_size // 8), "hidden_size": 192,
                "num_hidden_layers": 6, "num_attention_heads": 3, "intermediate_size": 768, "num_channels": 3,
                **label_maps(classes)}
    config = make_config(ViTConfig, settings, overrides or {})
    if config.image_size != image_size or image_size % config.patch_size:
        raise DermsynthError(f"architecture: a ViT at {image_size} px needs image_size {image_size} and a "
                             f"patch_size dividing it (got {config.image_size}, {config.patch_size})")
    return config


@register_classifier("cnn", help="small ResNet, 1.23 M parameters, from scratch", train=CNN_TRAIN)
def build_cnn(classes: list[str], image_size: int, overrides: dict[str, Any]) -> PreTrainedModel:
    """``ResNetForImageClassification``: basic blocks, widths 32-256, one block per stage; fast on a CPU."""
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification(cnn_config(classes, overrides))


@register_classifier("vit", help="small ViT, from scratch", train=VIT_TRAIN)
def build_vit(classes: list[str], image_size: int, overrides: dict[str, Any]) -> PreTrainedModel:
    """``ViTForImageClassification``: patch = side / 8, hidden 192, 6 layers, 3 heads."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification(vit_config(classes, image_size, overrides))
