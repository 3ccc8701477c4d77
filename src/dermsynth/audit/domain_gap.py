"""Domain gap in plain words: interpretable per-image statistics, compared per class between real and synthetic.

FID and a classifier two-sample test say *that* synthetic images differ; this module says *how*. Every image gets
a handful of statistics a dermatologist or engineer can picture (is a lesion found, how much of the image it
covers, how far off-centre, how irregular its border, its colour and the skin's in CIELAB, sharpness, black
vignette, hair). Per class, each statistic's real and synthetic distributions are compared with a standardised
mean difference and a two-sample Kolmogorov-Smirnov test, ranked by effect size, and the material differences are
turned into a sentence, e.g. "synthetic malignant: lesion area 9.5 % vs 31 % of the image; ...".

A difference is *material* when it is both large, |d| >= ``MATERIAL_STD_DIFF`` (a "medium" effect), and unlikely
to be chance, p < ``MATERIAL_PVALUE``: the effect size alone would flag noise in a class of ten images, the
p-value alone would flag trivial differences between sets of thousands. Cohen's d understates differences in
heavy-tailed statistics (hair, sharpness); KS, reported beside it, does not.

The lesion is found exactly as ``prepare`` finds it (:func:`dermsynth.data.preprocess.vignette_mask` as the valid
area, :func:`~dermsynth.data.preprocess.remove_hair`, then :func:`~dermsynth.data.preprocess.segment_lesion`), so
"lesion not found" means what it means in preparation, with one addition: the segmenter returns a region even in
pure noise, so a region counts as a lesion only when it is at least ``MIN_LESION_CONTRAST`` pooled standard
deviations darker (CIELAB L*) than the ring of skin around it (embedded sample at 64 px: 99 % of real images
>= 1.5, 5th percentile 2.0; uniform or skin-toned noise: |contrast| < 0.1). The segmenter was tuned at >= 64 px:
smaller images are upsampled (bicubic) to a 64 px short side for segmentation only, larger ones downscaled to at most
``SEG_LONG_SIDE`` as ``prepare`` does.

Sharpness, hair and vignette depend on resolution, and the lesion fraction on framing: the caller must bring real
and synthetic images to one common size (e.g. ``data.images.square_resize`` to the audit size) before
calling :func:`image_statistics` or :func:`domain_gap`; statistics of sets at different sizes are not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from dermsynth.data.images import sharpness
from dermsynth.data.preprocess import SEG_LONG_SIDE, hair_mask, remove_hair, segment_lesion, vignette_mask

SEG_MIN_SIDE = 64        # the segmenter's parameters were tuned at >= 64 px
MATERIAL_STD_DIFF = 0.5  # |standardised difference| at least "medium" (Cohen) ...
MATERIAL_PVALUE = 0.01   # ... and unlikely to be chance (KS p), so small classes do not produce noise sentences
MIN_LESION_CONTRAST = 1.0  # L* sd units between the found region and its skin ring: below it, no lesion
RING_FRACTION = 0.1        # width of that ring, as a fraction of the short side

_CHANNELS = (("L", "L*", "0-100"), ("a", "a*", "CIELAB units"), ("b", "b*", "CIELAB units"))
_REGIONS = (("lesion", "inside the lesion"), ("skin", "outside the lesion (skin in the field of view)"))

STATISTICS: dict[str, str] = {
    "lesion_found": "lesion found by prepare's segmenter and at least 1 sd darker than the skin ring around it "
                    "(rate, 0-1)",
    "lesion_contrast": "how much darker the found region is than the ring of skin around it (CIELAB L*, in pooled "
                       "standard deviations; every found region, also those below the lesion threshold)",
    "lesion_area_fraction": "lesion area as a fraction of the image (0-1; lesions found only)",
    "lesion_centre_offset": "distance of the lesion centroid from the image centre, as a fraction of the image side "
                            "(0 = centred; lesions found only)",
    "border_irregularity": "lesion perimeter² / (4π·area) of the smoothed outline (1 = circle, larger = more "
                           "irregular; lesions found only)",
    "lesion_solidity": "lesion area / area of its convex hull (1 = convex blob, lower = ragged or speckled; "
                       "lesions found only)",
    **{f"{region}_{ch}_{stat}": f"CIELAB {sym} {'mean' if stat == 'mean' else 'standard deviation'} {where} ({unit})"
       for region, where in _REGIONS for ch, sym, unit in _CHANNELS for stat in ("mean", "std")},
    "sharpness": "RMS of the grey image's Laplacian / its standard deviation, at the common comparison size "
                 "(unitless, invariant to brightness and contrast; lower = blurrier)",
    "vignette_fraction": "fraction of the image outside the dermatoscope's field of view (black ring/corners, 0-1)",
    "hair_score": "fraction of the image detected as hair by remove_hair's detector (0-1)",
}

# Statistics on a ratio scale (a true zero), for which "synthetic / real" means something; a* and b* do not.
_RATIO_SCALE = {"lesion_found", "lesion_contrast", "lesion_area_fraction", "lesion_centre_offset",
                "border_irregularity", "lesion_solidity", "sharpness", "vignette_fraction", "hair_score",
                *(name for name in STATISTICS if name.endswith("_std")), "lesion_L_mean", "skin_L_mean"}


# --------------------------------------------------------------------------------------- per image


def _segmentation_copy(rgb: np.ndarray) -> np.ndarray:
    """The image at the size the segmenter is trusted at: short side >= 64 px, long side <= SEG_LONG_SIDE."""
    h, w = rgb.shape[:2]
    scale = max(SEG_MIN_SIDE / min(h, w), 1.0)
    if scale == 1.0 and max(h, w) > SEG_LONG_SIDE:
        scale = SEG_LONG_SIDE / max(h, w)
    if scale == 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)


def _masks(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Valid-area and lesion masks at segmentation size, then the same two at the image's own size."""
    seg = _segmentation_copy(rgb)
    valid = vignette_mask(seg)
    lesion = segment_lesion(remove_hair(seg), valid)
    if seg is rgb:
        return valid, lesion, valid, lesion
    size = (rgb.shape[1], rgb.shape[0])

    def back(mask: np.ndarray) -> np.ndarray:
        return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)

    return valid, lesion, back(valid), back(lesion)


