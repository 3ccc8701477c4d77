"""Report figures: matplotlib ``Figure`` objects rendered to PNG bytes with the Agg canvas.

No pyplot: nothing touches the global backend or figure registry, so building a report inside another program
(a notebook, a test) leaves its matplotlib state alone.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

PALETTE = ("#2f6db5", "#d0622b", "#3a9a5b", "#8e59b3", "#b0912c", "#c2417a", "#4a9bb0", "#7a7a7a")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_EMBED_WIDTH = 1400  # wider PNGs are shrunk before embedding: the page is at most ~1100 px wide


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def embed_png_file(path: Path, max_width: int = MAX_EMBED_WIDTH) -> bytes | None:
    """A PNG written by a stage, re-encoded (and shrunk when wide) so the report only ever embeds clean PNGs."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, ValueError):
        return None
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def load_thumb(path: str | Path, size: int) -> np.ndarray | None:
    """An image as a ``size`` x ``size`` RGB array (None when unreadable): the tiles of image grids."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    except (OSError, ValueError):
        return None


def mosaic(tiles: Sequence[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Equal-size RGB tiles in a white-separated grid, row-major."""
    size = tiles[0].shape[0]
    rows = math.ceil(len(tiles) / columns)
    out = np.full((rows * (size + gap) - gap, columns * (size + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = tile
    return out


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25, linewidth=0.6)


# --------------------------------------------------------------------------- dataset


def metadata_figure(meta: pd.DataFrame, classes: Sequence[str]) -> bytes:
    """Age histogram per class, sex and anatomic site counts per class (missing values shown as such)."""
    fig = Figure(figsize=(11, 2.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 0.8, 1.3]})
    ages = pd.to_numeric(meta["age_approx"], errors="coerce")
    bins = np.arange(0, 95, 5)
    ax = axes[0]
    ax.hist([ages[meta["label"] == c].dropna() for c in classes], bins=bins, stacked=True,
            color=PALETTE[:len(classes)], label=list(classes))
    ax.set_title(f"age (missing: {int(ages.isna().sum())})", fontsize=9)
    ax.set_xlabel("approximate age", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    for ax, column, title in ((axes[1], "sex", "sex"), (axes[2], "anatom_site", "anatomic site")):
        _category_bars(ax, meta, column, classes)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        _style(ax)
    fig.tight_layout()
    return to_png(fig)


def _category_bars(ax, meta: pd.DataFrame, column: str, classes: Sequence[str], top: int = 8) -> None:
    values = meta[column].fillna("(missing)").astype(str).replace("", "(missing)")
    order = values.value_counts().index[:top][::-1]
    left = np.zeros(len(order))
    for colour, label in zip(PALETTE, classes, strict=False):
        counts = values[meta["label"] == label].value_counts().reindex(order, fill_value=0).to_numpy()
        ax.barh(range(len(order)), counts, left=left, color=colour, label=label)
        left += counts
    ax.set_yticks(range(len(order)), [str(v)[:22] for v in order], fontsize=7)


# --------------------------------------------------------------------------- preprocessing


def preprocessing_figure(examples: Sequence[dict]) -> bytes:
    """Pairs of (original with the crop box, processed image); ``examples`` hold ``original``, ``box`` (in the
    original's pixels), ``processed`` and ``title``."""
    per_row = 3
    rows = math.ceil(len(examples) / per_row)
    fig = Figure(figsize=(11, 2.3 * rows))
    axes = fig.subplots(rows, 2 * per_row, squeeze=False, gridspec_kw={"width_ratios": [1.45, 1] * per_row})
    for ax in axes.ravel():
        ax.axis("off")
    for i, example in enumerate(examples):
        left, right = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        left.imshow(example["original"])
        x0, y0, x1, y1 = example["box"]
        left.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#00e0ff", linewidth=1.6))
        left.set_title(example["title"], fontsize=7.5)
        right.imshow(example["processed"], interpolation="nearest")
        right.set_title("processed", fontsize=7.5)
    fig.tight_layout()
    return to_png(fig)


# --------------------------------------------------------------------------- diffusion model


def training_curve(log: pd.DataFrame) -> bytes:
    """Loss per logged step (the log already averages over its interval), plus a moving average when long."""
    fig = Figure(figsize=(6.4, 2.8))
    ax = fig.subplots()
    steps, loss = log["step"].to_numpy(), log["loss"].to_numpy(dtype=float)
    ax.plot(steps, loss, color=PALETTE[0], alpha=0.45 if len(loss) > 40 else 1.0, linewidth=1.0, marker=".",
            markersize=3, label="loss as logged")
    if len(loss) > 40:
        window = len(loss) // 20
        smooth = pd.Series(loss).rolling(window, min_periods=1).mean()
        ax.plot(steps, smooth, color=PALETTE[1], linewidth=1.8, label=f"moving average ({window} points)")
    ax.set_xlabel("optimisation step", fontsize=8)
    ax.set_ylabel("diffusion loss", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    fig.tight_layout()
    return to_png(fig)


def labelled_grids(rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: int) -> bytes:
    """One labelled mosaic per row (class and prompt, or class and source), stacked vertically."""
    fig = Figure(figsize=(11, 1.45 * len(rows) + 0.2))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, tiles) in zip(axes, rows, strict=True):
        ax.imshow(mosaic(list(tiles), columns), interpolation="nearest")
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def side_by_side(pairs: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]], columns: int) -> bytes:
    """Per class: real training images on the left, synthetic images on the right (the study's Figure 3)."""
    fig = Figure(figsize=(11, 1.5 * len(pairs) + 0.4))
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for (label, real, synthetic), row in zip(pairs, axes, strict=True):
        for ax, tiles, kind in ((row[0], real, "real (train split)"), (row[1], synthetic, "synthetic")):
            ax.axis("off")
            if tiles:
                ax.imshow(mosaic(list(tiles), columns), interpolation="nearest")
            ax.set_title(f"{label}: {kind}", fontsize=8, loc="left")
    fig.tight_layout()
    return to_png(fig)


# --------------------------------------------------------------------------- validation


def metric_curves(curves: dict[str, pd.DataFrame], panels: Sequence[tuple[str, str]]) -> bytes:
    """Per regime, the mean over seeds of each per-epoch metric, with a +-1 sd band (the study's Figure 4).

    ``curves[regime]`` has columns ``epoch``, ``seed`` and the metric columns named in ``panels``
    (column, axis label).
    """
    fig = Figure(figsize=(5.2 * len(panels), 3.1))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (column, title) in zip(axes, panels, strict=True):
        for colour, (regime, frame) in zip(PALETTE, curves.items(), strict=False):
            stats = frame.groupby("epoch")[column].agg(["mean", "std", "count"])
            mean = stats["mean"] * 100
            sd = stats["std"].fillna(0) * 100
            seeds = int(frame["seed"].nunique())
            ax.plot(stats.index, mean, color=colour, linewidth=1.8, marker="o", markersize=3,
                    label=f"{regime} ({seeds} seed{'s' if seeds != 1 else ''})")
            ax.fill_between(stats.index, mean - sd, mean + sd, color=colour, alpha=0.15, linewidth=0)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(f"{title} (%)", fontsize=8)
        ax.set_title(title, fontsize=9)
        _style(ax)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return to_png(fig)
