"""Preprocessing on synthetic dermoscopy-like images: a skin background, a dark elliptical lesion off
centre, thin dark hairs and black dermatoscope corners, all with known ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from dermsynth.data.config import PreprocessConfig
from dermsynth.data.preprocess import (
    ProcessResult,
    centre_box,
    lesion_box,
    process_image,
    remove_hair,
    segment_lesion,
    shades_of_grey,
    vignette_mask,
)

SKIN = (205, 160, 140)
LESION = (115, 70, 55)
HAIR = (35, 25, 20)


@dataclass
class Scene:
    rgb: np.ndarray
    lesion: np.ndarray  # bool, true lesion
    hair: np.ndarray    # bool, hair pixels outside the lesion
    field: np.ndarray   # bool, inside the dermatoscope's circular field of view
    centre: tuple[float, float]


def make_scene(width: int = 320, height: int = 240, hairs: bool = True, seed: int = 0) -> Scene:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.float64)
    rgb[:] = SKIN
    rgb += rng.normal(0, 4, rgb.shape)
    cx, cy, rx, ry = 0.6 * width, 0.45 * height, 0.13 * width, 0.15 * height
    lesion = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    rgb[lesion] = np.array(LESION) + rng.normal(0, 6, (int(lesion.sum()), 3))
    hair = np.zeros((height, width), np.uint8)
    if hairs:
        for x0, y0, x1, y1 in [(0, 30, 320, 90), (40, 240, 120, 0), (200, 240, 320, 150), (0, 200, 150, 170)]:
            cv2.line(hair, (x0 * width // 320, y0 * height // 240), (x1 * width // 320, y1 * height // 240), 1, 2)
    rgb[hair > 0] = HAIR
    field = np.hypot(xx - width / 2, yy - height / 2) <= 0.56 * width
    rgb[~field] = rng.uniform(0, 12, (int((~field).sum()), 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return Scene(rgb, lesion, (hair > 0) & ~lesion & field, field, (cx, cy))


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)


def test_vignette_mask_marks_black_corners_invalid(scene: Scene) -> None:
    valid = vignette_mask(scene.rgb)
    assert valid.dtype == bool and valid.shape == scene.lesion.shape
    for y, x in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert not valid[y, x]
    assert valid[scene.lesion].all()
    # Hairs reach the border but must not drag the skin into the invalid zone.
    assert valid[scene.field].mean() > 0.95
    assert valid[scene.hair].mean() > 0.9


def test_vignette_mask_without_vignette_is_all_valid() -> None:
    assert vignette_mask(make_scene().rgb[60:180, 80:240]).all()


def test_segment_lesion_matches_synthetic_lesion(scene: Scene) -> None:
    mask = segment_lesion(remove_hair(scene.rgb), vignette_mask(scene.rgb))
    assert mask.shape == scene.lesion.shape
    assert dice(mask, scene.lesion) >= 0.9


def test_segmentation_needs_no_vignette_or_hair_removal() -> None:
    clean = make_scene(hairs=False)
    crop = (slice(40, 200), slice(60, 300))  # inside the field of view
    assert dice(segment_lesion(clean.rgb[crop]), clean.lesion[crop]) >= 0.9


def test_lesion_box_is_centred_on_lesion_and_covers_it(scene: Scene) -> None:
    mask = segment_lesion(scene.rgb, vignette_mask(scene.rgb))
    x0, y0, x1, y1 = lesion_box(mask, 0.25, scene.rgb.shape)
    assert x1 - x0 == y1 - y0
    assert 0 <= x0 < x1 <= scene.rgb.shape[1] and 0 <= y0 < y1 <= scene.rgb.shape[0]
    cx, cy = scene.centre
    diagonal = np.hypot(*scene.rgb.shape[:2])
    assert np.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy) < 0.03 * diagonal
    ys, xs = np.nonzero(scene.lesion)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1


def test_lesion_box_scales_from_a_small_mask(scene: Scene) -> None:
    small = cv2.resize(scene.lesion.astype(np.uint8), (80, 60), interpolation=cv2.INTER_NEAREST).astype(bool)
    full = lesion_box(scene.lesion, 0.25, (960, 1280))
    scaled = lesion_box(small, 0.25, (960, 1280))
    assert np.abs(np.array(full) - np.array(scaled)).max() <= 64  # within ~1.5 small-mask pixels


def test_lesion_box_is_shifted_inside_image() -> None:
    mask = np.zeros((100, 100), bool)
    mask[0:10, 90:100] = True  # lesion in a corner
    x0, y0, x1, y1 = lesion_box(mask, 1.0, (100, 100))
    assert x1 == 100 and y0 == 0 and x1 - x0 == y1 - y0


def test_boxes_avoid_the_vignette(scene: Scene) -> None:
    valid = vignette_mask(scene.rgb)
    for box in (centre_box(scene.rgb.shape, valid), lesion_box(scene.lesion, 1.0, scene.rgb.shape, valid)):
        x0, y0, x1, y1 = box
        assert (~valid[y0:y1, x0:x1]).mean() <= 0.02
        assert scene.rgb[y0:y1, x0:x1].max(axis=2).min() > 15  # no black corner pixels in the crop


def test_remove_hair_brightens_hair_and_keeps_lesion(scene: Scene) -> None:
    out = remove_hair(scene.rgb)
    before, after = grey(scene.rgb), grey(out)
    skin = float(np.median(before[scene.field & ~scene.lesion & ~scene.hair]))
    gap_before = skin - before[scene.hair].mean()
    gap_after = skin - after[scene.hair].mean()
    assert gap_after < 0.2 * gap_before
    core = cv2.erode(scene.lesion.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~scene.hair
    assert np.abs(after[core] - before[core]).mean() < 5


def test_remove_hair_leaves_hairless_image_alone() -> None:
    clean = make_scene(hairs=False).rgb
    assert np.abs(remove_hair(clean).astype(int) - clean).mean() < 1.0


def test_shades_of_grey_removes_colour_cast(scene: Scene) -> None:
    cast = np.clip(scene.rgb[40:200, 60:260] * np.array([0.6, 1.0, 1.5]), 0, 255).astype(np.uint8)
    original = cast.reshape(-1, 3).mean(axis=0)
    assert original.max() / original.min() > 1.5
    means = shades_of_grey(cast).reshape(-1, 3).mean(axis=0)
    assert means.max() / means.min() < 1.1


def test_process_image_output_and_centring(scene: Scene) -> None:
    result = process_image(scene.rgb, PreprocessConfig(image_size=128))
    assert isinstance(result, ProcessResult)
    assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
    assert result.centered
    assert result.lesion_fraction == pytest.approx(scene.lesion.mean(), rel=0.3)
    x0, y0, x1, y1 = result.box
    cx, cy = scene.centre
    assert abs((x0 + x1) / 2 - cx) < 10 and abs((y0 + y1) / 2 - cy) < 10
    # Hair removed at the output size: no near-black thin lines left in the crop.
    assert (grey(result.image) < 60).mean() < 0.002


def test_process_image_works_at_high_resolution() -> None:
    big = make_scene(1200, 900)
    result = process_image(big.rgb, PreprocessConfig(image_size=64))
    x0, y0, x1, y1 = result.box
    assert result.centered and np.hypot((x0 + x1) / 2 - big.centre[0], (y0 + y1) / 2 - big.centre[1]) < 30
    assert result.image.shape == (64, 64, 3)


def test_process_image_is_deterministic(scene: Scene) -> None:
    cfg = PreprocessConfig(image_size=96, color_constancy=True)
    a, b = process_image(scene.rgb, cfg), process_image(scene.rgb.copy(), cfg)
    assert a.box == b.box and np.array_equal(a.image, b.image)


def test_switches_turn_steps_off(scene: Scene) -> None:
    cfg = PreprocessConfig(image_size=128)
    off = PreprocessConfig(image_size=128, hair_removal=False)
    dark_on = (grey(process_image(scene.rgb, cfg).image) < 60).mean()
    dark_off = (grey(process_image(scene.rgb, off).image) < 60).mean()
    assert dark_off > 0.01 > 0.002 > dark_on  # hairs kept only when switched off

    plain = process_image(scene.rgb, PreprocessConfig(image_size=128, center=False))
    assert not plain.centered and np.isnan(plain.lesion_fraction)
    assert plain.box == centre_box(scene.rgb.shape, vignette_mask(scene.rgb))

    no_vignette = process_image(scene.rgb, PreprocessConfig(image_size=128, center=False, vignette=False))
    assert no_vignette.box == (40, 0, 280, 240)  # full-height centre square, corners included

    cast = np.clip(scene.rgb * np.array([0.6, 1.0, 1.5]), 0, 255).astype(np.uint8)
    ratio = {}
    for flag in (False, True):
        out = process_image(cast, PreprocessConfig(image_size=128, color_constancy=flag)).image
        means = out.reshape(-1, 3).mean(axis=0)
        ratio[flag] = means.max() / means.min()
    assert ratio[True] < 1.1 < 1.5 < ratio[False]


@pytest.mark.parametrize(
    "image",
    [
        np.full((300, 400, 3), 128, np.uint8),
        np.zeros((300, 400, 3), np.uint8),
        np.full((300, 400, 3), 255, np.uint8),
        np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8),
        np.full((1, 1, 3), 90, np.uint8),
        np.full((30, 900, 3), 180, np.uint8),
        np.full((2000, 12, 3), 180, np.uint8),
    ],
    ids=["uniform", "black", "white", "tiny", "1x1", "wide", "tall"],
)
def test_degenerate_inputs_fall_back_to_centre_crop(image: np.ndarray) -> None:
    result = process_image(image, PreprocessConfig(image_size=64, color_constancy=True))
    assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
    assert not result.centered and np.isnan(result.lesion_fraction)
    x0, y0, x1, y1 = result.box
    assert x1 - x0 == y1 - y0 > 0
    assert min(x0, y0) >= 0 and x1 <= image.shape[1] and y1 <= image.shape[0]


@pytest.mark.parametrize("crop", [np.s_[100:140], np.s_[:, 180:200]], ids=["strip", "column"])
def test_elongated_image_with_lesion_does_not_fail(crop) -> None:
    result = process_image(make_scene(hairs=False).rgb[crop], PreprocessConfig(image_size=32))
    assert result.image.shape == (32, 32, 3)


def test_noise_image_does_not_fail() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert process_image(noise, PreprocessConfig(image_size=32)).image.shape == (32, 32, 3)


def test_process_image_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        process_image(np.zeros((10, 10), np.uint8), PreprocessConfig())
