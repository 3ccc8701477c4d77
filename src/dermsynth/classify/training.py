"""The classifier training loop: AdamW + linear warmup/decay, checkpoint selection on a real-only validation split.

Per epoch the loop trains once over the (shuffled, augmented) training set, scores the validation split, keeps
the weights of the best validation score so far, and optionally records test accuracy/AUROC for the
"test accuracy vs epoch" plot. The test numbers are computed after the selection decision of that epoch and are
only written to the history; nothing reads them back.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from dermsynth.classify.classifiers import Classifier, autocast, batches, predict_proba
from dermsynth.classify.config import ClassifierTrainConfig
from dermsynth.classify.images import ImageSet
from dermsynth.classify.metrics import classification_metrics, cross_entropy
from dermsynth.classify.models import train_preset
from dermsynth.classify.transforms import Jitter, augment, normalize
from dermsynth.errors import DermsynthError
from dermsynth.precision import resolve_precision


@dataclass(frozen=True)
class TrainSettings:
    """A :class:`ClassifierTrainConfig` with every preset default filled in."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    patience: int | None
    selection_metric: str
    bf16: bool
    augment: bool
    jitter: float
    max_grad_norm: float | None
    eval_batch_size: int
    track_test: bool


def resolve_settings(config: ClassifierTrainConfig, preset: str, device: str) -> TrainSettings:
    """Unset values from the training preset of ``preset``: a registered classifier (classify/models.py), else a
    checkpoint folder / hub id (or "pretrained"), which takes the fine-tuning defaults."""
    defaults = train_preset(preset)
    given = config.model_dump()
    values = {key: defaults[key] if given.get(key) is None and key in defaults else given.get(key)
              for key in ("epochs", "batch_size", "learning_rate", "weight_decay", "warmup_fraction")}
    patience = config.patience if "patience" in config.model_fields_set else defaults["patience"]
    bf16 = resolve_precision(config.precision, device, auto="bf16" if defaults["bf16"] else "no") == "bf16"
    return TrainSettings(**values, patience=patience, selection_metric=config.selection_metric, bf16=bf16,
                         augment=config.augment, jitter=config.jitter, max_grad_norm=config.max_grad_norm,
                         eval_batch_size=config.eval_batch_size, track_test=config.track_test)


@dataclass
class FitResult:
    history: pd.DataFrame
    best_epoch: int
    seconds: float
    images_per_second: float


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # no decay on biases/norms
    fused = params[0].device.type in ("cpu", "cuda")  # one kernel for all tensors (as the HF Trainer's default)
    return torch.optim.AdamW(groups, lr=settings.learning_rate, fused=fused)


def train_batch(classifier: Classifier, images: np.ndarray, targets: np.ndarray, settings: TrainSettings,
                generator: torch.Generator, device: str) -> torch.Tensor:
    """Forward + loss of one training batch (augmentation included); the caller steps the optimiser."""
    x = torch.from_numpy(images).to(device)
    if settings.augment:
        jitter = Jitter(settings.jitter, settings.jitter, settings.jitter) if settings.jitter else None
        x = augment(x, generator, jitter)
    x = normalize(x, classifier.spec)
    with autocast(device, settings.bf16):
        logits = classifier.model(pixel_values=x).logits
    return F.cross_entropy(logits.float(), torch.from_numpy(targets).to(device))


