"""Classifier benchmarks for the validation stage.

``throughput``: training images/s of dermsynth's loop vs transformers' ``Trainer`` on the same model, batch,
precision, optimiser, schedule, gradient clipping and augmentation (both get the same batched augmentation, the
Trainer through its data collator), alternated A/B/A/B in one process; steady state after warm-up steps.

``sweep``: learning-rate sweep of a from-scratch preset on a prepared dataset, scored on the validation split
only (the test split is not touched), to set the preset defaults.

    HF_HUB_OFFLINE=1 python bench/bench_classifier.py throughput --model cnn --size 64 --steps 40 --repeats 3
    HF_HUB_OFFLINE=1 python bench/bench_classifier.py sweep --real PREP --per-class 500 --lrs 3e-4,1e-3,3e-3
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, get_linear_schedule_with_warmup

from dermsynth.classify.classifiers import build_classifier
from dermsynth.classify.config import ClassifierTrainConfig
from dermsynth.classify.training import make_optimizer, resolve_settings, train_batch
from dermsynth.classify.transforms import Jitter, augment, normalize


def _data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 2, n)


def ours(model: str, size: int, batch: int, steps: int, warmup: int, precision: str) -> float:
    """Steady-state images/s of dermsynth's training step (train_batch + AdamW + schedule + clip)."""
    torch.manual_seed(0)
    classifier = build_classifier(model, ["benign", "malignant"], size)
    settings = resolve_settings(ClassifierTrainConfig(precision=precision, batch_size=batch), model, "cpu")
    images, targets = _data(steps * batch, size)
    optimizer = make_optimizer(classifier.model, settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    generator = torch.Generator().manual_seed(0)
    classifier.model.train()
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        part = slice(step * batch, (step + 1) * batch)
        loss = train_batch(classifier, images[part], targets[part], settings, generator, "cpu")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(classifier.model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return (steps - warmup) * batch / (time.perf_counter() - start)


class _Clock(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def trainer(model: str, size: int, batch: int, steps: int, warmup: int, precision: str) -> float:
    """Steady-state images/s of transformers' Trainer with the same model, data and augmentation."""
    torch.manual_seed(0)
    classifier = build_classifier(model, ["benign", "malignant"], size)
    images, targets = _data(steps * batch, size)
    generator = torch.Generator().manual_seed(0)
    dataset = [{"image": images[i], "label": int(targets[i])} for i in range(len(targets))]

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        x = augment(torch.from_numpy(np.stack([item["image"] for item in items])), generator, Jitter())
        return {"pixel_values": normalize(x, classifier.spec),
                "labels": torch.tensor([item["label"] for item in items])}

    clock = _Clock(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-3,
            weight_decay=0.05, warmup_steps=steps // 10, lr_scheduler_type="linear", max_grad_norm=1.0,
            bf16=precision == "bf16", use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
            dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, seed=0)
        Trainer(model=classifier.model, args=args, train_dataset=dataset, data_collator=collate,
                callbacks=[clock]).train()
    return (steps - warmup) * batch / (clock.end - clock.start)


def throughput(args: argparse.Namespace) -> dict:
    results, load_before = {}, os.getloadavg()
    for precision in args.precision.split(","):
        a, b = [], []
        for _ in range(args.repeats):  # alternate so that load changes hit both sides alike
            a.append(ours(args.model, args.size, args.batch, args.steps, args.warmup, precision))
            b.append(trainer(args.model, args.size, args.batch, args.steps, args.warmup, precision))
        results[precision] = {"ours_img_s": [round(v, 1) for v in a], "trainer_img_s": [round(v, 1) for v in b],
                              "ratio_of_medians": round(statistics.median(a) / statistics.median(b), 3),
                              "ratio_per_pair": [round(x / y, 3) for x, y in zip(a, b, strict=True)]}
        print(precision, results[precision], flush=True)
    return {"model": args.model, "size": args.size, "batch": args.batch, "steps": args.steps,
            "warmup": args.warmup, "load_before": load_before, "results": results}


def sweep(args: argparse.Namespace) -> dict:
    """Validation AUROC per learning rate (best epoch), real images only."""
    from dermsynth.classify.training import fit
    from dermsynth.data.dataset import load_prepared, subsample_per_class
    from dermsynth.evaluate.datasets import ImageBank, real_frame

    prepared = load_prepared(args.real)
    size = prepared.image_size
    train = subsample_per_class(real_frame(prepared, "train"), args.per_class, 0, prepared.classes)
    val = real_frame(prepared, "val")
    if args.val_max and len(val) > args.val_max:
        val = val.sample(n=args.val_max, random_state=0)
    bank = ImageBank(size)
    bank.load(list(train["path"]) + list(val["path"]), "loading", progress=False)
    rows = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            classifier = build_classifier(args.model, prepared.classes, size)
            config = ClassifierTrainConfig(learning_rate=lr, epochs=args.epochs, patience=None, track_test=False)
            settings = resolve_settings(config, args.model, "cpu")
            result = fit(classifier, bank.image_set(train), bank.image_set(val), settings, seed)
            best = result.history["val_auroc"].max()
            rows.append({"lr": lr, "seed": seed, "best_val_auroc": round(float(best), 4),
                         "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
                         "val_auroc_by_epoch": result.history["val_auroc"].round(4).tolist()})
            print(json.dumps(rows[-1]), flush=True)
    return {"model": args.model, "per_class": args.per_class, "epochs": args.epochs, "val_images": len(val),
            "rows": rows, "mean_best_val_auroc": {lr: statistics.mean(r["best_val_auroc"] for r in rows
                                                                       if r["lr"] == lr)
                                                  for lr in {r["lr"] for r in rows}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--model", default="cnn")
    tp.add_argument("--size", type=int, default=64)
    tp.add_argument("--batch", type=int, default=32)
    tp.add_argument("--steps", type=int, default=40)
    tp.add_argument("--warmup", type=int, default=5)
    tp.add_argument("--repeats", type=int, default=3)
    tp.add_argument("--precision", default="bf16,no")
    sw = sub.add_parser("sweep")
    sw.add_argument("--real", help="a prepared dataset (--smoke: the embedded sample)")
    sw.add_argument("--model", default="cnn")
    sw.add_argument("--per-class", type=int, default=500)
    sw.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    sw.add_argument("--epochs", type=int, default=20)
    sw.add_argument("--seeds", type=int, default=1)
    sw.add_argument("--val-max", type=int, default=600)
    for p in (tp, sw):
        p.add_argument("--out", type=Path, help="Write the results as JSON here.")
        p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.smoke and args.mode == "throughput":
        args.size, args.batch, args.steps, args.warmup, args.repeats = 32, 4, 2, 1, 1
    elif args.smoke:
        from dermsynth.testing.smoke_data import sample_prepared

        args.real = str(sample_prepared(Path(tempfile.mkdtemp(prefix="bench-sweep-")) / "prep"))
        args.per_class, args.lrs, args.epochs, args.val_max = 8, "1e-3", 1, 16
    elif args.mode == "sweep" and not args.real:
        parser.error("sweep needs --real (except with --smoke)")
    started = time.perf_counter()
    result = throughput(args) if args.mode == "throughput" else sweep(args)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
