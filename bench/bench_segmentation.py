"""Lesion segmentation and centring against HAM10000 ground-truth masks.

    python bench/bench_segmentation.py --data ../shared/data/ham10000 --n 1000

For a deterministic, seeded sample of images: Dice of ``segment_lesion`` (after vignette detection and
hair removal, exactly as ``process_image`` runs it) against the ground-truth mask, and the centring
error: distance between the centre of the ``lesion_box`` crop and the ground-truth mask centroid, in %
of the image diagonal. Several segmentation variants are compared; the first row is the default.

About 400 HAM10000 masks are palette PNGs whose palette maps index 255 to black: they must be decoded
through the palette (``convert("L")``); their raw indices look like inverted masks.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermsynth.data.preprocess import (
    centre_box,
    lesion_box,
    remove_hair,
    segment_lesion,
    vignette_mask,
)

MARGIN = 0.25  # PreprocessConfig default


@dataclass(frozen=True)
class Variant:
    name: str
    channel: str = "blue"
    hair: bool = True
    vignette: bool = True
    centre_sigma: float = 0.15
    threshold_shift: float = 0.4
    refine: bool = True


VARIANTS = [
    Variant("default: blue, shift 0.4, prior 0.15, refine"),
    Variant("grey channel", channel="grey"),
    Variant("Lab L channel", channel="lab_l"),
    Variant("Lab L - b* channel", channel="lab_lb"),
    Variant("PCA first component", channel="pca"),
    Variant("no hair removal before segmenting", hair=False),
    Variant("no vignette mask", vignette=False),
    Variant("no refinement pass", refine=False),
    Variant("plain Otsu threshold (shift 0)", threshold_shift=0.0),
    Variant("threshold shift 0.2", threshold_shift=0.2),
    Variant("threshold shift 0.6", threshold_shift=0.6),
    Variant("wide centre prior (sigma 0.25)", centre_sigma=0.25),
    Variant("largest component (sigma 10)", centre_sigma=10.0),
    Variant("baseline: plain Otsu, blue, largest component", threshold_shift=0.0, centre_sigma=10.0, refine=False),
]


def read_mask(path: Path) -> np.ndarray:
    """Boolean lesion mask (palette images decoded through their palette)."""
    return np.asarray(Image.open(path).convert("L")) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def centring_error(box: tuple[int, int, int, int], gt: np.ndarray) -> float:
    """Box centre to GT centroid, in % of the image diagonal."""
    h, w = gt.shape
    ys, xs = np.nonzero(gt)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return 100.0 * float(np.hypot(cx - (xs.mean() + 0.5), cy - (ys.mean() + 0.5))) / float(np.hypot(h, w))


def run_variant(v: Variant, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    valid = vignette_mask(rgb) if v.vignette else None
    seg_in = remove_hair(rgb) if v.hair else rgb
    mask = segment_lesion(
        seg_in, valid, channel=v.channel, centre_sigma=v.centre_sigma, threshold_shift=v.threshold_shift,
        refine=v.refine,
    )
    box = lesion_box(mask, MARGIN, rgb.shape, valid) if mask.any() else centre_box(rgb.shape, valid)
    return mask, box


def summarise(
    name: str, dices: list[float], errors: list[float], found: list[bool], hairy: np.ndarray, secs: float
) -> str:
    d, e = np.array(dices), np.array(errors)
    return (
        f"| {name} | {d.mean():.3f} | {np.median(d):.3f} | {(d >= 0.8).mean():.2f} | {d[hairy].mean():.3f} "
        f"| {np.mean(found):.3f} | {e.mean():.2f} | {np.median(e):.2f} | {np.percentile(e, 90):.2f} "
        f"| {1000 * secs / len(d):.1f} |"
    )


def hairiest(data: list[tuple[np.ndarray, np.ndarray]], fraction: float = 0.1) -> np.ndarray:
    """Indices of the images where hair removal changes the most pixels."""
    changed = [float((remove_hair(rgb) != rgb).any(axis=2).mean()) for rgb, _ in data]
    return np.argsort(changed)[::-1][: max(1, round(fraction * len(data)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--n", type=int, default=1000, help="images in the sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (over the sorted image ids)")
    parser.add_argument("--variants", default="all", help="'all', 'default', or comma-separated row numbers")
    parser.add_argument("--smoke", action="store_true", help="12 stand-in images, two variants: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        import tempfile

        from dermsynth.testing.smoke_data import ham_like

        args.data, args.n, args.variants = ham_like(Path(tempfile.mkdtemp(prefix="bench-seg-")), n=12), 12, "0,7"

    images, masks = args.data / "images", args.data / "masks"
    if not images.is_dir() or not masks.is_dir():
        print(f"HAM10000 data not found under {args.data} (need images/ and masks/); nothing to do.")
        return 0
    ids = sorted(p.name[: -len("_segmentation.png")] for p in masks.glob("ISIC_*_segmentation.png"))
    ids = [i for i in ids if (images / f"{i}.jpg").is_file()]
    if not ids:
        print(f"no image/mask pairs under {args.data}; nothing to do.")
        return 0
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(ids, size=min(args.n, len(ids)), replace=False))
    if args.variants == "all":
        variants = VARIANTS
    elif args.variants == "default":
        variants = VARIANTS[:1]
    else:
        variants = [VARIANTS[int(i)] for i in args.variants.split(",")]

    data = []
    for image_id in sample:
        rgb = np.asarray(Image.open(images / f"{image_id}.jpg").convert("RGB"))
        gt = read_mask(masks / f"{image_id}_segmentation.png")
        if gt.any():
            data.append((rgb, gt))
    print(f"{len(data)} images with a non-empty GT mask (seeded sample, seed {args.seed})")
    hairy = hairiest(data)
    print("centring error = |crop-box centre - GT centroid| in % of the image diagonal")
    print(f"'hairy 10%' = the {len(hairy)} images where remove_hair changes the most pixels\n")

    header = (
        "| variant | Dice mean | Dice median | Dice>=0.8 | Dice hairy 10% | found | centre err mean | median | p90 "
        "| ms/img |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    print(header)
    reference: list[tuple[str, Callable[[np.ndarray, np.ndarray], tuple[int, int, int, int]]]] = [
        ("(reference) box from GT mask", lambda rgb, gt: lesion_box(gt, MARGIN, gt.shape, vignette_mask(rgb))),
        ("(reference) plain centre crop", lambda rgb, gt: centre_box(gt.shape, vignette_mask(rgb))),
    ]
    for v in variants:
        dices, errors, found = [], [], []
        t0 = time.perf_counter()
        for rgb, gt in data:
            mask, box = run_variant(v, rgb)
            dices.append(dice(mask, gt))
            errors.append(centring_error(box, gt))
            found.append(bool(mask.any()))
        print(summarise(v.name, dices, errors, found, hairy, time.perf_counter() - t0), flush=True)
    for name, boxer in reference:
        errors = [centring_error(boxer(rgb, gt), gt) for rgb, gt in data]
        e = np.array(errors)
        print(f"| {name} | - | - | - | - | - | {e.mean():.2f} | {np.median(e):.2f} | {np.percentile(e, 90):.2f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