def _shape(lesion: np.ndarray) -> dict[str, float]:
    """Area fraction, centroid offset and border irregularity of a lesion mask (NaN when empty)."""
    if not lesion.any():
        return {"lesion_area_fraction": math.nan, "lesion_centre_offset": math.nan, "border_irregularity": math.nan,
                "lesion_solidity": math.nan}
    h, w = lesion.shape
    ys, xs = np.nonzero(lesion)
    offset = math.hypot((xs.mean() + 0.5 - w / 2) / w, (ys.mean() + 0.5 - h / 2) / h)
    contours, _ = cv2.findContours(lesion.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = [_smooth_contour(c) for c in contours]
    area = sum(cv2.contourArea(c) for c in contours)
    perimeter = sum(cv2.arcLength(c, closed=True) for c in contours)
    irregularity = perimeter**2 / (4 * math.pi * area) if area > 0 else math.nan
    hull = cv2.convexHull(np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32))
    hull_area = cv2.contourArea(hull)
    solidity = min(1.0, float(lesion.sum()) / hull_area) if hull_area > 0 else math.nan
    return {"lesion_area_fraction": float(lesion.mean()), "lesion_centre_offset": float(offset),
            "border_irregularity": float(irregularity), "lesion_solidity": solidity}


def _smooth_contour(contour: np.ndarray, half_window: int = 2) -> np.ndarray:
    """Circular moving average of the contour's points. The raw pixel staircase inflates the perimeter, so a
    digitised disc would score 1.15-1.3 depending on its size; smoothed it scores 1.00-1.01 (radius 4-25 px) and
    a 2:1 ellipse its true 1.19, so lesion size does not masquerade as irregularity."""
    points = contour[:, 0, :].astype(np.float64)
    if len(points) <= 2 * half_window + 1:
        return contour
    padded = np.concatenate([points[-half_window:], points, points[:half_window]])
    kernel = np.ones(2 * half_window + 1) / (2 * half_window + 1)
    smooth = np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(2)], axis=1)
    return smooth.astype(np.float32).reshape(-1, 1, 2)


