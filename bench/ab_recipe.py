"""A/B tests of from-scratch training recipes at an equal wall-clock budget.

    HF_HUB_OFFLINE=1 python bench/ab_recipe.py --prepared PREP --out DIR --variants bench/recipes.yaml \
        [--only NAME,NAME] [--budget-seconds 330] [--per-class 280] [--measure-rates] [--smoke]

Each variant is a set of training-config overrides on the ``cpu-fast`` preset (``bench/recipes.yaml``). Equal
wall-clock budget, yet reproducible: ``--measure-rates`` times each variant's training step on this machine
(a few steps after warm-up, median; run it on a quiet machine) and stores steps/s in ``DIR/rates.json``; each
variant then trains for ``budget_seconds x its steps/s`` steps, a step budget that gives the same model on a
busy machine. Every variant is trained, sampled (``--per-class`` images per class with the model's sampling
defaults) and audited (FID ratio, recall, coverage, C2ST per class, domain gap) against the prepared dataset;
one row per variant goes to ``DIR/results.csv`` and ``DIR/results.md``. Finished stages are skipped on a rerun.

A variant with ``sample_from: OTHER`` trains nothing: it samples OTHER's model (listed before it) with its own
``guidance_scale`` / ``sample_steps`` / ``sample_scheduler``, so sampling settings are compared on one model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch
import yaml

from dermsynth.audit.config import AuditConfig
from dermsynth.audit.run import audit
from dermsynth.data.config import PrepareConfig
from dermsynth.data.dataset import load_prepared
from dermsynth.data.prepare import prepare
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.qc import QCLimits
from dermsynth.diffusion.scratch.config import resolve_train_config
from dermsynth.diffusion.scratch.train import ScratchTrainer, load_training_data, train


def measure_rate(overrides: dict[str, Any], prepared: Path, threads: int, steps: int = 6) -> float:
    """Median steps/s of the variant's training step on the real training images (after 2 warm-up steps)."""
    cfg = resolve_train_config("cpu-fast", overrides, threads=threads)
    data = load_training_data(load_prepared(prepared), cfg.model.image_size, progress=False)
    trainer = ScratchTrainer(cfg, data, Path("/nonexistent"))
    torch.set_num_threads(threads)
    for _ in range(2):
        trainer.train_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


SAMPLING_KEYS = {"guidance_scale": "guidance", "sample_steps": "steps", "sample_scheduler": "scheduler"}


