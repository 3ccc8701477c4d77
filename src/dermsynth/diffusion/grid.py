"""Image grids with a class name at the start of each row (training samples, docs figures)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (NaN as 0) to 8-bit pixels, rounded."""
    return (np.clip(np.nan_to_num(images), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(images: np.ndarray, rows: list[str], scale: int | None = None, gap: int = 2) -> Image.Image:
    """``images`` (len(rows) * columns, H, W, 3) floats in [0, 1], row-major; small images are enlarged."""
    count, height, width = images.shape[:3]
    columns = count // len(rows)
    scale = scale or max(1, 64 // height)
    cell_h, cell_w = height * scale, width * scale
    font = ImageFont.load_default()
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(name, font=font)) for name in rows) + 8
    grid = Image.new("RGB", (label_w + columns * (cell_w + gap), len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    pixels = to_uint8(images)
    for r, name in enumerate(rows):
        top = r * (cell_h + gap)
        draw.text((4, top + cell_h // 2 - 6), name, fill="black", font=font)
        for c in range(columns):
            tile = Image.fromarray(pixels[r * columns + c]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
            grid.paste(tile, (label_w + c * (cell_w + gap), top))
    return grid
