"""Classifier two-sample test (C2ST): can a small classifier, trained from scratch, tell image set A from set B?

Both sets are subsampled (seeded) to the same size n; a stratified k-fold split trains one fresh CNN per fold to
predict set membership and scores the held-out fold, so every image gets an out-of-fold score. The result is the
AUROC of the pooled out-of-fold scores (0.5 = the classifier cannot tell the sets apart; 1.0 = perfectly
separable) with a stratified bootstrap percentile interval. No pretrained weights are involved.

Inputs are scaled with fixed constants (x / 127.5 - 1), never with per-set statistics, and the only augmentation
is the 8 symmetries of the square (flips, quarter turns), drawn identically for both sets: colour, sharpness and
texture differences, which the test exists to detect, are left intact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from torch import nn

from dermsynth.evaluate.transforms import augment

LR = 2e-3
WEIGHT_DECAY = 0.05
WIDTHS = (16, 32, 64, 128)


@dataclass
class C2STResult:
    """Held-out AUROC of "set B vs set A" (0.5 = indistinguishable) with its bootstrap interval."""

    auroc: float
    ci_low: float
    ci_high: float
    fold_aurocs: list[float]
    n_per_set: int
    folds: int

    def as_dict(self) -> dict:
        """JSON-ready (plain floats and ints; NaN where undefined)."""
        out = asdict(self)
        out["fold_aurocs"] = [float(v) for v in self.fold_aurocs]
        return out


def _small_cnn(channels: int) -> nn.Module:
    """Four 3x3 conv blocks (BatchNorm, ReLU, 2x2 max-pool after the first three), global average pool, one logit.

    The first convolution sees full-resolution pixels, so blur and fine texture remain visible to it.
    """
    layers: list[nn.Module] = []
    c_in = channels
    for i, c_out in enumerate(WIDTHS):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if i < len(WIDTHS) - 1:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1)]
    return nn.Sequential(*layers)


class _Preset(nn.Module):
    """The validation stage's ``cnn`` preset with a single output."""

    def __init__(self, image_size: int):
        super().__init__()
        from dermsynth.evaluate.classifiers import build_classifier

        self.net = build_classifier("cnn", ["a"], image_size=image_size).model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).logits


_ARCH = "small"
_BF16: bool | None = None


def _bf16(device: str) -> bool:
    """bf16 autocast where the hardware runs it natively (the rule of ``dermsynth.diffusion.sampling.use_bf16``,
    restated here so that this module does not import the diffusion stack)."""
    if _BF16 is not None:
        return _BF16
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    return kind == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()


def _logits(model: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(x).squeeze(1).float()


def _build(channels: int, image_size: int) -> nn.Module:
    return _small_cnn(channels) if _ARCH == "small" else _Preset(image_size)


def _scale(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [0, 1] -> [-1, 1], the same fixed map for every set (x / 127.5 - 1 on uint8 values)."""
    return x * 2.0 - 1.0


def _as_input(images: np.ndarray, device: str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return _scale(x.permute(0, 3, 1, 2).float().div_(255.0))


def _train(images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int, seed: int, device: str
           ) -> nn.Module:
    """A fresh CNN fitted to predict ``labels`` (0 = A, 1 = B); AdamW with linear warmup and decay."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(images.shape[3], images.shape[1]).to(device)
    generator = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": rest, "weight_decay": 0.0}], lr=LR)
    steps = max(1, epochs * math.ceil(len(images) / batch_size))
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    targets = torch.from_numpy(labels.astype(np.float32)).to(device)
    bf16 = _bf16(device)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2:  # BatchNorm needs two samples; a lone leftover image is skipped this epoch
                continue
            x = _scale(augment(torch.from_numpy(images[index.numpy()]).to(device), generator, jitter=None))
            loss = nn.functional.binary_cross_entropy_with_logits(_logits(model, x, bf16), targets[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def _score(model: nn.Module, images: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    out, bf16 = [], _bf16(device)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(_logits(model, _as_input(images[start:start + batch_size], device), bf16).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _auroc_rows(scores: np.ndarray, n_pos: int) -> np.ndarray:
    """AUROC of each row of ``scores`` whose first ``n_pos`` columns are positives (Mann-Whitney, ties = 1/2)."""
    n_neg = scores.shape[1] - n_pos
    ranks = rankdata(scores, axis=1)
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _bootstrap_ci(scores: np.ndarray, labels: np.ndarray, n_boot: int, confidence: float, seed: int
                  ) -> tuple[float, float]:
    """Percentile interval of the AUROC over ``n_boot`` resamples drawn with replacement within each label."""
    if n_boot < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    chunk = max(1, 2_000_000 // len(scores))  # bound memory for large sets
    values = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        draws = np.concatenate([rng.choice(pos, (rows, len(pos))), rng.choice(neg, (rows, len(neg)))], axis=1)
        values.append(_auroc_rows(draws, len(pos)))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(np.concatenate(values), [tail, 100.0 - tail])
    return float(low), float(high)


def _check(a: np.ndarray, b: np.ndarray, folds: int) -> None:
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"c2st: {name} must be uint8 NHWC images, got {x.dtype} of shape {x.shape}")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"c2st: image shapes differ: {a.shape[1:]} vs {b.shape[1:]}")
    if folds < 2:
        raise ValueError(f"c2st: folds must be at least 2, got {folds}")


def c2st(a: np.ndarray, b: np.ndarray, *, folds: int = 5, epochs: int = 10, max_per_set: int | None = 1000,
         seed: int = 0, device: str = "cpu", n_boot: int = 1000, confidence: float = 0.95,
         batch_size: int = 64) -> C2STResult:
    """Classifier two-sample test between the uint8 NHWC image sets ``a`` and ``b`` (same image size).

    Both sets are subsampled (seeded) to n = min(len(a), len(b), max_per_set) images; ``folds``-fold stratified
    cross-validation (shuffled, seeded) trains a fresh small CNN per fold for ``epochs`` epochs and scores the
    held-out fold. ``auroc`` is the AUROC of the pooled out-of-fold scores (label 1 = set ``b``), with a
    stratified bootstrap percentile interval at ``confidence``. When n < ``folds`` (each held-out fold needs at
    least one image of each set) the AUROC and its interval are NaN and no model is trained. Results are
    reproducible for a fixed seed on the CPU.
    """
    _check(a, b, folds)
    n = min(len(a), len(b), max_per_set if max_per_set is not None else math.inf)
    if n < folds:
        return C2STResult(math.nan, math.nan, math.nan, [], int(n), folds)
    rng = np.random.default_rng(seed)
    images = np.concatenate([a[np.sort(rng.choice(len(a), n, replace=False))],
                             b[np.sort(rng.choice(len(b), n, replace=False))]])
    labels = np.r_[np.zeros(n, np.int64), np.ones(n, np.int64)]
    scores = np.empty(2 * n)
    fold_aurocs = []
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train, test) in enumerate(split.split(images, labels)):
        model = _train(images[train], labels[train], epochs, batch_size, seed * 1000 + fold, device)
        scores[test] = _score(model, images[test], batch_size * 4, device)
        fold_aurocs.append(float(roc_auc_score(labels[test], scores[test])))
    low, high = _bootstrap_ci(scores, labels, n_boot, confidence, seed)
    return C2STResult(float(roc_auc_score(labels, scores)), low, high, fold_aurocs, int(n), folds)
