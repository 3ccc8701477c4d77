"""The classifier two-sample test on real dermoscopy images of the embedded sample (32 px)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dermsynth.audit.c2st import C2STResult, c2st
from dermsynth.classify.transforms import square_resize
from dermsynth.data.images import load_rgb

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "dermsynth" / "data" / "sample" / "uda1"
SIZE = 32
FAST = {"folds": 5, "epochs": 10, "n_boot": 500}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These convolutions are too small to gain from a second thread, and OpenMP threads stall badly on a busy
    CPU (one c2st call: ~6 s on one thread, minutes on two when the cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def halves() -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of the sample's images, each with the same benign/malignant mix."""
    import pandas as pd

    labels = pd.read_csv(SAMPLE / "labels.csv")
    images = np.stack([square_resize(load_rgb(SAMPLE / "images" / f"{name}.jpg", min_side=SIZE), SIZE)
                       for name in labels["image_name"]])
    rng = np.random.default_rng(7)
    first, second = [], []
    for target in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels["target"].to_numpy() == target))
        half = len(rows) // 2
        first.append(rows[:half])
        second.append(rows[half:2 * half])
    return images[np.sort(np.concatenate(first))], images[np.sort(np.concatenate(second))]


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])


def _less_red(images: np.ndarray, factor: float) -> np.ndarray:
    out = images.astype(np.float32)
    out[..., 0] *= factor
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _show(name: str, result: C2STResult) -> None:
    print(f"{name}: auroc {result.auroc:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}] "
          f"folds {np.round(result.fold_aurocs, 3).tolist()} n {result.n_per_set}")


def test_two_halves_of_real_images_are_indistinguishable(halves):
    a, b = halves
    result = c2st(a, b, **FAST)
    _show("real vs real", result)
    assert result.n_per_set == min(len(a), len(b))
    assert result.ci_low <= 0.5 <= result.ci_high
    assert abs(result.auroc - 0.5) < 0.15
    assert len(result.fold_aurocs) == 5


def test_blurred_images_are_detected(halves):
    a, b = halves
    result = c2st(a, _blur(b, 1.5), **FAST)
    _show("real vs blurred", result)
    assert result.auroc >= 0.95
    assert result.ci_low > 0.5


def test_colour_shifted_images_are_detected(halves):
    a, b = halves
    result = c2st(a, _less_red(b, 0.75), **FAST)  # x 0.8 reaches ~0.96: too close to the bound to assert on
    _show("real vs less red", result)
    assert result.auroc >= 0.95
    assert result.ci_low > 0.5


def test_same_seed_same_result_and_json_ready(halves):
    a, b = halves[0][:40], halves[1][:40]
    state = torch.get_rng_state()
    first = c2st(a, _less_red(b, 0.8), folds=3, epochs=2, n_boot=200, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is left alone
    second = c2st(a, _less_red(b, 0.8), folds=3, epochs=2, n_boot=200, seed=3)
    assert first == second
    assert c2st(a, _less_red(b, 0.8), folds=3, epochs=2, n_boot=200, seed=4) != first
    data = first.as_dict()
    assert set(data) == {"auroc", "ci_low", "ci_high", "fold_aurocs", "n_per_set", "folds"}
    assert json.loads(json.dumps(data)) == data
    assert data["n_per_set"] == 40 and data["folds"] == 3


def test_subsampling_is_balanced_and_capped(halves):
    a, b = halves
    result = c2st(a[:30], b, folds=2, epochs=1, n_boot=50)
    assert result.n_per_set == 30
    result = c2st(a, b, folds=2, epochs=1, n_boot=50, max_per_set=12)
    assert result.n_per_set == 12 and len(result.fold_aurocs) == 2


def test_too_few_images_give_nan_not_an_error(halves):
    a, b = halves
    result = c2st(a[:4], b, folds=5)
    assert math.isnan(result.auroc) and math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert result.fold_aurocs == [] and result.n_per_set == 4 and result.folds == 5
    assert math.isnan(c2st(a[:0], b).auroc)
    assert math.isnan(json.loads(json.dumps(result.as_dict()))["auroc"])


def test_bad_inputs_are_rejected(halves):
    a, b = halves
    with pytest.raises(ValueError, match="shapes differ"):
        c2st(a, b[:, :16, :16])
    with pytest.raises(ValueError, match="uint8"):
        c2st(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="folds"):
        c2st(a, b, folds=1)
    with pytest.raises(ValueError, match="at least"):
        c2st(a[:, :4, :4], b[:, :4, :4])


def _lesions(count: int, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` noisy images of each of ``count`` random 16 px patterns, and the pattern (lesion) of each."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (count, 16, 16, 3)).astype(np.float64)
    images = np.concatenate([np.clip(base + rng.normal(0, 6, base.shape), 0, 255) for _ in range(copies)])
    return images.astype(np.uint8), np.tile(np.arange(count), copies)


def test_folds_grouped_by_lesion_stop_a_lesion_leaking_between_folds():
    # Two sets from one distribution, each with four images per lesion: ungrouped folds put a lesion's twins in
    # training, so held-out images are recognised rather than judged (the HAM10000 real-vs-real reading of ~0.7).
    a, groups_a = _lesions(30, 4, seed=1)
    b, groups_b = _lesions(30, 4, seed=2)
    leaky = c2st(a, b, epochs=10, n_boot=0).auroc
    grouped = c2st(a, b, epochs=10, n_boot=0, groups_a=groups_a, groups_b=groups_b)
    assert leaky > 0.75
    assert abs(grouped.auroc - 0.5) < 0.15
    with pytest.raises(ValueError, match="groups for"):
        c2st(a, b, groups_a=groups_a[:5])
