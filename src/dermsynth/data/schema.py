"""The canonical metadata table every reader produces and every later stage reads.

One row per image. Missing values stay empty (NaN in pandas, an empty cell in the CSV); nothing is invented.
"""

from __future__ import annotations

import math
import re

import pandas as pd

CANONICAL_COLUMNS = [
    "image_id", "path", "label", "target", "patient_id", "lesion_id", "sex", "age_approx",
    "anatom_site", "diagnosis", "source", "split", "prompt",
]
# Columns a reader fills; the rest (path, label, target, split, prompt) are assigned by `prepare`.
READER_COLUMNS = [
    "image_id", "source_path", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site",
    "diagnosis", "benign_malignant", "source",
]
SPLITS = ("train", "val", "test")

_MISSING_STRINGS = {"", "nan", "none", "null", "unknown", "na", "n/a", "-"}

# HAM10000 dx codes -> ISIC diagnosis names.
HAM_DIAGNOSES = {
    "nv": "nevus",
    "mel": "melanoma",
    "bkl": "benign keratosis",
    "bcc": "basal cell carcinoma",
    "akiec": "actinic keratosis",
    "vasc": "vascular lesion",
    "df": "dermatofibroma",
}


def clean_text(value: object) -> str | None:
    """Lower-cased, trimmed text, or None for any spelling of 'missing'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    return None if text in _MISSING_STRINGS else text


def clean_sex(value: object) -> str | None:
    text = clean_text(value)
    return text if text in ("male", "female") else None


def clean_age(value: object) -> float | None:
    text = clean_text(value)
    if text is None:
        return None
    try:
        age = float(text)
    except ValueError:
        return None
    return age if 0 <= age <= 120 else None


def clean_benign_malignant(value: object) -> str | None:
    text = clean_text(value)
    return text if text in ("benign", "malignant") else None


def slug(text: str) -> str:
    """A folder-safe class name: 'basal cell carcinoma' -> 'basal_cell_carcinoma'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unlabelled"


def empty_reader_frame() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype="object") for column in READER_COLUMNS})


def finish_reader_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of reader dicts -> a frame with exactly READER_COLUMNS, cleaned."""
    frame = pd.DataFrame(rows, columns=READER_COLUMNS) if rows else empty_reader_frame()
    for column in ("patient_id", "lesion_id", "source_path", "image_id", "source"):
        frame[column] = frame[column].map(lambda v: None if clean_text(v) is None else str(v).strip())
    frame["sex"] = frame["sex"].map(clean_sex)
    frame["age_approx"] = frame["age_approx"].map(clean_age).astype("float64").round().astype("Int64")
    frame["anatom_site"] = frame["anatom_site"].map(clean_text)
    frame["diagnosis"] = frame["diagnosis"].map(clean_text)
    frame["benign_malignant"] = frame["benign_malignant"].map(clean_benign_malignant)
    return frame
