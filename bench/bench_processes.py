"""Wall time of `generate` and `validate` in one process against two processes under torchrun, same machine.

    HF_HUB_OFFLINE=1 python bench/bench_processes.py --model MODEL --prep PREP [--per-class 200] [--rounds 2]

One process uses torch's default thread count (all cores); two processes split the cores between them (the rule
of ``dermsynth.distributed``). Each round runs both, alternating which goes first, into fresh folders; medians
are reported with the ratio two / one (below 1: two processes are faster). The images of both are compared
pixel by pixel, and the two validate summaries value by value (at equal thread counts they are identical:
tests/test_distributed.py; here the thread counts differ, so float rounding may differ too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def launch(args: list[str], processes: int) -> float:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # dermsynth sets threads itself
    tick = time.monotonic()
    done = subprocess.run([*launcher, "-m", "dermsynth", *args, "--quiet"], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - tick
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} with {processes} process(es) failed:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    return seconds


def same_pixels(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in (a / "images").glob("*/*.png"))
    if files != sorted(p.relative_to(b) for p in (b / "images").glob("*/*.png")):
        return False
    return all(np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f))) for f in files)


def same_summary(a: Path, b: Path) -> bool:
    first, second = (pd.read_csv(p / "validation" / "summary.csv") for p in (a, b))
    return first.equals(second)


def measure(name: str, command, compare, rounds: int, work: Path) -> dict:
    times: dict[int, list[float]] = {1: [], 2: []}
    identical = []
    for round_ in range(rounds):
        order = (1, 2) if round_ % 2 == 0 else (2, 1)
        outs = {}
        for processes in order:
            outs[processes] = work / f"{name}-{round_}-{processes}p"
            shutil.rmtree(outs[processes], ignore_errors=True)
            times[processes].append(launch(command(outs[processes]), processes))
        identical.append(compare(outs[1], outs[2]))
    one, two = statistics.median(times[1]), statistics.median(times[2])
    return {"stage": name, "one_process_s": round(one, 1), "two_processes_s": round(two, 1),
            "ratio_two_over_one": round(two / one, 3), "identical": all(identical), "times": times}


def smoke_inputs(work: Path) -> tuple[Path, Path, dict]:
    from dermsynth.testing.smoke_data import sample_prepared, tiny_scratch_model

    prep = sample_prepared(work / "prep", size=16)
    model = work / "model"
    tiny_scratch_model(prep, model)
    tiny = {"architecture": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
            "train": {"epochs": 1, "batch_size": 16, "precision": "no"}, "bootstrap": 100}
    return model, prep, tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="A dermsynth model folder (generate).")
    parser.add_argument("--prep", type=Path, help="A prepared dataset (validate).")
    parser.add_argument("--per-class", type=int, default=200, help="generate: images per class.")
    parser.add_argument("--real-per-class", type=int, default=100, help="validate: real training images per class.")
    parser.add_argument("--epochs", type=int, default=5, help="validate: epochs per run.")
    parser.add_argument("--seeds", type=int, default=2, help="validate: seeds (x 2 regimes = runs).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in model and data, 1 round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    extra: dict = {}
    if args.smoke:
        args.model, args.prep, extra = smoke_inputs(work)
        args.per_class, args.real_per_class, args.seeds, args.rounds = 4, 8, 1, 1
    if args.model is None or args.prep is None:
        parser.error("--model and --prep are needed (or --smoke)")
    settings = {"real": str(args.prep), "regimes": ["real", "augment:0.5"], "seeds": args.seeds, "model": "cnn",
                "real_per_class": args.real_per_class, "train": {"epochs": args.epochs, "track_test": False}} | extra
    config = work / "validate.yaml"
    config.write_text(yaml.safe_dump(settings))
    load = os.getloadavg()
    rows = [
        measure("generate", lambda out: ["generate", "--model", str(args.model), "--out", str(out), "--per-class",
                                         str(args.per_class)], same_pixels, args.rounds, work),
        measure("validate", lambda out: ["validate", "--config", str(config), "--out", str(out)], same_summary,
                args.rounds, work),
    ]
    print(f"load average at start {load[0]:.2f}; {os.cpu_count()} CPUs; {args.rounds} round(s), medians\n")
    print("| stage | 1 process (s) | 2 processes (s) | 2 / 1 | identical results |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['stage']} | {row['one_process_s']} | {row['two_processes_s']} | "
              f"{row['ratio_two_over_one']:.2f} | {'yes' if row['identical'] else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"load_at_start": load, "rows": rows}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    if not all(row["identical"] for row in rows):  # possible: 1 thread and 2 threads may round differently
        print("\nresults differ between 1 and 2 processes (each uses another thread count here)")


if __name__ == "__main__":
    main()
