"""Audit speed at scale: feature extraction, feature nearest-neighbour search, and the pixel memorization search,
for N synthetic x N training images (default 10,000 x 10,000, from HAM10000 at 64 px).

    python bench/bench_audit.py --data ../shared/data/ham10000 --n 10000

Queries are the training images themselves, JPEG-recompressed and mirrored: every query then has a true
near-copy, the slowest case for verification and a check that all are found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dermsynth.audit.memorization import TrainingIndex, light_copies
from dermsynth.classify.classifiers import build_classifier, extract_features
from dermsynth.classify.transforms import load_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ham10000")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="24 stand-in images at 32 px: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        from dermsynth.testing.smoke_data import ham_like

        args.data, args.n, args.size = ham_like(Path(tempfile.mkdtemp(prefix="bench-audit-")), n=24), 24, 32
    files = sorted((args.data / "images").glob("*.jpg"))[: args.n]
    if not files:
        print(f"no images under {args.data / 'images'}", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    t = time.perf_counter()
    train = np.stack([load_image(p, args.size) for p in files])
    print(f"decode {len(train)} images: {time.perf_counter() - t:.1f} s")
    copies = light_copies(train, seed=0)
    queries = np.stack([copies["jpeg"][i] if i % 2 else copies["hflip"][i] for i in range(len(train))])

    classifier = build_classifier("cnn", ["benign", "malignant"], image_size=args.size)
    t = time.perf_counter()
    train_features = extract_features(classifier, list(train), batch_size=256)
    query_features = extract_features(classifier, list(queries), batch_size=256)
    seconds = time.perf_counter() - t
    print(f"features ({train_features.shape[1]}-d, cnn preset): {2 * len(train) / seconds:.0f} img/s")

    t = time.perf_counter()
    a = torch.nn.functional.normalize(torch.from_numpy(query_features), dim=1)
    b = torch.nn.functional.normalize(torch.from_numpy(train_features), dim=1)
    best = torch.cat([(a[i:i + 1024] @ b.T).max(dim=1).indices for i in range(0, len(a), 1024)])
    print(f"feature NN search {len(a)} x {len(b)} (chunked matmul): {time.perf_counter() - t:.2f} s, "
          f"top-1 = source for {(best.numpy() == np.arange(len(a))).mean():.1%}")

    t = time.perf_counter()
    index = TrainingIndex(train, train_features)
    built = time.perf_counter() - t
    t = time.perf_counter()
    result = index.search(queries, query_features)
    searched = time.perf_counter() - t
    found = (result.pixel_index == np.arange(len(queries))).mean()
    print(f"pixel index build: {built:.1f} s; search {len(queries)} x {len(train)} (retrieval over 24 flips/crops "
          f"per training image + verification of up to 20 candidates): {searched:.1f} s "
          f"({len(queries) / searched:.0f} queries/s); nearest = source for {found:.1%}; "
          f"median similarity {np.median(result.pixel_similarity):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
