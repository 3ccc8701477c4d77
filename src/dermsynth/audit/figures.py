"""Audit figures (matplotlib, Agg): the closest synthetic/training pairs, and similarity distributions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dermsynth.data.images import load_image
from dermsynth.utils import atomic_path


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def top_pairs(nearest: pd.DataFrame, path: Path, pixel_threshold: float, size: int, n: int = 8) -> None:
    """The ``n`` synthetic images closest to a training image, each beside that training image."""
    top = nearest.sort_values("pixel_similarity", ascending=False).head(n)
    fig, axes = plt.subplots(2, max(len(top), 1), figsize=(1.6 * max(len(top), 1), 3.6), squeeze=False)
    for column, row in enumerate(top.itertuples()):
        for line, (image_path, title) in enumerate([
            (row.path, f"synthetic\n{row.pixel_similarity:.3f}{' FLAG' if row.flagged else ''}"),
            (row.nearest_pixel_train_path, "nearest train"),
        ]):
            axes[line, column].imshow(load_image(image_path, size))
            axes[line, column].set_title(title, fontsize=7, color="crimson" if "FLAG" in title else "black")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"closest synthetic-training pairs (pixel similarity; flag above {pixel_threshold:.3f})", fontsize=8)
    _save(fig, path)


def similarity_histogram(synthetic: np.ndarray, held_out: np.ndarray, pixel_threshold: float, path: Path) -> None:
    """Nearest-training-image similarity of synthetic vs held-out real images: copying shifts the first right."""
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(min(synthetic.min(initial=1), held_out.min(initial=1), 0), 1, 41)
    ax.hist(held_out, bins=bins, alpha=0.6, density=True, label=f"held-out real (n={len(held_out)})")
    ax.hist(synthetic, bins=bins, alpha=0.6, density=True, label=f"synthetic (n={len(synthetic)})")
    ax.axvline(pixel_threshold, color="crimson", linestyle="--", label="flag threshold")
    ax.set_xlabel("pixel similarity to the nearest training image")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    _save(fig, path)
