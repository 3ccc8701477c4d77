"""Domain-gap statistics on real dermoscopy images: a deliberately shifted half must rank its shifted property first."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import dermsynth
from dermsynth.audit.domain_gap import (
    STATISTICS,
    compare_statistics,
    describe,
    domain_gap,
    image_statistics,
    is_material,
)
from dermsynth.classify.transforms import square_resize
from dermsynth.data.images import load_rgb
from dermsynth.data.preprocess import hair_mask

SAMPLE = Path(dermsynth.__file__).parent / "data" / "sample" / "uda1" / "images"
SIZE = 64


@pytest.fixture(scope="module")
def halves() -> tuple[np.ndarray, np.ndarray]:
    """Real images at 64 px, split into two disjoint halves (alternate files)."""
    paths = sorted(SAMPLE.glob("*.jpg"))
    assert len(paths) >= 100
    images = np.stack([square_resize(load_rgb(path), SIZE) for path in paths])
    return images[0::2], images[1::2]


@pytest.fixture(scope="module")
def stats_a(halves) -> pd.DataFrame:
    return image_statistics(halves[0])


def _zoom_out(image: np.ndarray, factor: float = 0.55) -> np.ndarray:
    """Shrink to ``factor`` of the side and pad with the skin colour of the image's own corners."""
    side = image.shape[0]
    small = cv2.resize(image, (round(side * factor),) * 2, interpolation=cv2.INTER_AREA)
    corners = np.concatenate([image[:6, :6], image[:6, -6:], image[-6:, :6], image[-6:, -6:]]).reshape(-1, 3)
    out = np.empty_like(image)
    out[:] = np.median(corners, axis=0).astype(np.uint8)
    top = (side - small.shape[0]) // 2
    out[top:top + small.shape[0], top:top + small.shape[1]] = small
    return out


def _ranked(stats_a: pd.DataFrame, shifted: np.ndarray) -> list:
    rows = compare_statistics(stats_a, image_statistics(shifted))
    print("\n".join(f"{r.statistic:22s} d={r.std_diff:+.2f} p={r.ks_pvalue:.1e}" for r in rows[:4]))
    return rows


def test_statistics_columns_and_ranges(halves, stats_a):
    assert list(stats_a.columns) == list(STATISTICS)
    assert len(stats_a) == len(halves[0])
    assert stats_a["lesion_found"].mean() > 0.9  # real dermoscopy: the segmenter finds nearly every lesion
    found = stats_a[stats_a["lesion_found"] == 1]
    assert found["lesion_area_fraction"].between(0, 1).all()
    assert (found["border_irregularity"] >= 0.95).all()
    assert stats_a["skin_L_mean"].between(0, 100).all()
    assert (stats_a["skin_L_mean"] > stats_a["lesion_L_mean"]).mean() > 0.9  # lesions are darker than skin
    assert stats_a[["vignette_fraction", "hair_score"]].stack().between(0, 1).all()


def test_darkened_half_ranks_lightness_first(halves, stats_a):
    darker = (halves[1].astype(np.float32) * 0.7).astype(np.uint8)
    rows = _ranked(stats_a, darker)
    assert rows[0].statistic in {"skin_L_mean", "lesion_L_mean"}
    assert rows[0].std_diff < -1.0 and is_material(rows[0])
    sharpness = next(r for r in rows if r.statistic == "sharpness")
    assert abs(sharpness.std_diff) < 0.3  # contrast-invariant: darker is not blurrier
    assert "L* outside the lesion" in describe(rows, "benign")


def test_blurred_half_ranks_sharpness_first(halves, stats_a):
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), 1.0) for image in halves[1]])
    rows = _ranked(stats_a, blurred)
    assert rows[0].statistic == "sharpness"
    assert rows[0].std_diff < -1.0 and rows[0].ratio < 0.5
    assert "sharpness" in describe(rows, "benign").split(";")[0]


def test_zoomed_out_half_ranks_lesion_area_first(halves, stats_a):
    rows = _ranked(stats_a, np.stack([_zoom_out(image) for image in halves[1]]))
    assert rows[0].statistic == "lesion_area_fraction"
    assert rows[0].synthetic_mean < 0.5 * rows[0].real_mean and rows[0].std_diff < -1.0
    assert describe(rows, "malignant").startswith("synthetic malignant: lesion area")


def test_unchanged_halves_differ_in_nothing_material(halves, stats_a):
    rows = _ranked(stats_a, halves[1])
    assert not any(is_material(r) for r in rows)
    assert max(abs(r.std_diff) for r in rows if math.isfinite(r.std_diff)) < 0.3
    sentence = describe(rows, "benign")
    assert sentence.startswith("synthetic benign: no statistic differs materially from real (largest: ")


def test_ranking_and_row_fields(halves, stats_a):
    rows = compare_statistics(stats_a, image_statistics(halves[1][:40]))
    assert sorted(r.statistic for r in rows) == sorted(STATISTICS)
    d = [abs(r.std_diff) for r in rows]
    assert d == sorted(d, reverse=True)
    found = next(r for r in rows if r.statistic == "lesion_found")
    assert found.real_n == len(stats_a) and found.synthetic_n == 40
    a_mean = next(r for r in rows if r.statistic == "skin_a_mean")
    assert math.isnan(a_mean.ratio)  # a* has no true zero: no ratio


