"""Does a class-conditional model make images of the class it is asked for?

Small CNNs (transformers ResNet from a config, random init; --classifiers seeds, results averaged) are trained on
the real train split at the model's resolution, checkpointed on the real validation split (balanced accuracy),
and then label:
  * the real test split (reference: how well this classifier separates the classes at all), and
  * N generated images per class, for each guidance scale: the fraction labelled as the class they were
    conditioned on (chance = 1 / number of classes).
It also reports a Fréchet distance between classifier features of generated and real train images (FD-cls):
a dermoscopy-specific, low-budget stand-in for FID, useful to compare models made on the same data.

    HF_HUB_OFFLINE=1 python bench/bench_conditioning.py --real /tmp/prep-sample --model /tmp/model \\
        [--model /tmp/model2 ...] [--per-class 64] [--guidance 1,2,3] [--json out.json] [--grid grid.png]
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
import torch
import torch.nn.functional as F
from transformers import ResNetConfig, ResNetForImageClassification

from dermsynth.data.dataset import load_prepared
from dermsynth.diffusion.families import load_generator, read_model_info
from dermsynth.diffusion.grid import image_grid
from dermsynth.diffusion.scratch.objectives import augment
from dermsynth.diffusion.scratch.train import load_training_data


def split_tensors(prep, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one split as floats in [-1, 1] (N, 3, size, size), resized as for training, and targets."""
    data = load_training_data(prep, size, progress=False, split=split)
    return data.images.float() / 127.5 - 1.0, data.targets


def make_classifier(num_classes: int) -> ResNetForImageClassification:
    config = ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
                          layer_type="basic", num_labels=num_classes)
    return ResNetForImageClassification(config)


def per_class_accuracy(model, images: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float]:
    predictions = predict(model, images)
    return [float((predictions[targets == c] == c).float().mean()) if (targets == c).any() else float("nan")
            for c in range(num_classes)]


@torch.no_grad()
def predict(model, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(pixel_values=chunk).logits.argmax(1) for chunk in images.split(256)])


@torch.no_grad()
def features(model, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model.resnet(chunk).pooler_output.flatten(1) for chunk in images.split(256)]).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(A B) from the eigenvalues of A B (real and >= 0 up to rounding for covariance matrices).
    root_trace = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace)


