"""Side-by-side grids: real training images beside one or more synthetic folders, one block per class.

    python bench/compare_grids.py --prepared PREP --synthetic old=SYN_A --synthetic new=SYN_B --out grid.png \
        [--per-class 16] [--size 64] [--smoke]

Each block is one row per source ("real", then each NAME=FOLDER in order), ``--per-class`` images in a row, all
shown at ``--size`` px (nearest-neighbour enlargement, so a 32 px image keeps its own pixels). Images are the
first of each class by name, so the same command draws the same grid.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import list_images, load_rgb


def _tile(path: Path, size: int) -> np.ndarray:
    image = Image.fromarray(load_rgb(path))
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    method = Image.Resampling.NEAREST if side < size else Image.Resampling.BOX
    return np.asarray(image.resize((size, size), method))


def _synthetic_paths(folder: Path, label: str) -> list[Path]:
    for root in (folder / "images" / label, folder / label):
        if root.is_dir():
            return list_images(root)
    return []


def compare_grid(prepared: Path, synthetic: list[tuple[str, Path]], out: Path, per_class: int = 16,
                 size: int = 64) -> Path:
    dataset = load_prepared(prepared)
    train = dataset.split("train")
    rows, names = [], []
    for label in dataset.classes:
        real_paths = dataset.paths(train[train["label"] == label].sort_values("image_id").head(per_class))
        sources = [("real", list(real_paths))] + [(name, _synthetic_paths(folder, label)[:per_class])
                                                 for name, folder in synthetic]
        for name, paths in sources:
            row = np.full((size, per_class * size, 3), 255, np.uint8)
            for i, path in enumerate(paths):
                row[:, i * size:(i + 1) * size] = _tile(path, size)
            rows.append(row)
            names.append(f"{label}: {name}")
    margin = 150
    grid = Image.new("RGB", (margin + per_class * size, len(rows) * (size + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        grid.paste(Image.fromarray(row), (margin, i * (size + 4)))
        draw.text((6, i * (size + 4) + size // 2 - 6), name, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path)
    parser.add_argument("--synthetic", action="append", default=[], help="NAME=FOLDER, repeatable")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="a grid of the embedded sample beside itself")
    args = parser.parse_args()
    if args.smoke:
        _smoke()
        return
    pairs = [(text.split("=", 1)[0], Path(text.split("=", 1)[1])) for text in args.synthetic]
    print(compare_grid(args.prepared, pairs, args.out, args.per_class, args.size))


def _smoke() -> None:
    from dermsynth.data.config import PrepareConfig
    from dermsynth.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prep = Path(tmp) / "prep"
        prepare(PrepareConfig(dataset="sample", preprocess={"image_size": 32}), prep, progress=False)
        out = compare_grid(prep, [("same", prep)], Path(tmp) / "grid.png", per_class=4, size=32)
        assert Image.open(out).size == (150 + 4 * 32, 4 * 36)
        print("smoke ok")


if __name__ == "__main__":
    main()
