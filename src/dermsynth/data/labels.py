"""Label schemes: which class each image belongs to, and the integer target of each class."""

from __future__ import annotations

import pandas as pd

from dermsynth.data.schema import slug

BINARY_CLASSES = ("benign", "malignant")


def assign_labels(frame: pd.DataFrame, scheme: str) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Add ``label`` and ``target``; rows without a usable label are returned as skips with the reason."""
    frame = frame.copy()
    if (frame["source"] == "folder").all():
        frame["label"] = frame["raw_label"].map(slug)
    elif scheme == "binary":
        frame["label"] = frame["benign_malignant"]
    else:
        frame["label"] = frame["diagnosis"].map(lambda d: slug(d) if isinstance(d, str) else None)
    unusable = frame["label"].isna()
    skipped = [
        {"image_id": row.image_id, "reason": _why_unlabelled(row.raw_label) if scheme == "binary" else "no diagnosis"}
        for row in frame[unusable].itertuples()
    ]
    frame = frame[~unusable].reset_index(drop=True)
    classes = class_order(frame["label"].unique())
    frame["target"] = frame["label"].map({name: i for i, name in enumerate(classes)}).astype("int64")
    return frame, skipped


def class_order(labels) -> list[str]:
    """benign before malignant (so malignant is the positive class 1); otherwise alphabetical."""
    labels = sorted(set(labels))
    if set(labels) <= set(BINARY_CLASSES):
        return [c for c in BINARY_CLASSES if c in labels]
    return labels


def _why_unlabelled(raw: object) -> str:
    if raw is None or (isinstance(raw, float) and pd.isna(raw)) or str(raw).strip() == "":
        return "no benign/malignant label"
    return f"unknown label {str(raw).strip()!r}"