def test_blank_images_and_empty_sets_are_nan_not_errors(halves, stats_a):
    blank = np.zeros((5, SIZE, SIZE, 3), np.uint8)
    blank[:3] = (200, 160, 140)  # uniform skin; the last two stay all black
    stats = image_statistics(blank)
    assert (stats["lesion_found"] == 0).all()
    assert stats[["lesion_area_fraction", "lesion_centre_offset", "border_irregularity", "lesion_L_mean"]].isna().all(
        axis=None)
    assert stats.loc[:2, "skin_L_mean"].notna().all()  # no lesion: "outside" is the whole valid area

    rows = compare_statistics(stats_a, stats)
    area = next(r for r in rows if r.statistic == "lesion_area_fraction")
    assert area.synthetic_n == 0 and math.isnan(area.std_diff) and math.isnan(area.synthetic_mean)
    assert stats["sharpness"].isna().all() and (stats.loc[3:, "vignette_fraction"] == 1).all()
    assert all(math.isnan(r.std_diff) for r in rows[-10:])  # undefined rows rank last
    sentence = describe(rows, "malignant")
    assert "lesion found in 0 % vs" in sentence and "no lesion found in any synthetic image" in sentence

    empty = image_statistics(np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert list(empty.columns) == list(STATISTICS) and len(empty) == 0
    rows = compare_statistics(stats_a, empty)
    assert all(math.isnan(r.std_diff) and math.isnan(r.ks) for r in rows)
    assert describe(rows, "benign") == "synthetic benign: no synthetic images to compare"
    assert describe(compare_statistics(empty, empty), "x") == "synthetic x: no real and no synthetic images to compare"


def test_domain_gap_is_json_ready_per_class(halves):
    real = halves[0][:24]
    synthetic = np.concatenate([halves[1][:10], np.full((3, SIZE, SIZE, 3), 180, np.uint8)])
    targets = np.array([0] * 10 + [1] * 3)
    result = domain_gap(real, np.arange(24) % 2, synthetic, targets, ["benign", "malignant", "other"])
    json.loads(json.dumps(result))  # NaN allowed, as elsewhere in audit.json
    assert result["statistics"] == STATISTICS
    assert set(result["per_class"]) == {"benign", "malignant", "other"}
    benign = result["per_class"]["benign"]
    assert benign["real_images"] == 12 and benign["synthetic_images"] == 10
    assert len(benign["rows"]) == len(STATISTICS) and set(benign["rows"][0]) >= {"statistic", "std_diff", "ks"}
    assert benign["summary"].startswith("synthetic benign: ")
    malignant = result["per_class"]["malignant"]
    assert "no lesion found in any synthetic image" in malignant["summary"]
    assert "lesion_found" in malignant["material"]
    assert {row["statistic"]: row for row in malignant["rows"]}["lesion_found"]["synthetic_mean"] == 0.0
    assert "no real and no synthetic" in result["per_class"]["other"]["summary"]
    assert result["overall"]["real_images"] == 24 and result["overall"]["summary"]


def test_small_and_odd_sized_images(halves):
    small = np.stack([cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA) for image in halves[0][:8]])
    stats = image_statistics(small)  # upsampled to 64 px for segmentation only
    assert stats["lesion_found"].mean() > 0.5
    assert stats["lesion_area_fraction"].dropna().between(0, 1).all()
    wide = image_statistics(np.zeros((2, 20, 300, 3), np.uint8) + 128)
    assert len(wide) == 2 and (wide["lesion_found"] == 0).all()
    with pytest.raises(ValueError):
        image_statistics(np.zeros((2, 64, 64), np.uint8))


def test_hair_score_uses_the_removal_detector(halves):
    image = halves[0][0].copy()
    before = hair_mask(image).mean()
    for y in (10, 30, 50):
        cv2.line(image, (2, y), (61, y + 8), (30, 25, 20), 1)
    assert hair_mask(image).mean() > before + 0.02
    stats = image_statistics(np.stack([halves[0][0], image]))
    assert stats.loc[1, "hair_score"] > stats.loc[0, "hair_score"]


def test_noise_has_no_lesion_and_real_images_do(halves, stats_a):
    # The segmenter returns a region even in noise; only a region set off from the skin around it is a lesion.
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 256, (20, SIZE, SIZE, 3), dtype=np.uint8)
    skin = np.clip(np.array([200, 150, 130]) + rng.normal(0, 25, (20, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    for noise in (uniform, skin):
        stats = image_statistics(noise)
        assert stats["lesion_found"].mean() <= 0.05
        assert stats["lesion_area_fraction"].isna().mean() >= 0.95
    assert stats_a["lesion_found"].mean() >= 0.95
    assert stats_a["lesion_contrast"].median() > 2 * 1.0


def test_solidity_is_one_for_a_disc_and_low_for_a_ragged_region():
    from dermsynth.audit.domain_gap import _shape

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 15**2
    ragged = disc & ((yy // 4 + xx // 4) % 2 == 0) | ((np.abs(yy - 32) < 2) | (np.abs(xx - 32) < 2)) & disc
    assert _shape(disc)["lesion_solidity"] > 0.95
    assert _shape(ragged)["lesion_solidity"] < 0.75
