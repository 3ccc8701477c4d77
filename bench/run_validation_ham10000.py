"""The downstream-validation experiment on HAM10000 (binary, 64 px) in a limited-data setting.

For each real training budget (default 100 and 500 images per class, a fixed sample of the patient-disjoint
train split; val and test stay the full real splits) run ``real``, ``hybrid:0.5`` and ``synthetic`` with the
small from-scratch CNN over several seeds, and print the summary tables with their confidence intervals.

Synthetic images: ``--synthetic DIR`` (e.g. a folder written by ``dermsynth generate``), or, when omitted, a
stand-in that is NOT a diffusion model: one classically augmented copy (random dihedral transform, zoom crop,
colour jitter) of each real training image of the sample, written as a class-folder tree. The stand-in holds no
information beyond the real sample, so it is a null check of the pipeline: a "gain" it shows is noise.

    HF_HUB_OFFLINE=1 nohup python bench/run_validation_ham10000.py --work /tmp/val-ham > /tmp/val-ham.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from PIL import Image

import dermsynth
from dermsynth.data.config import PrepareConfig, PreprocessConfig
from dermsynth.data.dataset import load_prepared, subsample_per_class
from dermsynth.evaluate.datasets import real_frame
from dermsynth.evaluate.transforms import load_image


def augmented_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A classical augmentation of one image: dihedral transform, 75-100 % zoom crop, colour jitter 0.2."""
    size = image.shape[0]
    image = np.rot90(image[:, ::-1] if rng.random() < 0.5 else image, rng.integers(4))
    side = round(size * rng.uniform(0.75, 1.0))
    top, left = rng.integers(0, size - side + 1, 2)
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    x = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    x = x * rng.uniform(0.8, 1.2)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - grey[..., None]) * rng.uniform(0.8, 1.2) + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def build_standin(prep: Path, per_class: int, out: Path) -> Path:
    """One augmented copy of every image of the real ``per_class`` sample (subsample seed 0, as validate uses)."""
    if (out / "DONE").is_file():
        return out
    prepared = load_prepared(prep)
    sample = subsample_per_class(real_frame(prepared, "train"), per_class, 0, prepared.classes)
    rng = np.random.default_rng(1234)
    for row in sample.itertuples():
        label = prepared.classes[row.target]
        target = out / "images" / label / f"aug_{row.image_id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(augmented_copy(load_image(row.path, 64), rng)).save(target)
    (out / "README.txt").write_text(
        "NOT diffusion: classical augmentations (dihedral, zoom crop, colour jitter) of the real training sample "
        f"({per_class} per class, subsample seed 0) of {prep}; a stand-in for synthetic images.\n")
    (out / "DONE").write_text("ok\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ham", type=Path, default=Path("/work/shared/data/ham10000"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/val-ham"))
    parser.add_argument("--prep", type=Path, help="An existing 64 px HAM10000 prepared folder (else made in --work).")
    parser.add_argument("--synthetic", type=Path, help="Synthetic class-folder tree; default: the stand-in.")
    parser.add_argument("--per-class", default="100,500")
    parser.add_argument("--epochs", default="30,15", help="Epochs per budget, in --per-class order.")
    parser.add_argument("--regimes", default="real,hybrid:0.5,synthetic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="stand-in HAM10000 data, 4 per class, 1 epoch, "
                        "1 seed: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        from smoke_data import ham_like

        args.work = Path(tempfile.mkdtemp(prefix="val-ham-"))
        args.ham = ham_like(args.work / "ham", n=160)
        args.per_class, args.epochs, args.seeds, args.regimes = "4", "1", 1, "real,hybrid:0.5"
    started = time.monotonic()
    prep = args.prep or args.work / "prep"
    if args.prep is None:
        dermsynth.prepare(PrepareConfig(dataset="ham10000", root=args.ham, preprocess=PreprocessConfig(image_size=64),
                                        # the smoke stand-ins all look alike: as near-duplicates they would merge
                                        workers=2, group_duplicates=not args.smoke), prep, progress=False)
    results = {"load_at_start": os.getloadavg(), "settings": {}}
    budgets = [int(n) for n in args.per_class.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    for per_class, n_epochs in zip(budgets, epochs, strict=True):
        tick = time.monotonic()
        synthetic = args.synthetic or build_standin(prep, per_class, args.work / f"standin-{per_class}")
        config = dermsynth.ValidateConfig(
            real=prep, synthetic=[synthetic], regimes=args.regimes.split(","), seeds=args.seeds, model="cnn",
            real_per_class=per_class, train={"epochs": n_epochs}, threads=args.threads)
        result = dermsynth.validate(config, args.work / f"per-class-{per_class}")
        seconds = round(time.monotonic() - tick, 1)
        results["settings"][per_class] = {"epochs": n_epochs, "seconds": seconds, "synthetic": str(synthetic),
                                          "ran": result.ran, "skipped": result.skipped}
        print(f"\n## {per_class} real images per class ({seconds:.0f} s)\n", flush=True)
        print((result.out / "summary.md").read_text(), flush=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_at_end"] = os.getloadavg()
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
