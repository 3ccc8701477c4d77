"""Classical dermoscopy preprocessing: vignette detection, lesion segmentation and centring, hair removal
and colour constancy.

Everything is OpenCV/numpy, deterministic and cheap. :func:`process_image` segments on a small copy
(long side <= ``SEG_LONG_SIDE``), takes the crop from the full-resolution input, and removes hair only
at the output size, so the cost hardly depends on the input resolution.

The segmentation method (Otsu threshold on a colour channel, restricted to the area inside the
dermatoscope's field of view, then the connected component best explained by a centre prior) was
chosen by measurement against HAM10000 ground-truth masks: see ``bench/bench_segmentation.py`` and
``bench/RESULTS.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from dermsynth.data.config import PreprocessConfig

SegChannel = Literal["blue", "grey", "lab_l", "pca", "lab_lb"]
Box = tuple[int, int, int, int]

SEG_LONG_SIDE = 256          # segmentation resolution (long side, px)
MIN_SEG_SIDE = 24            # below this short side (after downscaling) segmentation is not attempted
VIGNETTE_LEVEL = 40          # max(R,G,B) below this, connected to the border = outside the field of view
MIN_VALID_FRACTION = 0.2     # less usable skin than this: do not trust a segmentation
MIN_LESION_FRACTION = 0.003  # of the valid area
MIN_SKIN_FRACTION = 0.03     # of the valid area must remain outside the lesion to measure contrast
MIN_CONTRAST = 12.0          # lesion vs skin, in 0..255 channel levels (after smoothing)
MIN_BOX_FRACTION = 0.25      # smallest crop side, as a fraction of the image's short side
VIGNETTE_TOLERANCE = 0.0     # fraction of vignette pixels tolerated inside a crop box
REFINE_GAIN = 1.3           # a refined (inner) lesion must have this much more edge contrast
HAIR_THRESHOLD = 12.0        # black-hat response (0..255) above which a pixel is hair, at strength 1
HAIR_MIN_LENGTH = 0.06       # shortest hair kept, as a fraction of the short side


def _odd(value: float, minimum: int = 3) -> int:
    k = max(minimum, round(value))
    return k if k % 2 else k + 1


def _ellipse(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize; area averaging when shrinking. A large shrink starts with an integer-factor area step,
    which OpenCV runs on a fast path (about 3x faster than one fractional INTER_AREA step, same result
    up to rounding)."""
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    if width > w or height > h:
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    factor = min(w // width, h // height)
    if factor >= 2:
        rgb = cv2.resize(rgb, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)
        if rgb.shape[1] == width and rgb.shape[0] == height:
            return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def _downscale(rgb: np.ndarray, long_side: int = SEG_LONG_SIDE) -> np.ndarray:
    """Copy for segmentation: shrunk by the smallest integer factor that brings the long side to
    <= ``long_side`` (integer factors take OpenCV's fast area path)."""
    h, w = rgb.shape[:2]
    factor = -(-max(h, w) // long_side)
    if factor <= 1:
        return rgb
    if min(h, w) < 2 * factor:  # a sliver: keep at least one row/column
        return cv2.resize(rgb, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(rgb, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------- hair


def remove_hair(rgb: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """DullRazor-style hair removal: black-hat on the grey image, threshold, keep hair-shaped parts, inpaint.

    The black-hat kernel (~3.5% of the short side) is wider than a hair but narrower than a lesion,
    so a lesion's body gives no response. Its dots, globules and specks do respond; only long, thin
    responses are kept, so those diagnostic structures are not painted over. ``strength`` > 1 lowers the
    threshold (removes fainter hair), < 1 raises it.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < 8 or strength <= 0:
        return rgb.copy()
    rgb = np.ascontiguousarray(rgb)
    k = _hair_kernel(h, w)
    mask = hair_mask(rgb, strength).astype(np.uint8)
    if not mask.any():
        return rgb.copy()
    # Grow the mask by a pixel: hair edges are blended with skin and would leave dark fringes.
    mask = cv2.dilate(mask, _ellipse(3))
    return cv2.inpaint(rgb, mask, max(1, k // 4), cv2.INPAINT_TELEA)


def hair_mask(rgb: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Boolean mask of the pixels :func:`remove_hair` detects as hair (before it grows the mask for inpainting).

    Public so that the amount of hair can be measured as a statistic with exactly the removal's detector.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < 8 or strength <= 0:
        return np.zeros((h, w), bool)
    k = _hair_kernel(h, w)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    blackhat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, _ellipse(k))
    return _hair_shaped((blackhat > HAIR_THRESHOLD / strength).astype(np.uint8), k).astype(bool)


def _hair_kernel(h: int, w: int) -> int:
    """Black-hat kernel side: ~3.5% of the short side, wider than a hair, narrower than a lesion."""
    return _odd(0.035 * min(h, w))


def _hair_shaped(mask: np.ndarray, k: int) -> np.ndarray:
    """Components that are long (bounding-box side >= HAIR_MIN_LENGTH x short side) and thin (area per
    boundary pixel, about half the mean width, <= k / 4). Holds for a single hair and for a mesh of hairs,
    not for dots or blobs."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask
    boundary = mask & ~cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    n_boundary = np.bincount(labels.ravel(), weights=boundary.ravel(), minlength=n)
    length = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    area = stats[:, cv2.CC_STAT_AREA]
    keep = (length >= HAIR_MIN_LENGTH * min(mask.shape)) & (area <= max(2.0, k / 4) * n_boundary)
    keep[0] = False
    return keep[labels].astype(np.uint8)


# ----------------------------------------------------------------------------------------- vignette


def vignette_mask(rgb: np.ndarray) -> np.ndarray:
    """True where the pixel is usable skin; False on the dark dermatoscope ring and black corners.

    Dark means dark in every channel (a brown or blue lesion is not), and only dark regions connected
    to the image border count: a black lesion in the middle stays valid. An opening first cuts thin
    dark hairs that would otherwise link the border to the lesion.
    """
    h, w = rgb.shape[:2]
    dark = (rgb.max(axis=2) < VIGNETTE_LEVEL).astype(np.uint8)
    if not dark.any():
        return np.ones((h, w), bool)
    k = _odd(0.03 * min(h, w), minimum=5)  # wider than a hair at any resolution we segment at
    # Zero padding: with OpenCV's default padding a hair's end at the border would survive the opening.
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, _ellipse(k), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    ids = np.unique(border[border > 0])
    ids = ids[stats[ids, cv2.CC_STAT_AREA] >= 0.002 * h * w]  # specks are not a vignette
    if ids.size == 0:
        return np.ones((h, w), bool)
    invalid = np.isin(labels, ids).astype(np.uint8)
    # The ring fades into the skin; widen the invalid zone over that dim transition.
    invalid = cv2.dilate(invalid, _ellipse(k))
    return invalid == 0


# ------------------------------------------------------------------------------------- segmentation


def _seg_channel(rgb: np.ndarray, channel: SegChannel, valid: np.ndarray) -> np.ndarray:
    """A float32 image, 0..255 scale, in which the lesion is darker than the skin."""
    if channel == "blue":
        return rgb[..., 2].astype(np.float32)
    if channel == "grey":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    if channel == "lab_l":
        return lab[..., 0]
    if channel == "lab_lb":
        # Lesions are darker and yellower/browner (higher b*) than skin.
        return lab[..., 0] - (lab[..., 2] - 128.0)
    # "pca": first principal component of the valid pixels' colours, oriented like brightness.
    pixels = rgb[valid].astype(np.float32)
    mean = pixels.mean(axis=0)
    cov = np.cov((pixels - mean).T) if len(pixels) > 3 else np.eye(3)
    _, vecs = np.linalg.eigh(cov)
    axis = vecs[:, -1] * (1.0 if vecs[:, -1].sum() >= 0 else -1.0)
    proj = (rgb.astype(np.float32) - mean) @ axis.astype(np.float32)
    return proj / math.sqrt(3.0) + 128.0


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of a 1-D sample (own histogram, so masked-out pixels take no part)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return hi
    hist, edges = np.histogram(values, bins=256, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _centre_prior(h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian weight of each pixel's distance from the image centre (in image-size units)."""
    gy = np.exp(-0.5 * ((np.arange(h) - (h - 1) / 2) / (h * sigma)) ** 2)
    gx = np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (w * sigma)) ** 2)
    return np.outer(gy, gx)


def _pick_component(mask: np.ndarray, valid: np.ndarray, centre_sigma: float) -> np.ndarray:
    """The connected component carrying the most centre-prior mass (sum of per-pixel prior weights).

    Summing per pixel, rather than weighting a component's centroid, matters: the dim periphery of a
    dermoscopy image forms a ring whose centroid is central but whose pixels are all far out.
    """
    h, w = mask.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    score = np.bincount(labels.ravel(), weights=_centre_prior(h, w, centre_sigma).ravel(), minlength=n)
    score[0] = 0
    score[stats[:, cv2.CC_STAT_AREA] < MIN_LESION_FRACTION * max(1, int(valid.sum()))] = 0
    if score.max() <= 0:
        return np.zeros((h, w), bool)
    return labels == int(np.argmax(score))


def segment_lesion(
    rgb: np.ndarray,
    valid: np.ndarray | None = None,
    channel: SegChannel = "blue",
    centre_sigma: float = 0.15,
    threshold_shift: float = 0.4,
    refine: bool = True,
) -> np.ndarray:
    """Boolean lesion mask at the input resolution; all False when nothing plausible is found.

    Otsu's threshold is computed over the valid (inside-the-vignette) pixels only, so the black ring
    does not become the "dark" class. ``threshold_shift`` moves the threshold towards the skin mean
    (a fraction of the gap), to include the paler lesion rim that Otsu leaves out and that expert
    outlines include. The component kept carries the most mass of a Gaussian centre prior of width
    ``centre_sigma`` (image-size units). Defaults were tuned on HAM10000 (bench_segmentation.py).

    With ``refine``, a second Otsu pass inside the first region proposes a smaller lesion; it wins when
    its edge contrast is clearly higher. This rescues small lesions on skin with an illumination
    gradient, where the first split separates bright from dim skin rather than lesion from skin.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SEG_SIDE:
        return np.zeros((h, w), bool)
    rgb = np.ascontiguousarray(rgb)
    valid = np.ones((h, w), bool) if valid is None else valid.astype(bool)
    if int(valid.sum()) < MIN_VALID_FRACTION * h * w:
        return np.zeros((h, w), bool)

    x = _seg_channel(rgb, channel, valid)
    k = _odd(0.02 * min(h, w))
    x = cv2.GaussianBlur(x, (k, k), 0)
    lesion = _otsu_region(x, valid, valid, centre_sigma, threshold_shift)
    if refine and lesion.any():
        inner = _otsu_region(x, lesion, valid, centre_sigma, threshold_shift)
        if inner.any() and _edge_contrast(x, inner, valid) > REFINE_GAIN * _edge_contrast(x, lesion, valid):
            lesion = inner
    if not lesion.any() or not _plausible(x, lesion, valid):
        return np.zeros((h, w), bool)
    return lesion


def _otsu_region(
    x: np.ndarray, region: np.ndarray, valid: np.ndarray, centre_sigma: float, threshold_shift: float
) -> np.ndarray:
    """Dark class of Otsu over ``region``, cleaned, best component by centre prior, holes filled."""
    h, w = x.shape
    values = x[region]
    thr = _otsu(values)
    brighter = values[values > thr]
    if brighter.size:
        thr += threshold_shift * (float(brighter.mean()) - thr)
    mask = ((x <= thr) & region).astype(np.uint8)
    kernel = _ellipse(_odd(0.03 * min(h, w)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    lesion = _pick_component(mask, valid, centre_sigma)
    return _fill_holes(lesion) & valid if lesion.any() else lesion


def _edge_contrast(x: np.ndarray, region: np.ndarray, valid: np.ndarray) -> float:
    """Mean of ``x`` in a band just outside ``region`` minus the mean inside (0 if no band)."""
    k = _odd(0.05 * min(x.shape))
    band = (cv2.dilate(region.astype(np.uint8), _ellipse(k)) > 0) & ~region & valid
    if not band.any():
        return 0.0
    return float(x[band].mean() - x[region].mean())


def _plausible(x: np.ndarray, lesion: np.ndarray, valid: np.ndarray) -> bool:
    """Reject masks of uniform or noise images: enough skin left over, and a real contrast."""
    n_valid = int(valid.sum())
    skin = valid & ~lesion
    n_lesion, n_skin = int(lesion.sum()), int(skin.sum())
    if n_lesion < MIN_LESION_FRACTION * n_valid or n_skin < MIN_SKIN_FRACTION * n_valid:
        return False
    return float(x[skin].mean() - x[lesion].mean()) >= MIN_CONTRAST


# -------------------------------------------------------------------------------------------- boxes


def _place(cx: float, cy: float, side: int, h: int, w: int) -> Box:
    """Square of ``side`` centred near (cx, cy), shifted to lie inside an h x w image."""
    side = max(1, min(side, h, w))
    x0 = min(max(round(cx - side / 2), 0), w - side)
    y0 = min(max(round(cy - side / 2), 0), h - side)
    return x0, y0, x0 + side, y0 + side


def _fit_valid(box: Box, valid: np.ndarray, shape: tuple[int, ...], min_side: int) -> Box:
    """Shrink and/or shift ``box`` (full-resolution coords) so that it holds no vignette pixels
    (up to VIGNETTE_TOLERANCE).

    Works on the ``valid`` grid with an integral image: for each candidate side, from the requested one
    down to ``min_side``, all positions are scored at once and the feasible one nearest the requested
    centre is taken, provided the shift is small relative to the side. Returns ``box`` unchanged when no
    such box exists ("avoid where possible").
    """
    h, w = shape[:2]
    vh, vw = valid.shape
    if valid.all():
        return box
    sx, sy = w / vw, h / vh
    integral = cv2.integral((~valid).astype(np.uint8))
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    for side in np.linspace(x1 - x0, min_side, 8):
        a, b = max(1, round(side / sx)), max(1, round(side / sy))  # box size on the valid grid
        if a > vw or b > vh:
            continue
        sums = integral[b:, a:] - integral[:-b, a:] - integral[b:, :-a] + integral[:-b, :-a]
        feasible = sums <= VIGNETTE_TOLERANCE * a * b
        if not feasible.any():
            continue
        ys, xs = np.nonzero(feasible)
        dist = np.hypot((xs + a / 2) * sx - cx, (ys + b / 2) * sy - cy)
        best = int(np.argmin(dist))
        if dist[best] <= 0.25 * side:
            return _place((xs[best] + a / 2) * sx, (ys[best] + b / 2) * sy, round(side), h, w)
    return box


def centre_box(shape: tuple[int, ...], valid: np.ndarray | None = None) -> Box:
    """Largest centred square, shrunk (not below half the short side) to avoid the vignette."""
    h, w = shape[:2]
    box = _place(w / 2, h / 2, min(h, w), h, w)
    if valid is None or not valid.any():
        return box
    return _fit_valid(box, valid, shape, max(1, min(h, w) // 2))


def _clip_centre(centroid: float, lo: float, hi: float, side: int) -> float:
    """Centroid, moved just enough that [centre - side/2, centre + side/2] covers [lo, hi] (if it can)."""
    if hi - lo > side:
        return float(centroid)  # the lesion is wider than the crop: best keep its mass centred
    return float(np.clip(centroid, hi - side / 2, lo + side / 2))


def lesion_box(mask: np.ndarray, margin: float, shape: tuple[int, ...], valid: np.ndarray | None = None) -> Box:
    """Square crop box (x0, y0, x1, y1) in an image of ``shape`` around the lesion in ``mask``.

    ``mask`` (and ``valid``) may be at a lower resolution than ``shape``; coordinates are scaled. The side
    is the lesion's bounding-box extent plus ``margin`` x extent on each side, clipped to
    [MIN_BOX_FRACTION x short side, short side]. The box is centred on the lesion centroid as far as it
    still covers the lesion's bounding box, shifted to stay inside the image and, where possible,
    shrunk/shifted to stay inside the ``valid`` (non-vignette) area.
    """
    h, w = shape[:2]
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return centre_box(shape, valid)
    sx, sy = w / mask.shape[1], h / mask.shape[0]
    bx0, bx1 = xs.min() * sx, (xs.max() + 1) * sx
    by0, by1 = ys.min() * sy, (ys.max() + 1) * sy
    extent = max(bx1 - bx0, by1 - by0)
    min_side = max(1, round(MIN_BOX_FRACTION * min(h, w)))
    side = int(np.clip(round(extent * (1 + 2 * margin)), min_side, min(h, w)))
    # Centre on the lesion's centroid (its visual centre), but never so far off that the square stops
    # covering the lesion's bounding box.
    cx = _clip_centre((xs.mean() + 0.5) * sx, bx0, bx1, side)
    cy = _clip_centre((ys.mean() + 0.5) * sy, by0, by1, side)
    box = _place(cx, cy, side, h, w)
    if valid is None or not valid.any():
        return box
    # Shrinking below the lesion itself would cut it; the vignette matters less than the lesion.
    return _fit_valid(box, valid, shape, max(min_side, min(side, round(extent))))


# ------------------------------------------------------------------------------------------- colour


def shades_of_grey(rgb: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Shades-of-grey colour constancy: estimate the illuminant per channel as the Minkowski p-norm
    mean and scale channels so that it becomes neutral (overall brightness kept)."""
    x = rgb.astype(np.float32)
    norms = np.power(np.mean(np.power(x.reshape(-1, 3) / 255.0, power), axis=0), 1.0 / power)
    if not np.all(norms > 1e-6):
        return rgb.copy()  # a black channel carries no illuminant information
    gains = norms.mean() / norms
    return np.clip(x * gains + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- pipeline


@dataclass
class ProcessResult:
    image: np.ndarray       # image_size x image_size x 3, uint8
    box: Box                # (x0, y0, x1, y1) of the crop in the input image
    lesion_fraction: float  # lesion mask area / image area; NaN when not centred
    centered: bool          # False when segmentation found nothing plausible and a centre crop was used
    hair_fraction: float = math.nan  # pixels hair removal changed (> 20 levels) / all; NaN with removal off


def process_image(rgb: np.ndarray, cfg: PreprocessConfig) -> ProcessResult:
    """Crop (around the lesion, or centre), resize to ``cfg.image_size``, remove hair, colour-correct."""
    rgb = _as_rgb(rgb)
    h, w = rgb.shape[:2]
    small = _downscale(rgb)
    valid = vignette_mask(small) if cfg.vignette else None
    box, fraction, centered = None, math.nan, False
    if cfg.center:
        seg_input = remove_hair(small) if cfg.hair_removal else small
        mask = segment_lesion(seg_input, valid, channel=cfg.segmentation_channel)
        if mask.any():
            box = lesion_box(mask, cfg.margin, (h, w), valid)
            fraction, centered = float(mask.mean()), True
    if box is None:
        box = centre_box((h, w), valid)
    x0, y0, x1, y1 = box
    out = _resize(rgb[y0:y1, x0:x1], cfg.image_size, cfg.image_size)
    hair = math.nan
    if cfg.hair_removal:
        removed = remove_hair(out)
        hair = float((np.abs(removed.astype(np.int16) - out.astype(np.int16)).max(axis=2) > 20).mean())
        out = removed
    if cfg.color_constancy:
        out = shades_of_grey(out, cfg.color_constancy_power)
    return ProcessResult(np.ascontiguousarray(out), (int(x0), int(y0), int(x1), int(y1)), fraction, centered, hair)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {rgb.shape} dtype {rgb.dtype}")
    return np.ascontiguousarray(rgb)