def _train_epoch(classifier: Classifier, train: ImageSet, settings: TrainSettings, optimizer: torch.optim.Optimizer,
                 scheduler, generator: torch.Generator, device: str, on_step: Callable[[], None]) -> float:
    classifier.model.train()
    order = torch.randperm(len(train), generator=generator).numpy()
    total, seen = 0.0, 0
    for part in batches(len(train), settings.batch_size):
        index = order[part]
        loss = train_batch(classifier, train.images[index], train.targets[index], settings, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(classifier.model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(index)
        seen += len(index)
        on_step()
    return total / max(seen, 1)


def evaluate(classifier: Classifier, data: ImageSet, settings: TrainSettings, device: str,
             threshold: float | None = None) -> tuple[np.ndarray, dict[str, float]]:
    probs = predict_proba(classifier, data.images, settings.eval_batch_size, device, settings.bf16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = classification_metrics(data.targets, probs, threshold)
    return probs, metrics | {"loss": cross_entropy(data.targets, probs)}


def _selection_metric(settings: TrainSettings, val: ImageSet) -> str:
    if settings.selection_metric != "loss" and len(np.unique(val.targets)) < 2:
        warnings.warn(f"the validation split holds a single class: selecting on val loss instead of "
                      f"{settings.selection_metric}", stacklevel=3)
        return "loss"
    return settings.selection_metric


def fit(classifier: Classifier, train: ImageSet, val: ImageSet, settings: TrainSettings, seed: int,
        device: str = "cpu", test: ImageSet | None = None,
        on_step: Callable[[], None] = lambda: None,
        on_epoch: Callable[[dict], None] = lambda row: None) -> FitResult:
    """Train ``classifier`` in place and leave it holding the weights of the best validation epoch."""
    if val.synthetic.any() or (test is not None and test.synthetic.any()):
        raise AssertionError("synthetic images must never reach validation or test")
    initial = {k: v.detach().clone() for k, v in classifier.model.state_dict().items()}
    try:
        return _fit(classifier, train, val, settings, seed, device, test, on_step, on_epoch)
    except _NonFiniteWeights:
        if not settings.bf16:
            raise DermsynthError("classifier training diverged to non-finite weights in fp32; lower the learning "
                                 f"rate (train.learning_rate, now {settings.learning_rate:g})") from None
    # bf16 on CPU has, rarely and not reproducibly, turned a batch's activations non-finite: start again in fp32
    warnings.warn("bf16 training produced non-finite weights; trained again from the same start in fp32",
                  stacklevel=2)
    classifier.model.load_state_dict(initial)
    result = _fit(classifier, train, val, dataclasses.replace(settings, bf16=False), seed, device, test, on_step,
                  on_epoch)
    result.history["precision"] = "fp32 (bf16 diverged)"
    return result


class _NonFiniteWeights(Exception):
    pass


def _finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def _fit(classifier: Classifier, train: ImageSet, val: ImageSet, settings: TrainSettings, seed: int, device: str,
         test: ImageSet | None, on_step: Callable[[], None], on_epoch: Callable[[dict], None]) -> FitResult:
    metric = _selection_metric(settings, val)
    sign = -1.0 if metric == "loss" else 1.0
    generator = torch.Generator().manual_seed(seed)
    model = classifier.model.to(device)
    optimizer = make_optimizer(model, settings)
    total_steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_fraction * total_steps), total_steps)
    best_score, best_epoch, best_state, rows = -math.inf, 0, None, []
    started, train_seconds = time.monotonic(), 0.0
    for epoch in range(1, settings.epochs + 1):
        tick = time.monotonic()
        train_loss = _train_epoch(classifier, train, settings, optimizer, scheduler, generator, device, on_step)
        train_seconds += time.monotonic() - tick
        if not _finite(model):
            raise _NonFiniteWeights
        _, val_metrics = evaluate(classifier, val, settings, device)
        score = sign * val_metrics[metric]
        if score > best_score:  # NaN never wins; ties keep the earlier epoch
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        row = {"epoch": epoch, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
               **{f"val_{k}": val_metrics[k] for k in ("loss", "accuracy", "balanced_accuracy", "auroc")},
               "selected_so_far": best_epoch == epoch}
        if test is not None and settings.track_test:  # plotting only: computed after this epoch's selection
            _, test_metrics = evaluate(classifier, test, settings, device)
            row |= {"test_accuracy": test_metrics["accuracy"], "test_auroc": test_metrics["auroc"]}
        rows.append(row)
        on_epoch(row)
        if settings.patience and epoch - best_epoch >= settings.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    seen = len(rows) * len(train)
    return FitResult(pd.DataFrame(rows), best_epoch or len(rows), time.monotonic() - started,
                     seen / train_seconds if train_seconds else math.nan)
