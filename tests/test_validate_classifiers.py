"""Classifiers of the validation stage: presets, save/load, pretrained checkpoints, features, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dermsynth.classify.classifiers import (
    build_classifier,
    extract_features,
    load_classifier,
    predict_proba,
    save_classifier,
)
from dermsynth.classify.config import ClassifierTrainConfig
from dermsynth.classify.images import ImageSet
from dermsynth.classify.training import fit, resolve_settings
from dermsynth.classify.transforms import augment, load_image, normalize, square_resize
from dermsynth.errors import DermsynthError

from .conftest import lesion_image

TINY_VIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "patch_size": 4}
TINY_CNN = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _images(n: int, size: int = 16) -> np.ndarray:
    return np.stack([lesion_image(i, (size, size), malignant=i % 2 == 1) for i in range(n)])


@pytest.mark.parametrize(("preset", "overrides", "width"), [("cnn", TINY_CNN, 16), ("vit", TINY_VIT, 16)])
def test_save_load_roundtrip_and_features(preset, overrides, width, tmp_path):
    torch.manual_seed(0)
    classifier = build_classifier(preset, ["benign", "malignant"], 16, overrides)
    images = _images(6)
    before = predict_proba(classifier, images)
    folder = save_classifier(classifier, tmp_path / "clf")
    assert (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file()
    loaded = load_classifier(folder)
    assert loaded.classes == ["benign", "malignant"] and loaded.spec == classifier.spec
    np.testing.assert_allclose(predict_proba(loaded, images), before, atol=1e-6)
    features = extract_features(folder, list(images), batch_size=4)
    assert features.shape == (6, width) and features.dtype == np.float32
    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    np.testing.assert_allclose(extract_features(loaded, paths), features[:2], atol=1e-5)


def test_a_saved_classifier_loads_as_a_pretrained_checkpoint_with_a_new_head(tmp_path):
    torch.manual_seed(0)
    folder = save_classifier(build_classifier("vit", ["a", "b"], 16, TINY_VIT), tmp_path / "vit")
    three = build_classifier(str(folder), ["x", "y", "z"])
    assert three.pretrained and three.spec.size == 16 and three.model.config.num_labels == 3
    assert predict_proba(three, _images(2)).shape == (2, 3)
    with pytest.raises(DermsynthError, match="runs at 16 px"):
        build_classifier(str(folder), ["x", "y"], image_size=32)
    with pytest.raises(DermsynthError, match="not found"):
        build_classifier(str(tmp_path / "missing"), ["x", "y"])
    with pytest.raises(DermsynthError, match="cannot load a pretrained image classifier"):
        build_classifier(str(tmp_path), ["x", "y"])  # a folder, but no checkpoint in it


def test_training_improves_a_tiny_cnn_and_keeps_the_best_validation_epoch():
    images = _images(48)
    targets = np.arange(48) % 2
    train = ImageSet(images[:32], targets[:32], [f"t{i}" for i in range(32)], np.zeros(32, bool))
    val = ImageSet(images[32:], targets[32:], [f"v{i}" for i in range(16)], np.zeros(16, bool))
    torch.manual_seed(0)
    classifier = build_classifier("cnn", ["benign", "malignant"], 16, TINY_CNN)
    settings = resolve_settings(ClassifierTrainConfig(epochs=6, batch_size=8, learning_rate=1e-2, precision="no"),
                                "cnn", "cpu")
    result = fit(classifier, train, val, settings, seed=0)
    history = result.history
    assert len(history) == 6 and history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history.loc[history["epoch"] == result.best_epoch, "selected_so_far"].item()
    assert history["val_auroc"].max() == history.loc[history["epoch"] == result.best_epoch, "val_auroc"].item()
    poisoned = ImageSet(val.images, val.targets, val.ids, np.ones(16, bool))
    with pytest.raises(AssertionError, match="never reach validation"):
        fit(classifier, train, poisoned, settings, seed=0)


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_non_finite_weights_after_an_epoch_are_never_kept(monkeypatch, precision):
    import dermsynth.classify.training as training

    images, targets = _images(24), np.arange(24) % 2
    train = ImageSet(images[:16], targets[:16], [f"t{i}" for i in range(16)], np.zeros(16, bool))
    val = ImageSet(images[16:], targets[16:], [f"v{i}" for i in range(8)], np.zeros(8, bool))
    real_epoch, calls = training._train_epoch, []

    def epoch_that_diverges_in_bf16(classifier, train, settings, *args):
        calls.append(settings.bf16)
        loss = real_epoch(classifier, train, settings, *args)
        if settings.bf16 or precision == "no":
            next(classifier.model.parameters()).data[0] = float("nan")
        return loss

    monkeypatch.setattr(training, "_train_epoch", epoch_that_diverges_in_bf16)
    torch.manual_seed(0)
    classifier = build_classifier("cnn", ["benign", "malignant"], 16, TINY_CNN)
    settings = resolve_settings(ClassifierTrainConfig(epochs=2, batch_size=8, precision=precision), "cnn", "cpu")
    if precision == "no":
        with pytest.raises(DermsynthError, match="diverged to non-finite weights in fp32"):
            fit(classifier, train, val, settings, seed=0)
        return
    with pytest.warns(UserWarning, match="trained again from the same start in fp32"):
        result = fit(classifier, train, val, settings, seed=0)
    assert calls == [True, False, False]  # bf16 epoch 1 diverged; both epochs again in fp32
    assert all(torch.isfinite(p).all() for p in classifier.model.parameters())
    assert (result.history["precision"] == "fp32 (bf16 diverged)").all()


def test_preset_defaults_and_overrides():
    settings = resolve_settings(ClassifierTrainConfig(), "pretrained", "cpu")
    assert (settings.learning_rate, settings.batch_size, settings.weight_decay) == (2e-5, 32, 0.01)
    assert resolve_settings(ClassifierTrainConfig(patience=None), "cnn", "cpu").patience is None
    assert resolve_settings(ClassifierTrainConfig(precision="no"), "cnn", "cpu").bf16 is False
    with pytest.raises(DermsynthError, match="patch_size dividing it"):
        build_classifier("vit", ["a", "b"], 18, TINY_VIT)


def test_augment_is_reproducible_and_only_rearranges_pixels_without_jitter():
    batch = torch.from_numpy(_images(8))
    first = augment(batch, torch.Generator().manual_seed(1))
    again = augment(batch, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == (8, 3, 16, 16)
    assert first.min() >= 0 and first.max() <= 1
    plain = augment(batch, torch.Generator().manual_seed(2), jitter=None)
    reference = batch.permute(0, 3, 1, 2).float() / 255
    for a, b in zip(plain, reference, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)


def test_one_transform_for_every_image_size(tmp_path):
    wide = lesion_image(3, (60, 40))
    assert square_resize(wide, 16).shape == (16, 16, 3)
    Image.fromarray(wide).save(tmp_path / "wide.jpg")
    assert load_image(tmp_path / "wide.jpg", 16).shape == (16, 16, 3)
    x = normalize(torch.from_numpy(_images(2)), build_classifier("cnn", ["a", "b"], 16, TINY_CNN).spec)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