def _colour(rgb: np.ndarray, valid: np.ndarray, lesion: np.ndarray) -> dict[str, float]:
    """CIELAB mean and sd inside the lesion and on the skin around it (whole valid area when no lesion)."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    out = {}
    for region, mask in (("lesion", lesion), ("skin", valid & ~lesion)):
        pixels = lab[mask]
        for i, (ch, _, _) in enumerate(_CHANNELS):
            empty = len(pixels) == 0
            out[f"{region}_{ch}_mean"] = math.nan if empty else float(pixels[:, i].mean())
            out[f"{region}_{ch}_std"] = math.nan if empty else float(pixels[:, i].std())
    return out


def lesion_contrast(rgb_seg: np.ndarray, valid: np.ndarray, lesion: np.ndarray) -> float:
    """(mean L* of the skin ring around ``lesion`` - mean L* inside it) / their pooled sd; NaN without a region."""
    if not lesion.any():
        return math.nan
    side = max(3, int(RING_FRACTION * min(lesion.shape)) | 1)
    grown = cv2.dilate(lesion.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)
    ring = grown & ~lesion & valid
    if ring.sum() < 10:  # the region fills the field of view: nothing to compare it with
        return math.nan
    lightness = cv2.cvtColor(rgb_seg.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[..., 0]
    inside, around = lightness[lesion], lightness[ring]
    return float((around.mean() - inside.mean()) / math.sqrt((inside.var() + around.var()) / 2 + 1e-6))


def _one(rgb: np.ndarray) -> dict[str, float]:
    valid_seg, lesion_seg, valid, lesion = _masks(rgb)
    contrast = lesion_contrast(_segmentation_copy(rgb), valid_seg, lesion_seg)
    if not contrast >= MIN_LESION_CONTRAST:  # NaN too: a region not set off from skin is not a lesion
        lesion_seg, lesion = np.zeros_like(lesion_seg), np.zeros_like(lesion)
    return {"lesion_found": float(lesion_seg.any()), "lesion_contrast": contrast, **_shape(lesion_seg),
            **_colour(rgb, valid, lesion),
            "sharpness": sharpness(rgb), "vignette_fraction": float(1.0 - valid_seg.mean()),
            "hair_score": float(hair_mask(rgb).mean())}


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """uint8 NHWC images -> one row per image, one column per statistic of :data:`STATISTICS` (in its order).

    Lesion statistics are NaN where no lesion is found; colour "outside" then covers the whole valid area.
    """
    images = np.asarray(images)
    if images.size == 0:
        return pd.DataFrame({name: pd.Series(dtype=float) for name in STATISTICS})
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 NHWC RGB images, got shape {images.shape} dtype {images.dtype}")
    rows = [_one(np.ascontiguousarray(image)) for image in images]
    return pd.DataFrame(rows, columns=list(STATISTICS), dtype=float)


# --------------------------------------------------------------------------------------- comparison


@dataclass
class GapRow:
    """One statistic, real vs synthetic. ``*_n`` count the images with a defined value (lesions found, for the
    lesion statistics). ``std_diff`` is (synthetic - real) / pooled sd (Cohen's d); for ``lesion_found`` it is
    Cohen's h, the effect size of two rates on the same scale, and ``ks_pvalue`` is Fisher's exact test. ``ratio``
    is synthetic / real mean, NaN where the statistic has no true zero (a*, b* means)."""

    statistic: str
    real_mean: float
    synthetic_mean: float
    real_n: int
    synthetic_n: int
    std_diff: float
    ks: float
    ks_pvalue: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_material(row: GapRow) -> bool:
    """Both large (|std_diff| >= MATERIAL_STD_DIFF) and unlikely to be chance (KS p < MATERIAL_PVALUE)."""
    return bool(abs(row.std_diff) >= MATERIAL_STD_DIFF and row.ks_pvalue < MATERIAL_PVALUE)


def _finite(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.zeros(0)
    values = frame[name].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _cohen_d(real: np.ndarray, synthetic: np.ndarray) -> float:
    n_r, n_s = len(real), len(synthetic)
    if n_r == 0 or n_s == 0 or n_r + n_s <= 2:
        return math.nan
    diff = float(synthetic.mean() - real.mean())
    squares = float(((real - real.mean()) ** 2).sum() + ((synthetic - synthetic.mean()) ** 2).sum())
    pooled = math.sqrt(squares / (n_r + n_s - 2))
    scale = max(1.0, abs(float(real.mean())), abs(float(synthetic.mean())))
    if pooled <= 1e-9 * scale:  # both sets constant: no spread to measure the difference against
        return 0.0 if abs(diff) <= 1e-9 * scale else math.copysign(math.inf, diff)
    return diff / pooled


def _cohen_h(real: np.ndarray, synthetic: np.ndarray) -> float:
    if len(real) == 0 or len(synthetic) == 0:
        return math.nan
    return 2 * math.asin(math.sqrt(synthetic.mean())) - 2 * math.asin(math.sqrt(real.mean()))


def _ks(name: str, real: np.ndarray, synthetic: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value; for the 0/1 lesion-found rate the p-value is Fisher's exact test instead, because
    KS's p assumes continuous data and is far too conservative on two values (the statistic is the same: the
    difference of the rates)."""
    if not len(real) or not len(synthetic):
        return math.nan, math.nan
    result = scipy_stats.ks_2samp(real, synthetic)
    if name != "lesion_found":
        return float(result.statistic), float(result.pvalue)
    found = [int(real.sum()), int(synthetic.sum())]
    table = [found, [len(real) - found[0], len(synthetic) - found[1]]]
    return float(result.statistic), float(scipy_stats.fisher_exact(table).pvalue)


def _row(name: str, real: np.ndarray, synthetic: np.ndarray) -> GapRow:
    r_mean = float(real.mean()) if len(real) else math.nan
    s_mean = float(synthetic.mean()) if len(synthetic) else math.nan
    ks, pvalue = _ks(name, real, synthetic)
    ratio = s_mean / r_mean if name in _RATIO_SCALE and r_mean > 0 else math.nan  # NaN-safe: nan > 0 is False
    d = _cohen_h(real, synthetic) if name == "lesion_found" else _cohen_d(real, synthetic)
    return GapRow(name, r_mean, s_mean, len(real), len(synthetic), d, ks, pvalue, ratio)


def compare_statistics(real: pd.DataFrame, synthetic: pd.DataFrame) -> list[GapRow]:
    """One :class:`GapRow` per statistic, largest |std_diff| first, undefined (NaN) ones last."""
    rows = [_row(name, _finite(real, name), _finite(synthetic, name)) for name in STATISTICS]
    return sorted(rows, key=lambda row: (math.isnan(row.std_diff), -abs(row.std_diff)))


# --------------------------------------------------------------------------------------- sentences


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 20 else f"{value:.1f}"


def _percent(value: float) -> str:
    """Whole percent from 10 % up (and for 0), one decimal below, where a few tenths of a percent matter."""
    return f"{100 * value:.0f} %" if abs(value) >= 0.1 or value == 0 else f"{100 * value:.1f} %"


def _rate(value: float) -> str:
    return f"{100 * value:.0f} %"


def _two(value: float) -> str:
    return f"{value:.2f}"


# statistic -> (label, value formatter, suffix after "synthetic vs real")
_PHRASES: dict[str, tuple[str, Callable[[float], str], str]] = {
    "lesion_found": ("lesion found in", _rate, " of real"),
    "lesion_area_fraction": ("lesion area", _percent, " of the image"),
    "lesion_centre_offset": ("lesion centre offset", _two, " of the image side"),
    "border_irregularity": ("border irregularity", _two, " (1 = circle)"),
    "lesion_contrast": ("lesion contrast", _two, " sd (L*, darker than the skin around it)"),
    "lesion_solidity": ("lesion solidity", _two, " (area / convex hull; ragged or speckled < 1)"),
    **{f"{region}_{ch}_{stat}": (f"{sym} {'' if stat == 'mean' else 'spread (sd) '}"
                                 f"{'inside' if region == 'lesion' else 'outside'} the lesion", _number, "")
       for region, _ in _REGIONS for ch, sym, _ in _CHANNELS for stat in ("mean", "std")},
    "sharpness": ("sharpness", _two, ""),
    "vignette_fraction": ("black vignette", _percent, " of the image"),
    "hair_score": ("hair", _percent, " of the image"),
}


def _phrase(row: GapRow) -> str:
    label, fmt, suffix = _PHRASES.get(row.statistic, (row.statistic, _number, ""))
    if row.statistic == "sharpness" and math.isfinite(row.ratio):
        return f"sharpness {row.ratio:.2f}× real"
    return f"{label} {fmt(row.synthetic_mean)} vs {fmt(row.real_mean)}{suffix}"


def _empty_sets(rows: list[GapRow]) -> str | None:
    """"no synthetic images to compare" and the like, when a whole set is empty; None otherwise."""
    empty = [name for name, n in (("real", max((row.real_n for row in rows), default=0)),
                                  ("synthetic", max((row.synthetic_n for row in rows), default=0))) if n == 0]
    return f"no {' and no '.join(empty)} images to compare" if empty else None


def _lesion_note(rows: list[GapRow]) -> str:
    """Why the lesion statistics are undefined (no lesion found in one set), or ''."""
    area = next((row for row in rows if row.statistic == "lesion_area_fraction"), None)
    if area is None or (area.real_n and area.synthetic_n):
        return ""
    which = " or ".join(name for name, n in (("real", area.real_n), ("synthetic", area.synthetic_n)) if n == 0)
    return f" (no lesion found in any {which} image, so the lesion statistics are undefined)"


def describe(rows: list[GapRow], class_name: str, top: int = 3) -> str:
    """The ``top`` material differences (see :func:`is_material`) as one sentence, largest first.

    e.g. "synthetic malignant: lesion found in 31 % vs 97 % of real; sharpness 0.40× real; L* outside the lesion
    62 vs 71". When nothing is material, says so and names the largest difference anyway.
    """
    head = f"synthetic {class_name}"
    empty = _empty_sets(rows)
    if empty:
        return f"{head}: {empty}"
    note = _lesion_note(rows)
    ranked = sorted((row for row in rows if math.isfinite(row.std_diff)), key=lambda row: -abs(row.std_diff))
    material = [row for row in ranked if is_material(row)]
    if material:
        more = f"; and {len(material) - top} more" if len(material) > top else ""
        return f"{head}: {'; '.join(_phrase(row) for row in material[:top])}{more}{note}"
    if not ranked:
        return f"{head}: no statistic could be compared{note}"
    largest = ranked[0]
    return (f"{head}: no statistic differs materially from real (largest: {_phrase(largest)}, "
            f"d = {largest.std_diff:+.2f}){note}")


# --------------------------------------------------------------------------------------- entry point


def _section(real: pd.DataFrame, synthetic: pd.DataFrame, name: str) -> dict[str, Any]:
    rows = compare_statistics(real, synthetic)
    return {"real_images": len(real), "synthetic_images": len(synthetic), "rows": [row.to_dict() for row in rows],
            "material": [row.statistic for row in rows if is_material(row)], "summary": describe(rows, name)}


def _class_rows(targets: np.ndarray, index: int, name: str) -> np.ndarray:
    """Targets may be class indices (as in the audit) or class names."""
    targets = np.asarray(targets)
    if targets.dtype.kind in "OUS":
        return targets.astype(str) == name
    return targets == index


def domain_gap(real_images: np.ndarray, real_targets: np.ndarray, synthetic_images: np.ndarray,
               synthetic_targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per-class and overall comparison of :data:`STATISTICS`, JSON-ready (NaN where undefined).

    ``overall`` pools all classes, so it also reflects any difference in class mix; read the per-class rows first.
    """
    real = image_statistics(real_images)
    synthetic = image_statistics(synthetic_images)
    per_class = {}
    for index, name in enumerate(classes):
        r_rows, s_rows = _class_rows(real_targets, index, name), _class_rows(synthetic_targets, index, name)
        per_class[name] = _section(real[r_rows], synthetic[s_rows], name)
    return {
        "statistics": dict(STATISTICS),
        "method": ("per statistic: real vs synthetic means, standardised difference (Cohen's d; Cohen's h for the "
                   "lesion-found rate) and two-sample KS test (Fisher's exact p for the rate); material when "
                   f"|d| >= {MATERIAL_STD_DIFF} and p < {MATERIAL_PVALUE}; rows ranked by |d|"),
        "per_class": per_class,
        "overall": _section(real, synthetic, "images (all classes)"),
    }
