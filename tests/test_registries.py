"""The extension points (dataset readers, classifiers, generator families): an entry registered in one place is
usable through the public lookups, and an unknown name is one line listing the known ones."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dermsynth.config import validate_config
from dermsynth.data.config import PrepareConfig
from dermsynth.errors import DermsynthError
from dermsynth.registry import Registry


@contextlib.contextmanager
def registered(registry: Registry[Any], name: str) -> Iterator[None]:
    """Take the toy entry ``name`` out again, so that no other test sees it."""
    try:
        yield
    finally:
        if name in registry:
            registry.remove(name)


def _one_line(exc: pytest.ExceptionInfo[DermsynthError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_registry_lists_known_names_for_an_unknown_one():
    registry: Registry[int] = Registry("widget")
    registry.add("a", 1)
    registry.add("b", 2)
    assert registry.get("b") == 2 and registry.find("c") is None and list(registry) == ["a", "b"]
    with pytest.raises(DermsynthError) as exc:
        registry.get("c", where="cfg.yaml")
    assert _one_line(exc) == "cfg.yaml: unknown widget 'c'; known: a, b"
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", 3)


# --------------------------------------------------------------------------- dataset readers


def test_a_registered_reader_is_a_dataset(tmp_path):
    from dermsynth.data.readers import READERS, ReadResult, get_reader, read_dataset, readers_help, register_reader

    with registered(READERS, "toy"):
        @register_reader("toy", licence="toy licence", help="one image per line of a list")
        def read_toy(config: PrepareConfig) -> ReadResult:
            return ReadResult(frame=pd.DataFrame({"image_id": ["a"], "raw_label": ["benign"]}))

        config = validate_config(PrepareConfig, {"dataset": "toy", "root": str(tmp_path)})
        result = read_dataset(config)
        assert result.frame["image_id"].tolist() == ["a"]
        assert result.notes["licence"] == "toy licence"  # prepare.json carries it to the report
        assert get_reader("toy").help in readers_help() and readers_help().endswith("or toy (one image per line "
                                                                                     "of a list).")
    assert "toy" not in READERS


def test_an_unknown_dataset_is_one_line_listing_the_readers():
    from dermsynth.data.readers import get_reader

    with pytest.raises(DermsynthError) as exc:
        validate_config(PrepareConfig, {"dataset": "isic2019"})
    assert _one_line(exc) == ("config: dataset: Input should be 'sample', 'isic2020', 'isic-archive', 'ham10000' "
                              "or 'folder'")
    with pytest.raises(DermsynthError) as exc:
        get_reader("isic2019")
    assert _one_line(exc) == "unknown dataset 'isic2019'; known: sample, isic2020, isic-archive, ham10000, folder"


def test_the_sample_reader_records_its_licence():
    from dermsynth.data.readers import read_dataset

    assert "CC0" in read_dataset(PrepareConfig(dataset="sample")).notes["licence"]


# --------------------------------------------------------------------------- classifiers

TINY_CNN = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}


def test_a_registered_classifier_builds_trains_with_its_preset_and_gives_features(tmp_path):
    import torch

    from dermsynth.classify.classifiers import build_classifier, save_classifier
    from dermsynth.classify.config import ClassifierTrainConfig
    from dermsynth.classify.models import (
        CLASSIFIERS,
        CNN_TRAIN,
        classifiers_help,
        cnn_config,
        is_pretrained,
        register_classifier,
        register_pretrained,
    )
    from dermsynth.classify.training import resolve_settings

    torch.manual_seed(0)
    with registered(CLASSIFIERS, "toy-cnn"), registered(CLASSIFIERS, "toy-pretrained"):
        @register_classifier("toy-cnn", help="a tiny ResNet", train=CNN_TRAIN | {"epochs": 2})
        def build_toy(classes: list[str], image_size: int, overrides: dict[str, Any]) -> Any:
            from transformers import ResNetForImageClassification

            return ResNetForImageClassification(cnn_config(classes, TINY_CNN | overrides))

        classifier = build_classifier("toy-cnn", ["benign", "malignant"], 16)
        assert not classifier.pretrained and not is_pretrained("toy-cnn") and "toy-cnn (a tiny ResNet)" in \
            classifiers_help()
        features = classifier.features(list(np.zeros((3, 16, 16, 3), dtype=np.uint8)))
        assert features.shape == (3, 16)  # the width of the last stage
        settings = resolve_settings(ClassifierTrainConfig(), "toy-cnn", "cpu")
        assert settings.epochs == 2 and settings.batch_size == CNN_TRAIN["batch_size"]

        # A named checkpoint: pretrained, its own input size, the fine-tuning preset.
        folder = save_classifier(classifier, tmp_path / "toy")
        register_pretrained("toy-pretrained", str(folder), help="the toy, saved")
        pretrained = build_classifier("toy-pretrained", ["a", "b", "c"])
        assert pretrained.pretrained and is_pretrained("toy-pretrained") and pretrained.spec.size == 16
        assert resolve_settings(ClassifierTrainConfig(), "toy-pretrained", "cpu").epochs == 10
    assert "toy-cnn" not in CLASSIFIERS


def test_an_unknown_classifier_is_one_line_listing_the_registered_ones(tmp_path):
    from dermsynth.classify.classifiers import build_classifier
    from dermsynth.classify.models import get_classifier_kind, register_classifier

    with pytest.raises(DermsynthError) as exc:
        get_classifier_kind("resnet")
    assert _one_line(exc) == "unknown classifier 'resnet'; known: cnn, vit"
    with pytest.raises(DermsynthError) as exc:
        build_classifier(str(tmp_path / "resnet"), ["a", "b"])
    assert _one_line(exc).startswith("model must be cnn, vit, a local checkpoint folder or a hub id; not found")
    with pytest.raises(ValueError, match="training preset needs exactly"):
        register_classifier("no-preset", help="", train={"epochs": 3})


# --------------------------------------------------------------------------- generator families


class ToyGenerator:
    """A complete ImageGenerator in a few lines: GeneratorBase supplies the text-to-image members."""

    @classmethod
    def from_folder(cls, folder: Path, info: dict[str, Any], device: str = "auto") -> Any:
        from dermsynth.diffusion.families import GeneratorBase

        class Toy(GeneratorBase):
            family = "toy"
            precision = "fp32"

            def __init__(self) -> None:
                super().__init__()
                self.classes = list(info["classes"])
                self.sha256 = "0" * 64
                self.defaults = dict(info["sampling"])

            def __call__(self, labels: list[str], seeds: list[int], *, steps: int, scheduler: str,
                         guidance_scale: float, indices: list[int] | None = None) -> np.ndarray:
                return np.stack([np.random.default_rng(seed).uniform(0.2, 0.8, (8, 8, 3)) for seed in seeds])

        return Toy()


def _model_folder(root: Path, family: str) -> Path:
    root.mkdir(parents=True)
    info = {"family": family, "classes": ["benign", "malignant"], "image_size": 8,
            "sampling": {"scheduler": "ddim", "steps": 2, "guidance_scale": 1.0}}
    (root / "dermsynth_model.json").write_text(json.dumps(info), encoding="utf-8")
    return root


def test_a_registered_family_generates_through_the_protocol(tmp_path):
    from dermsynth.diffusion.families import FAMILIES, load_generator, register_family
    from dermsynth.diffusion.generate import generate

    model = _model_folder(tmp_path / "model", "toy")
    with registered(FAMILIES, "toy"):
        register_family("toy", ToyGenerator)
        assert load_generator(model).family == "toy"
        result = generate(model, tmp_path / "syn", per_class=2, progress=False)
        assert result.summary["counts"] == {"benign": 2, "malignant": 2}
        assert set(result.manifest["prompt"]) == {"benign", "malignant"}  # GeneratorBase.prompt_for
        with pytest.raises(DermsynthError, match="takes no prompts"):
            generate(model, tmp_path / "syn2", per_class=1, progress=False, prompts={"benign": "a mole"})
    assert "toy" not in FAMILIES


def test_an_unknown_family_is_one_line_listing_the_registered_ones(tmp_path):
    from dermsynth.diffusion.families import get_family, read_model_info

    model = _model_folder(tmp_path / "model", "gan")
    with pytest.raises(DermsynthError) as exc:
        read_model_info(model)
    assert _one_line(exc) == (f"{model / 'dermsynth_model.json'}: unknown model family 'gan'; known: scratch, latent, "
                              "cascade, stable-diffusion, stable-diffusion-lora")
    with pytest.raises(DermsynthError, match=r"^unknown model family 'gan'; known: scratch"):
        get_family("gan")
