"""The control regimes: copies made from the run's own real images (strong augmentation, the synthetic set's
sharpness and colour, same-class mixes; reconstructions are in test_reconstruct.py), and synthetic regimes
compared against each."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermsynth.data.images import sharpness
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.augment import copy_seed, strong_augment
from dermsynth.evaluate.controls import dihedral, fit_lowpass, lowpass_copy, mixup_copy
from dermsynth.evaluate.regimes import compose, control_pool, controls_for, parse_regime
from dermsynth.evaluate.validate import validate
from tests.conftest import lesion_image
from tests.test_validate import CLASSES, config, prep, syn  # noqa: F401 (module fixtures)


def test_a_strong_copy_is_deterministic_distinct_and_still_a_lesion_image():
    image = lesion_image(5, (48, 48), True)
    first, again, other = (strong_augment(image, seed) for seed in (11, 11, 12))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.abs(first.astype(int) - image).mean() > 3  # geometry and colour really changed
    # Colour jitter is bounded: the mean colour moves by at most a third of its value.
    assert np.abs(first.mean((0, 1)) - image.mean((0, 1))).max() < image.mean() / 3
    assert copy_seed(0, "ISIC_1", 0) != copy_seed(0, "ISIC_1", 1) != copy_seed(1, "ISIC_1", 0)


def _real(n: int) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"r{i}" for i in range(n)], "path": [f"/r{i}.png" for i in range(n)],
                         "target": [int(i % 4 == 0) for i in range(n)], "group": [f"p{i // 2}" for i in range(n)],
                         "synthetic": False})


def test_augment_regimes_mirror_hybrid_and_add_with_copies_of_the_run_s_own_images():
    real = _real(20)
    half = parse_regime("augment")
    assert half.name == "augment:0.5" and half.is_control and not half.uses_synthetic
    train = compose(half, real, control_pool(half, real, CLASSES, seed=3), CLASSES, seed=3)
    assert len(train) == 20 and train["synthetic"].sum() == 10
    copies = train[train["synthetic"]]
    assert set(copies["source_path"]) <= set(real["path"])  # only images this run has
    sources = real.set_index("path")
    assert (copies["group"].to_numpy() == sources.loc[copies["source_path"], "group"].to_numpy()).all()

    many = parse_regime("augment-add:50")  # more copies than real images: several per image
    pool = control_pool(many, real, CLASSES, seed=3)
    assert len(pool) == 20 * 3  # ceil(38 benign wanted / 15 benign real) = 3 copies each
    added = compose(many, real, pool, CLASSES, seed=3)
    assert len(added) == 70 and set(real["image_id"]) <= set(added["image_id"])
    assert pool["path"].is_unique

    assert controls_for(parse_regime("hybrid:0.25")) == ["augment:0.25", "lowpass:0.25", "reconstruct:0.25",
                                                         "mixup:0.25"]
    assert "mixup-add:300" in controls_for(parse_regime("add:300"))
    assert "lowpass:1" in controls_for(parse_regime("synthetic"))
    assert controls_for(parse_regime("real")) == [] == controls_for(parse_regime("augment:0.5"))
    for text in ("augment:2", "augment-add:0", "augment-add:x", "lowpass:-1", "mixup-add:", "blur:0.5"):
        with pytest.raises(DermsynthError):
            parse_regime(text)


def test_synthetic_regimes_are_compared_with_their_augmentation_control(prep, syn, tmp_path):  # noqa: F811
    regimes = ["real", "hybrid:0.5", "augment:0.5", "augment-add:20"]
    result = validate(config(prep, syn, regimes=regimes, seeds=2), tmp_path / "v", progress=False)
    root = tmp_path / "v" / "validation"
    assert len(result.ran) == 8
    copies = pd.read_csv(root / "augment-0.5" / "0" / "train_images.csv", dtype={"image_id": str})
    n_real = len(pd.read_csv(root / "real" / "0" / "train_images.csv"))
    assert len(copies) == n_real and copies["image_id"].str.startswith("aug:").sum() == round(n_real / 2)
    # Every copy is made from a training image of that run: none from val or test.
    train_ids = set(pd.read_csv(root / "real" / "0" / "train_images.csv", dtype=str)["image_id"])
    made_from = copies.loc[copies["image_id"].str.startswith("aug:"), "image_id"].str.split(":").str[1]
    assert set(made_from) <= train_ids
    metrics = json.loads((root / "augment-add-20" / "1" / "metrics.json").read_text())
    assert metrics["made_by"] == "augmentation" and metrics["train_synthetic"] == 20
    comparisons = pd.read_csv(root / "comparisons.csv")
    pairs = set(zip(comparisons["regime"], comparisons["baseline"], strict=True))
    assert pairs == {("hybrid:0.5", "real"), ("augment:0.5", "real"), ("augment-add:20", "real"),
                     ("hybrid:0.5", "augment:0.5")}
    assert "| hybrid:0.5 @syn | augment:0.5 | auroc |" in (root / "summary.md").read_text()
    # A rerun makes the same copies: every run is found finished.
    again = validate(config(prep, syn, regimes=regimes, seeds=2), tmp_path / "v", progress=False)
    assert not again.ran and len(again.skipped) == 8


# --------------------------------------------------------------------------- lowpass and mixup


def _blurred_and_tinted(image: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    soft = cv2.GaussianBlur(image, (0, 0), sigma).astype(np.float32)
    return (soft * np.array([0.9, 1.0, 1.1]) + 8).clip(0, 255).astype(np.uint8)


def test_lowpass_copies_take_the_synthetic_set_s_sharpness_and_colour():
    real = [lesion_image(20 + i, (48, 48), False) for i in range(12)]
    synthetic = [_blurred_and_tinted(lesion_image(60 + i, (48, 48), False), 1.2) for i in range(12)]
    target = fit_lowpass(real, synthetic)
    assert 0.5 < target.sigma < 2.5 and target.synthetic_sharpness < 0.8 * target.real_sharpness
    copies = [lowpass_copy(image, target, 0) for image in real]
    ratio = np.mean([sharpness(c) for c in copies]) / np.mean([sharpness(s) for s in synthetic])
    assert ratio == pytest.approx(1.0, abs=0.06)  # measured on the copies, after the colour move as well
    for channel in range(3):  # the colour moves to the synthetic set's mean, not the real one's
        made = np.mean([c[..., channel].mean() for c in copies])
        assert made == pytest.approx(np.mean([s[..., channel].mean() for s in synthetic]), abs=3)
    # Copy k is symmetry k of the same image; an already-smooth real set is not blurred.
    assert np.array_equal(lowpass_copy(real[0], target, 3), dihedral(copies[0], 3))
    assert fit_lowpass(synthetic, real).sigma == 0


def test_mixup_partners_are_same_class_images_of_the_run_and_copies_repeat_per_seed():
    real = _real(20)
    regime = parse_regime("mixup:0.5")
    pool = control_pool(regime, real, CLASSES, seed=3)
    by_path = real.set_index("path")
    assert set(pool["partner_path"]) <= set(real["path"]) and (pool["partner_path"] != pool["source_path"]).all()
    assert (by_path.loc[pool["partner_path"], "target"].to_numpy() == pool["target"].to_numpy()).all()
    assert (by_path.loc[pool["source_path"], "group"].to_numpy() == pool["group"].to_numpy()).all()
    assert pool.equals(control_pool(regime, real, CLASSES, seed=3))
    assert not pool["copy_seed"].equals(control_pool(regime, real, CLASSES, seed=4)["copy_seed"])
    a, b = lesion_image(1, (24, 24), False), lesion_image(2, (24, 24), False)
    first, lam = mixup_copy(a, b, 7)
    assert 0.25 <= lam <= 0.75 and np.array_equal(first, mixup_copy(a, b, 7)[0])
    assert not np.array_equal(first, mixup_copy(a, b, 8)[0])
    expected = lam * a.astype(np.float32) + (1 - lam) * b.astype(np.float32)
    assert np.abs(first - expected).max() <= 0.5 + 1e-3


def test_lowpass_and_mixup_controls_run_beside_the_synthetic_regime(prep, syn, tmp_path):  # noqa: F811
    regimes = ["real", "hybrid:0.5", "lowpass:0.5", "mixup-add:20"]
    result = validate(config(prep, syn, regimes=regimes, seeds=2), tmp_path / "v", progress=False)
    root = tmp_path / "v" / "validation"
    assert len(result.ran) == 8
    metrics = json.loads((root / "lowpass-0.5" / "0" / "metrics.json").read_text())
    assert metrics["made_by"] == "lowpass" and metrics["source"] == "syn"
    targets = metrics["control"]["targets"]
    assert set(targets) == set(CLASSES) and all(t["sigma"] >= 0 for t in targets.values())
    mixed = json.loads((root / "mixup-add-20" / "1" / "metrics.json").read_text())
    assert mixed["made_by"] == "mixup" and mixed["train_synthetic"] == 20
    train_ids = set(pd.read_csv(root / "real" / "0" / "train_images.csv", dtype=str)["image_id"])
    copies = pd.read_csv(root / "lowpass-0.5" / "0" / "train_images.csv", dtype={"image_id": str})
    made = copies["image_id"].str.startswith("lowpass:")
    assert made.sum() == round(len(copies) / 2) and set(copies.loc[made, "image_id"].str.split(":").str[1]) <= train_ids
    comparisons = pd.read_csv(root / "comparisons.csv")
    assert {"real", "lowpass:0.5"} <= set(comparisons.loc[comparisons["regime"] == "hybrid:0.5", "baseline"])
    assert "| hybrid:0.5 @syn | lowpass:0.5 | auroc |" in (root / "summary.md").read_text()
    # The same command again: every run found finished; in a new folder, the same figures to the bit.
    assert not validate(config(prep, syn, regimes=regimes, seeds=2), tmp_path / "v", progress=False).ran
    validate(config(prep, syn, regimes=["lowpass:0.5"], seeds=1), tmp_path / "w", progress=False)
    again = json.loads((tmp_path / "w" / "validation" / "lowpass-0.5" / "0" / "metrics.json").read_text())
    assert again["test"] == metrics["test"] and again["control"] == metrics["control"]


def test_lowpass_without_a_synthetic_folder_is_a_clear_error(prep, tmp_path):  # noqa: F811
    with pytest.raises(DermsynthError, match=r"lowpass:0\.5 takes its statistics from at least one --synthetic folder"):
        validate(config(prep, regimes=["real", "lowpass:0.5"]), tmp_path / "v", progress=False)
