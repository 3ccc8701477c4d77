"""Throughput of the prepare stage's image work: decode (``load_rgb`` with JPEG draft decoding) +
``process_image``, in images/s, with 1 and 2 worker processes.

    python bench/bench_prepare_throughput.py --data ../shared/data/ham10000

Two sets: (a) HAM10000 JPEGs as stored (200x150); (b) large JPEGs synthesised into a temporary folder
(HAM10000 images upscaled to 6000x4000 with a little sensor-like noise, quality 90), standing in for
ISIC 2020 originals. Without the HAM10000 folder, (a) is skipped and (b) uses a synthetic lesion pattern.
Writing the output PNG is not timed (``--encode`` adds an in-memory PNG encode). The pool is started and
warmed up before timing, as in a long prepare run. A per-stage single-process profile of the large set
follows, including OpenCV's reduced-size decoder for comparison.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dermsynth.data.config import PreprocessConfig
from dermsynth.data.images import load_rgb
from dermsynth.data.preprocess import process_image

_CFG: PreprocessConfig | None = None
_ENCODE = False


def _init(settings: dict, encode: bool) -> None:
    global _CFG, _ENCODE
    cv2.setNumThreads(1)  # one process per core
    _CFG, _ENCODE = PreprocessConfig(**settings), encode


def _work(path: str) -> bool:
    assert _CFG is not None
    rgb = load_rgb(path, min_side=int(_CFG.draft_factor * _CFG.image_size))
    result = process_image(rgb, _CFG)
    if _ENCODE:
        Image.fromarray(result.image).save(io.BytesIO(), format="PNG", compress_level=4)
    return result.centered


def _synth_one(args: tuple[str | None, str, int, float]) -> int:
    """One 6000x4000 JPEG from a small image (or a synthetic lesion when ``source`` is None)."""
    source, target, seed, noise = args
    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    if source:
        small = np.asarray(Image.open(source).convert("RGB"))
    else:
        yy, xx = np.mgrid[0:150, 0:200]
        small = np.empty((150, 200, 3), np.float32)
        small[:] = (205, 160, 140)
        cx, cy = rng.uniform(80, 120), rng.uniform(60, 90)
        inside = ((xx - cx) / rng.uniform(20, 45)) ** 2 + ((yy - cy) / rng.uniform(15, 35)) ** 2 <= 1
        small[inside] = (110, 70, 55)
        small = np.clip(small + rng.normal(0, 6, small.shape), 0, 255).astype(np.uint8)
    big = cv2.resize(small, (6000, 4000), interpolation=cv2.INTER_CUBIC)
    big = np.clip(big + rng.normal(0, noise, big.shape).astype(np.float32), 0, 255).astype(np.uint8)
    Image.fromarray(big).save(target, quality=90)
    return os.path.getsize(target)


def make_large(folder: Path, sources: list[Path | None], noise: float, workers: int) -> list[Path]:
    targets = [folder / f"large_{i:03d}.jpg" for i in range(len(sources))]
    todo = [(str(s) if s else None, str(t), i, noise) for i, (s, t) in enumerate(zip(sources, targets, strict=True))
            if not t.is_file()]
    if todo:
        print(f"synthesising {len(todo)} 6000x4000 JPEGs in {folder} ...", flush=True)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_synth_one, todo))
    return targets


def throughput(paths: list[Path], cfg: PreprocessConfig, workers: int, repeat: int, encode: bool) -> list[float]:
    """Images/s of each of ``repeat`` timed passes over ``paths`` through a warmed-up pool."""
    files = [str(p) for p in paths]
    chunk = max(1, min(16, len(files) // (workers * 8)))
    rates = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(cfg.model_dump(), encode)) as pool:
        list(pool.map(_work, files[: 2 * workers]))  # start and warm every worker
        for _ in range(repeat):
            t0 = time.perf_counter()
            list(pool.map(_work, files, chunksize=chunk))
            rates.append(len(files) / (time.perf_counter() - t0))
    return rates


def profile(paths: list[Path], cfg: PreprocessConfig) -> None:
    """Single-process ms/image of each stage on the large set."""
    cv2.setNumThreads(1)
    min_side = int(cfg.draft_factor * cfg.image_size)
    sample = [str(p) for p in paths[:10]]

    def ms(fn) -> float:
        fn(sample[0])
        t0 = time.perf_counter()
        for path in sample:
            fn(path)
        return 1000 * (time.perf_counter() - t0) / len(sample)

    decoded = load_rgb(sample[0], min_side=min_side)
    rows = [
        ("load_rgb full decode (no draft)", ms(lambda p: load_rgb(p))),
        (f"load_rgb, PIL draft (min_side={min_side}) -> {decoded.shape[1]}x{decoded.shape[0]}",
         ms(lambda p: load_rgb(p, min_side=min_side))),
        ("cv2.imread IMREAD_REDUCED_COLOR_4 (same size, BGR)", ms(lambda p: cv2.imread(p, cv2.IMREAD_REDUCED_COLOR_4))),
        ("cv2.imread IMREAD_REDUCED_COLOR_8 (half that)", ms(lambda p: cv2.imread(p, cv2.IMREAD_REDUCED_COLOR_8))),
    ]
    images = [load_rgb(p, min_side=min_side) for p in sample]
    for label, kwargs in [
        ("process_image (defaults)", {}),
        ("process_image, hair_removal off", {"hair_removal": False}),
        ("process_image, center off", {"center": False}),
        ("process_image, + color_constancy", {"color_constancy": True}),
    ]:
        c = cfg.model_copy(update=kwargs)
        process_image(images[0], c)
        t0 = time.perf_counter()
        for image in images:
            process_image(image, c)
        rows.append((label, 1000 * (time.perf_counter() - t0) / len(images)))
    print("\nsingle-process profile, large set (ms/image):")
    print("| stage | ms |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--n-small", type=int, default=1000, help="HAM10000 images in set (a)")
    parser.add_argument("--n-large", type=int, default=40, help="6000x4000 JPEGs in set (b)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--draft-factor", type=float, default=PreprocessConfig().draft_factor)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per setting")
    parser.add_argument("--noise", type=float, default=3.0, help="noise sigma added to the large JPEGs")
    parser.add_argument("--cache", type=Path, help="keep the large JPEGs here (reused on the next run)")
    parser.add_argument("--encode", action="store_true", help="also encode the output PNG (in memory)")
    parser.add_argument("--smoke", action="store_true", help="8 small and 2 large stand-in images, one pass, "
                        "one worker: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        from dermsynth.testing.smoke_data import ham_like

        args.data = ham_like(Path(tempfile.mkdtemp(prefix="bench-prepare-")), n=8)
        args.n_small, args.n_large, args.repeat, args.workers, args.image_size = 8, 2, 1, [1], 64

    cfg = PreprocessConfig(image_size=args.image_size, draft_factor=args.draft_factor)
    images = args.data / "images"
    small = sorted(images.glob("ISIC_*.jpg"))[: args.n_small] if images.is_dir() else []
    if not small:
        print(f"HAM10000 images not found under {args.data}: set (a) skipped, set (b) uses a synthetic pattern")
    sources = [small[(i * 97) % len(small)] for i in range(args.n_large)] if small else [None] * args.n_large

    folder = args.cache or Path(tempfile.mkdtemp(prefix="dermsynth-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        large = make_large(folder, sources, args.noise, max(args.workers))
        sizes = [p.stat().st_size / 1e6 for p in large]
        print(f"cpu cores: {os.cpu_count()}, load average before timing: {os.getloadavg()[0]:.2f}")
        print(f"large set: {len(large)} x 6000x4000 JPEG q90, {statistics.mean(sizes):.2f} MB mean; "
              f"image_size {cfg.image_size}, draft_factor {cfg.draft_factor}, encode={args.encode}\n")
        print("| set | workers | img/s (best) | img/s (median) | passes |\n|---|---|---|---|---|")
        for name, paths in [("HAM10000 200x150", small), ("6000x4000 JPEG", large)]:
            if not paths:
                continue
            for workers in args.workers:
                rates = throughput(paths, cfg, workers, args.repeat, args.encode)
                print(f"| {name} ({len(paths)}) | {workers} | {max(rates):.1f} | {statistics.median(rates):.1f} "
                      f"| {', '.join(f'{r:.1f}' for r in rates)} |", flush=True)
        profile(large, cfg)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        if args.cache is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