def run_variant(name: str, overrides: dict[str, Any], steps: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.out / name
    started = time.monotonic()
    sampling: dict[str, Any] = {}
    if "sample_from" in overrides:
        model = args.out / overrides["sample_from"] / "model"
        train_seconds = 0.0
        sampling = {arg: overrides[key] for key, arg in SAMPLING_KEYS.items() if key in overrides}
    else:
        model = folder / "model"
        settings = {**overrides, "max_steps": steps, "max_minutes": None, "threads": args.threads,
                    "checkpoint_every": max(steps // 4, 1), "sample_every": max(steps, 1)}
        train_seconds = train(args.prepared, model, "cpu-fast", settings, resume=True,
                              progress=not args.quiet).seconds
    # --smoke trains a few steps only: its samples are noise, which QC would (rightly) refuse.
    qc = QCLimits(min_std=0.0, max_saturated=1.0) if args.smoke else QCLimits()
    generate(model, folder / "synthetic", per_class=args.per_class, seed=0, progress=not args.quiet,
             qc_limits=qc, **sampling)
    smoke = {"c2st_folds": 2, "c2st_epochs": 1, "kid_subsets": 5, "positive_controls": 5} if args.smoke else {}
    report = audit(args.prepared, folder / "synthetic", folder / "audit",
                   AuditConfig(classifier_epochs=args.audit_epochs, **smoke), progress=not args.quiet)
    return summarize(name, steps, train_seconds, time.monotonic() - started, report)


def summarize(name: str, steps: int, train_seconds: float, seconds: float, report: dict[str, Any]) -> dict[str, Any]:
    overall = report["fidelity"]["overall"]
    syn, ref = overall["synthetic_vs_train"], overall["real_test_vs_train"]
    row: dict[str, Any] = {"variant": name, "steps": steps, "train_s": round(train_seconds), "total_s": round(seconds),
                           "fid": syn["fid"], "fid_real": ref["fid"], "fid_ratio": overall["fid_ratio"],
                           "precision": syn["precision"], "recall": syn["recall"], "recall_real": ref["recall"],
                           "coverage": syn["coverage"], "coverage_real": ref["coverage"]}
    for cls, entry in (report.get("c2st") or {}).get("per_class", {}).items():
        row[f"c2st_{cls}"] = entry["synthetic_vs_real"]["auroc"] if entry else math.nan
    for cls, entry in (report.get("domain_gap") or {}).get("per_class", {}).items():
        found = {r["statistic"]: r for r in entry["rows"]}.get("lesion_found")
        if found:
            row[f"lesion_found_{cls}"] = found["synthetic_mean"]
            row[f"lesion_found_real_{cls}"] = found["real_mean"]
    return row


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    """results.csv keeps the rows of variants run before (a later --only run adds to the table)."""
    frame = pd.DataFrame(rows)
    if (out / "results.csv").is_file():
        earlier = pd.read_csv(out / "results.csv")
        frame = pd.concat([earlier[~earlier["variant"].isin(frame["variant"])], frame], ignore_index=True)
    frame.to_csv(out / "results.csv", index=False)
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, help="a prepared dataset (--smoke: the embedded sample)")
    parser.add_argument("--out", type=Path, help="results folder (--smoke: a temporary folder)")
    parser.add_argument("--variants", type=Path, default=Path(__file__).with_name("recipes.yaml"))
    parser.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--budget-seconds", type=float, default=330.0, help="training wall-clock per variant")
    parser.add_argument("--per-class", type=int, default=280)
    parser.add_argument("--audit-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure-rates", action="store_true", help="time each variant's step first")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny budget and sample: checks that the script runs")
    args = parser.parse_args()
    variants: dict[str, dict[str, Any]] = yaml.safe_load(args.variants.read_text(encoding="utf-8"))
    if args.only:
        variants = {name: variants[name] for name in args.only.split(",")}
    if args.smoke:
        args.per_class, args.audit_epochs, args.budget_seconds = 8, 1, 2.0
        first, second = list(variants)[:2]
        variants = {first: _tiny(variants[first]), second: _tiny(variants[second]),
                    f"{first}-guidance-1": {"sample_from": first, "guidance_scale": 1.0, "sample_steps": 4}}
        args.out = args.out or Path(tempfile.mkdtemp(prefix="ab-recipe-"))
        if args.prepared is None:
            args.prepared = args.out / "prep"
            prepare(PrepareConfig(dataset="sample", preprocess={"image_size": 32}), args.prepared, progress=False)
    elif args.prepared is None or args.out is None:
        parser.error("--prepared and --out are required (except with --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    rates_path = args.out / "rates.json"
    rates = json.loads(rates_path.read_text()) if rates_path.is_file() else {}
    for name, overrides in variants.items():
        if "sample_from" in overrides:
            rates[name] = rates[overrides["sample_from"]]
        elif args.measure_rates or name not in rates:
            rates[name] = measure_rate(overrides, args.prepared, args.threads, steps=2 if args.smoke else 20)
            rates_path.write_text(json.dumps(rates, indent=1))
            print(f"{name}: {rates[name]:.2f} steps/s", flush=True)
    rows = []
    for name, overrides in variants.items():
        steps = max(int(args.budget_seconds * rates[name]), 2)
        rows.append(run_variant(name, overrides, steps, args))
        write_results(rows, args.out)


def _tiny(overrides: dict[str, Any]) -> dict[str, Any]:
    model = {"block_out_channels": [16, 32], "attention_levels": [1], "attention_head_dim": 16, "norm_num_groups": 8}
    return {**overrides, "model": {**overrides.get("model", {}), **model}, "batch_size": 8}


if __name__ == "__main__":
    main()
