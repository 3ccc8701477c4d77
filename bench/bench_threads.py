"""The cost of reproducible training: steps/s of the default (a fixed thread count) vs `threads: adaptive`, on a
quiet machine and beside one competing job.

    python bench/bench_threads.py [--steps 300] [--rounds 2] [--prep PREP] [--json OUT]
    python bench/bench_threads.py --smoke       # a tiny model for a few steps: checks that the script runs

Each measurement is one `dermsynth train` of the cpu-fast preset (its own process, so every run starts from the
same thread state) for ``--steps`` steps on the embedded sample at 32 px. Settings alternate fixed, adaptive,
fixed, ... over ``--rounds`` so that drift in the machine's speed falls on both. The competing job is another
process that keeps one core busy with single-threaded matrix products, as a second user's job would; it starts
before the training and stops after it. Reported: steps/s per setting, the ratio adaptive / fixed in each
condition, and whether the fixed runs gave identical weights.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = {"model": {"image_size": 16, "block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [1],
                  "attention_head_dim": 8, "norm_num_groups": 8}, "batch_size": 8, "samples_per_class": 1,
        "sample_steps": 2}


def burn(stop: multiprocessing.synchronize.Event) -> None:
    """One core busy until ``stop``: single-threaded float32 matrix products."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def train_once(prep: Path, out: Path, settings: dict, steps: int) -> dict:
    config = out.with_suffix(".yaml")
    config.write_text(json.dumps(settings | {"max_steps": steps, "max_minutes": None, "sample_every": 10**6,
                                             "checkpoint_every": 10**6}))
    command = [sys.executable, "-m", "dermsynth", "train", "--data", str(prep), "--out", str(out), "--config",
               str(config), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    info = json.loads((out / "dermsynth_model.json").read_text())
    return {"steps_per_second": info["steps"] / info["seconds"], "wall_seconds": time.perf_counter() - started,
            "weights_sha256": info["weights_sha256"], "threads": info["threads"]}


def measure(prep: Path, work: Path, steps: int, rounds: int, loaded: bool, base: dict) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {"fixed": [], "adaptive": []}
    stop = multiprocessing.Event()
    competitor = multiprocessing.Process(target=burn, args=(stop,), daemon=True) if loaded else None
    if competitor is not None:
        competitor.start()
        time.sleep(2)  # let it reach a steady state
    try:
        for r in range(rounds):
            for name, threads in (("fixed", None), ("adaptive", "adaptive")):
                out = work / f"{'loaded' if loaded else 'quiet'}-{name}-{r}"
                results[name].append(train_once(prep, out, base | {"threads": threads}, steps))
    finally:
        if competitor is not None:
            stop.set()
            competitor.join(timeout=10)
    return results


def summarise(condition: str, results: dict[str, list[dict]]) -> dict:
    speed = {name: statistics.median(r["steps_per_second"] for r in runs) for name, runs in results.items()}
    hashes = {r["weights_sha256"] for r in results["fixed"]}
    return {"condition": condition, "fixed_steps_per_second": speed["fixed"],
            "adaptive_steps_per_second": speed["adaptive"], "adaptive_over_fixed": speed["adaptive"] / speed["fixed"],
            "fixed_runs_identical": len(hashes) == 1, "adaptive_switches": [r["threads"]["switches"]
                                                                            for r in results["adaptive"]],
            "runs": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per setting and condition")
    parser.add_argument("--prep", type=Path, help="a prepared folder at >= 32 px (default: the embedded sample)")
    parser.add_argument("--conditions", default="quiet,loaded", help="comma list of quiet, loaded")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps, one round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    base: dict = {}
    if args.smoke:
        args.steps, args.rounds, base = 4, 1, TINY
    if args.prep is None:
        from dermsynth.testing.smoke_data import sample_prepared

        args.prep = sample_prepared(work / "prep", size=32)
    if os.getloadavg()[0] >= 1 and not args.smoke:
        print(f"warning: load average {os.getloadavg()[0]:.2f} before the quiet measurement", file=sys.stderr)
    rows = [summarise(condition, measure(args.prep, work, args.steps, args.rounds, condition == "loaded", base))
            for condition in args.conditions.split(",")]
    print("| condition | fixed (default) steps/s | adaptive steps/s | adaptive / fixed | fixed runs identical |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['condition']} | {row['fixed_steps_per_second']:.2f} | {row['adaptive_steps_per_second']:.2f} "
              f"| {row['adaptive_over_fixed']:.2f} | {'yes' if row['fixed_runs_identical'] else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "rounds": args.rounds, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
