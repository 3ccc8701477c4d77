"""The classical-augmentation control: augmented copies of the run's own real images as a regime, and synthetic
regimes compared against it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermsynth.errors import DermsynthError
from dermsynth.evaluate.augment import copy_seed, strong_augment
from dermsynth.evaluate.regimes import augmentation_control, augmented_pool, compose, parse_regime
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
    assert half.name == "augment:0.5" and half.uses_augmented and not half.uses_synthetic
    train = compose(half, real, augmented_pool(half, real, CLASSES, seed=3), CLASSES, seed=3)
    assert len(train) == 20 and train["synthetic"].sum() == 10
    copies = train[train["synthetic"]]
    assert set(copies["source_path"]) <= set(real["path"])  # only images this run has
    sources = real.set_index("path")
    assert (copies["group"].to_numpy() == sources.loc[copies["source_path"], "group"].to_numpy()).all()

    many = parse_regime("augment-add:50")  # more copies than real images: several per image
    pool = augmented_pool(many, real, CLASSES, seed=3)
    assert len(pool) == 20 * 3  # ceil(38 benign wanted / 15 benign real) = 3 copies each
    added = compose(many, real, pool, CLASSES, seed=3)
    assert len(added) == 70 and set(real["image_id"]) <= set(added["image_id"])
    assert pool["path"].is_unique

    assert augmentation_control(parse_regime("hybrid:0.25")) == "augment:0.25"
    assert augmentation_control(parse_regime("add:300")) == "augment-add:300"
    assert augmentation_control(parse_regime("synthetic")) == "augment:1"
    assert augmentation_control(parse_regime("real")) is None
    for text in ("augment:2", "augment-add:0", "augment-add:x"):
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
