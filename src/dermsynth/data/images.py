"""Robust image decoding: any mode a user's folder may hold becomes 8-bit RGB, or a clear, countable error.

Large JPEGs (ISIC 2020 originals are ~6000x4000) are decoded at reduced size through libjpeg's DCT
scaling (PIL ``draft``), which is several times faster than a full decode followed by a resize.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, PngImagePlugin

# Refuse absurd images instead of exhausting memory (PIL warns above ~89 MP and raises at twice that).
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class ImageReadError(Exception):
    """An image that cannot be used; ``reason`` is a short, countable category."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}{f' ({detail})' if detail else ''}")


def _to_uint8_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Flatten transparency onto black, the colour of a dermatoscope's surround.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        image = image.convert("RGB")  # L, CMYK, YCbCr, P, 1 ...
    return np.asarray(image)


def load_rgb(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 array.

    ``min_side`` lets JPEGs decode at a reduced scale whose short side is still >= ``min_side``.
    Raises :class:`ImageReadError` for missing, corrupt, truncated or oversized files.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if min_side and image.format == "JPEG":
                    w, h = image.size
                    scale = min_side / min(w, h)
                    if scale < 1:
                        image.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
                image.load()
                return _to_uint8_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, "too large", str(exc).split(".")[0]) from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL raises OSError for truncated data, UnidentifiedImageError (an OSError) for non-images.
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise ImageReadError(path, reason, type(exc).__name__) from None


def save_image(
    array: np.ndarray, path: str | Path, text: dict[str, str] | None = None, quality: int = 95
) -> None:
    """Save an RGB uint8 array; PNGs carry ``text`` as tEXt chunks. The caller handles atomicity."""
    path = Path(path)
    image = Image.fromarray(np.ascontiguousarray(array))
    if path.suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, str(value))
        image.save(path, format="PNG", pnginfo=info, compress_level=4)
    else:
        image.save(path, format="JPEG", quality=quality)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def square_resize(array: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an HxWx3 uint8 array to a square and resize it to ``size`` (bicubic, antialiased: PIL widens
    the filter when shrinking). Every stage brings images to a square this one way, so a generator and the
    classifiers and the audit that judge it see the same pixels."""
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    array = array[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(array)
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` (raises :class:`ImageReadError`) and square-resize it."""
    return square_resize(load_rgb(path, min_side=size), size)


def load_training_square(path: str | Path, size: int) -> np.ndarray:
    """:func:`load_image` for a generator's training images: an unreadable one is a one-line error."""
    from dermsynth.errors import DermsynthError

    try:
        return load_image(path, size)
    except ImageReadError as exc:
        raise DermsynthError(f"training image {exc}; re-run 'dermsynth prepare'") from None


def sharpness(rgb: np.ndarray) -> float:
    """RMS of the grey image's Laplacian / RMS contrast (sd) of the grey image (NaN for a flat image).

    Dividing by the contrast keeps it from tracking brightness or contrast (darker images do not look blurrier);
    the square root of the variance ratio has a lighter tail across images than the ratio itself, so a blurred set
    stands out by a larger standardised difference (measured on the embedded sample: d about -2.2 vs -1.3 for a
    Gaussian blur of sigma 1 px at 64 px). It depends on resolution: compare images at one size only.
    """
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    variance = float(grey.var())
    if variance < 1e-6:
        return math.nan
    return math.sqrt(float(cv2.Laplacian(grey, cv2.CV_32F, ksize=1).var()) / variance)
