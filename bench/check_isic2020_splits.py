"""Split check on the real ISIC 2020 ground-truth CSV (33,126 images, 2,056 patients, 1.76 % malignant).

Runs the same reader, label and split code as `dermsynth prepare --dataset isic2020`, on metadata only (the
JPEGs are not needed), and prints patients per split, malignant % per split and the patient overlap.

    python bench/check_isic2020_splits.py [--csv ../shared/data/isic2020/ISIC_2020_Training_GroundTruth_v2.csv]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dermsynth.data.config import PrepareConfig, SplitConfig
from dermsynth.data.labels import assign_labels
from dermsynth.data.readers import read_isic2020
from dermsynth.data.splits import check_disjoint, grouped_split

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/data/isic2020/ISIC_2020_Training_GroundTruth_v2.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--val", type=float, default=0.15)
    parser.add_argument("--test", type=float, default=0.15)
    parser.add_argument("--seeds", type=int, default=3, help="check this many split seeds")
    parser.add_argument("--smoke", action="store_true", help="a stand-in CSV of 3,000 images: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        from dermsynth.testing.smoke_data import isic2020_csv

        args.csv = isic2020_csv(Path(tempfile.mkdtemp(prefix="isic-splits-")) / "ISIC_2020_Training_GroundTruth_v2.csv")
        args.seeds = 1
    if not args.csv.is_file():
        print(f"ISIC 2020 CSV not found: {args.csv}", file=sys.stderr)
        return 2
    config = PrepareConfig(dataset="isic2020", csv=args.csv)
    read = read_isic2020(config, require_images=False)
    frame, skipped = assign_labels(read.frame, "binary")
    total_rate = (frame["label"] == "malignant").mean() * 100
    print(f"{args.csv.name}: {len(frame)} images ({len(read.skipped)} duplicates dropped, {len(skipped)} unlabelled), "
          f"{frame['patient_id'].nunique()} patients, {total_rate:.2f}% malignant")
    worst = 0.0
    for seed in range(args.seeds):
        split = SplitConfig(val=args.val, test=args.test, seed=seed)
        started = time.perf_counter()
        frame["split"] = grouped_split(frame, split.val, split.test, split.seed)
        seconds = time.perf_counter() - started
        check_disjoint(frame)
        patients = frame.groupby("split")["patient_id"].agg(lambda s: set(s))
        overlap = sum(len(patients[a] & patients[b]) for a, b in [("train", "val"), ("train", "test"), ("val", "test")])
        print(f"\nseed {seed} (split in {seconds:.2f} s), patient overlap between splits: {overlap}")
        print(f"{'split':6} {'images':>7} {'share':>6} {'patients':>8} {'malignant':>9} {'mal %':>6} {'delta':>6}")
        for name in ("train", "val", "test"):
            part = frame[frame["split"] == name]
            rate = (part["label"] == "malignant").mean() * 100
            worst = max(worst, abs(rate - total_rate))
            print(f"{name:6} {len(part):7d} {len(part) / len(frame):6.3f} {part['patient_id'].nunique():8d} "
                  f"{(part['label'] == 'malignant').sum():9d} {rate:6.2f} {rate - total_rate:+6.2f}")
    print(f"\nlargest |malignant % - overall| over seeds and splits: {worst:.2f} points (requirement: <= 2)")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