def train_classifier(train_x, train_y, val_x, val_y, num_classes: int, epochs: int, seed: int):
    """Class-weighted cross-entropy (the sample is ~70 % benign), flips/transpose, best val balanced accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = make_classifier(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    weights = len(train_y) / (num_classes * torch.bincount(train_y, minlength=num_classes).float())
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for index in order.split(32):
            x = augment(train_x[index], generator, flips=True, transpose=True)
            loss = F.cross_entropy(model(pixel_values=x).logits, train_y[index], weight=weights)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        balanced = float(np.nanmean(per_class_accuracy(model, val_x, val_y, num_classes)))
        if balanced > best:
            best, best_state = balanced, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model, best


def save_comparison_grid(path: Path, classes: list[str], real_x: torch.Tensor, real_y: torch.Tensor,
                         generated: np.ndarray, per_class: int, columns: int = 10) -> None:
    """Rows "real <class>" (test split) and "synthetic <class>" (the first images generated for it)."""
    rows, tiles = [], []
    for c, name in enumerate(classes):
        real = (real_x[real_y == c][:columns].permute(0, 2, 3, 1).numpy() + 1) / 2
        synthetic = generated[c * per_class:c * per_class + columns]
        count = min(len(real), len(synthetic))
        rows += [f"real {name}", f"synthetic {name}"]
        tiles += [real[:count], synthetic[:count]]
    count = min(len(t) for t in tiles)
    image_grid(np.concatenate([t[:count] for t in tiles]), rows).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", help="prepared dataset the models were trained on")
    parser.add_argument("--model", action="append", help="model folder (repeatable)")
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--guidance", default="1,2,3", help="comma-separated guidance scales")
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifiers", type=int, default=3, help="classifiers (seeds) to average over")
    parser.add_argument("--grid", type=Path, help="save real vs generated rows per class (first model, guidance "
                        "= first --guidance value) to this PNG")
    parser.add_argument("--threads", type=int, help="fix torch's thread count (1 on a busy machine)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="the embedded sample and a model trained for 4 steps: "
                        "checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        from dermsynth.testing.smoke_data import sample_prepared, tiny_scratch_model

        work = Path(tempfile.mkdtemp(prefix="bench-conditioning-"))
        args.real = sample_prepared(work / "prep")
        args.model = [tiny_scratch_model(args.real, work / "model")]
        args.per_class, args.guidance, args.epochs, args.classifiers, args.steps = 2, "1", 1, 1, 2
    elif not args.real or not args.model:
        parser.error("--real and --model are required (except with --smoke)")
    if args.threads:
        torch.set_num_threads(args.threads)

    prep = load_prepared(args.real)
    classes = prep.classes
    size = read_model_info(args.model[0])["image_size"]
    train_x, train_y = split_tensors(prep, "train", size)
    val_x, val_y = split_tensors(prep, "val", size)
    test_x, test_y = split_tensors(prep, "test", size)
    started = time.perf_counter()
    classifiers, val_balanced = zip(*[train_classifier(train_x, train_y, val_x, val_y, len(classes), args.epochs,
                                                       args.seed + k) for k in range(args.classifiers)],
                                    strict=True)
    real_test = accuracy_summary(classifiers, test_x, test_y, classes)
    real_features = features(classifiers[0], train_x)
    report = {
        "classes": classes, "image_size": size, "classifiers": args.classifiers,
        "classifier_seconds": round(time.perf_counter() - started, 1),
        "real_val_balanced_accuracy": float(np.mean(val_balanced)),
        "real_test": real_test,
        "real_test_fd_cls": frechet_distance(features(classifiers[0], test_x), real_features),
        "models": {},
    }
    print(f"{args.classifiers} classifiers: real val balanced acc {report['real_val_balanced_accuracy']:.3f}; "
          f"real test {format_accuracy(real_test)}; FD-cls real test vs train {report['real_test_fd_cls']:.2f}")
    for model_dir in args.model:
        info = read_model_info(model_dir)
        generator = load_generator(model_dir, info, "cpu")
        steps = args.steps or generator.defaults["steps"]
        scheduler = args.scheduler or generator.defaults["scheduler"]
        rows = {}
        for guidance in [float(g) for g in args.guidance.split(",")]:
            labels = [c for c in classes for _ in range(args.per_class)]
            seeds = [10_000 + i for i in range(len(labels))]
            images = generator(labels, seeds, steps=steps, scheduler=scheduler, guidance_scale=guidance)
            x = torch.from_numpy(np.clip(images, 0, 1)).permute(0, 3, 1, 2) * 2 - 1
            y = torch.tensor([classes.index(c) for c in labels])
            if args.grid and model_dir == args.model[0] and not rows:
                save_comparison_grid(args.grid, classes, test_x, test_y, images, args.per_class)
            rows[guidance] = accuracy_summary(classifiers, x, y, classes)
            rows[guidance]["fd_cls"] = frechet_distance(features(classifiers[0], x), real_features)
            print(f"{model_dir} [{info['steps']} steps] {scheduler}-{steps} guidance {guidance:g}: "
                  f"{format_accuracy(rows[guidance])}; FD-cls {rows[guidance]['fd_cls']:.2f}", flush=True)
        report["models"][str(model_dir)] = {"steps": info["steps"], "seconds": info["seconds"],
                                            "scheduler": scheduler, "sampling_steps": steps, "guidance": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def accuracy_summary(classifiers, images: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Per-class accuracy (recall) over the classifiers: mean and standard deviation, and their class mean."""
    table = np.array([per_class_accuracy(model, images, targets, len(classes)) for model in classifiers])
    return {"per_class_mean": dict(zip(classes, table.mean(0).tolist(), strict=True)),
            "per_class_std": dict(zip(classes, table.std(0).tolist(), strict=True)),
            "balanced_mean": float(table.mean(1).mean())}


def format_accuracy(summary: dict) -> str:
    parts = [f"{c} {m:.3f}±{summary['per_class_std'][c]:.3f}" for c, m in summary["per_class_mean"].items()]
    return ", ".join(parts) + f"; balanced {summary['balanced_mean']:.3f}"


if __name__ == "__main__":
    main()
