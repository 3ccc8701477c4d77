"""The downstream-validation experiment on HAM10000 (binary, 64 px) in a limited-data setting.

For each real training budget (default 100 and 500 images per class, a fixed sample of the patient-disjoint
train split; val and test stay the full real splits) run the regimes with the small from-scratch CNN over several
seeds, and print the summary tables with their confidence intervals.

Synthetic images: ``--synthetic DIR`` (e.g. a folder written by ``dermsynth generate``); the regimes then default to
``real, hybrid:0.5, augment:0.5, synthetic``, so the synthetic images are judged against real-only and against
cheap augmentation of the same real images. Without ``--synthetic`` only the augmentation controls run (``real,
augment:0.5, augment:1``): strongly augmented copies of the run's own real sample, which hold no information
beyond it, so this is a null check of the pipeline: a "gain" it shows is noise or augmentation.

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

import dermsynth
from dermsynth.data.config import PrepareConfig, PreprocessConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ham", type=Path, default=Path("/work/shared/data/ham10000"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/val-ham"))
    parser.add_argument("--prep", type=Path, help="An existing 64 px HAM10000 prepared folder (else made in --work).")
    parser.add_argument("--synthetic", type=Path, help="Synthetic class-folder tree (default: augmentation only).")
    parser.add_argument("--per-class", default="100,500")
    parser.add_argument("--epochs", default="30,15", help="Epochs per budget, in --per-class order.")
    parser.add_argument("--regimes", help="Comma-separated regimes (default: see above).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="stand-in HAM10000 data, 4 per class, 1 epoch, "
                        "1 seed: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        from dermsynth.testing.smoke_data import ham_like

        args.work = Path(tempfile.mkdtemp(prefix="val-ham-"))
        args.ham = ham_like(args.work / "ham", n=160)
        args.per_class, args.epochs, args.seeds, args.regimes = "4", "1", 1, "real,augment:0.5"
    started = time.monotonic()
    prep = args.prep or args.work / "prep"
    if args.prep is None:
        dermsynth.prepare(PrepareConfig(dataset="ham10000", root=args.ham, preprocess=PreprocessConfig(image_size=64),
                                        # the smoke stand-ins all look alike: as near-duplicates they would merge
                                        workers=2, group_duplicates=not args.smoke), prep, progress=False)
    results = {"load_at_start": os.getloadavg(), "settings": {}}
    default = "real,hybrid:0.5,augment:0.5,synthetic" if args.synthetic else "real,augment:0.5,augment:1"
    regimes = (args.regimes or default).split(",")
    budgets = [int(n) for n in args.per_class.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    for per_class, n_epochs in zip(budgets, epochs, strict=True):
        tick = time.monotonic()
        config = dermsynth.ValidateConfig(
            real=prep, synthetic=[args.synthetic] if args.synthetic else [], regimes=regimes, seeds=args.seeds,
            model="cnn",
            real_per_class=per_class, train={"epochs": n_epochs}, threads=args.threads)
        result = dermsynth.validate(config, args.work / f"per-class-{per_class}")
        seconds = round(time.monotonic() - tick, 1)
        results["settings"][per_class] = {"epochs": n_epochs, "seconds": seconds, "synthetic": str(args.synthetic),
                                          "ran": result.ran, "skipped": result.skipped}
        print(f"\n## {per_class} real images per class ({seconds:.0f} s)\n", flush=True)
        print((result.out / "summary.md").read_text(), flush=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_at_end"] = os.getloadavg()
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
