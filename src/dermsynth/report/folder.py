"""Reading a run folder for the report: where each stage writes, what shows it ran, and the small helpers the
sections share (figures, image tiles)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.errors import DermsynthError
from dermsynth.layout import RUN_FOLDERS
from dermsynth.report import figures

Section = dict[str, Any]


# Where each stage writes inside a run folder, and which files show that it ran.
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {  # folder, and the files that show the stage ran
    "prepare": (RUN_FOLDERS["prepare"], ("prepare.json",)),
    "train": (RUN_FOLDERS["train"], ("dermsynth_model.json", "train_log.csv")),
    "generate": (RUN_FOLDERS["generate"], ("manifest.csv", "generate.json")),
    "audit": (RUN_FOLDERS["audit"], ("audit.json",)),
    "validate": (RUN_FOLDERS["validate"], ("summary.json", "validate.json")),
    "domain_shift": (RUN_FOLDERS["domain_shift"], ("domain_shift.json",)),
    "reader_study": (RUN_FOLDERS["reader_study"], ("key/study.json",)),
}


NOT_RUN_HINT = {
    "prepare": "dermsynth prepare --dataset ... --out RUN/prepared",
    "train": "dermsynth train --data RUN/prepared --out RUN/model",
    "finetune": "dermsynth finetune --method lora --base BASE --data RUN/prepared --out RUN/model",
    "generate": "dermsynth generate --model RUN/model --out RUN/synthetic --per-class N",
    "audit": "dermsynth audit --real RUN/prepared --synthetic RUN/synthetic --out RUN/audit",
    "validate": "dermsynth validate --real RUN/prepared --synthetic RUN/synthetic --out RUN",
    "domain_shift": "dermsynth domain-shift --real RUN/prepared --synthetic RUN/synthetic --external PREP_SITE "
                    "--out RUN/domain_shift",
    "reader_study": "dermsynth reader-study build --real RUN/prepared --synthetic RUN/synthetic --out "
                    "RUN/reader_study",
}


# Each stage's folder inside a run (layout.RUN_FOLDERS: the one place folder names are spelled).
PREPARED, MODEL, SYNTHETIC, AUDIT, VALIDATION, READER_STUDY = (
    RUN_FOLDERS[k] for k in ("prepare", "train", "generate", "audit", "validate", "reader_study"))
TILE = 64  # side of image tiles in grids (px)


@dataclass
class RunFolder:
    root: Path

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def json(self, *parts: str) -> Any:
        path = self.path(*parts)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DermsynthError(f"{path}: not valid JSON ({exc})") from None

    def csv(self, *parts: str) -> pd.DataFrame | None:
        path = self.path(*parts)
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "lesion_id": str})
        except (ValueError, pd.errors.ParserError) as exc:
            raise DermsynthError(f"{path}: not a readable CSV ({exc})") from None

    def text(self, *parts: str) -> str | None:
        path = self.path(*parts)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def stage_ran(self, stage: str) -> bool:
        folder, markers = STAGES[stage]
        if any(self.path(folder, m).is_file() for m in markers):
            return True
        return stage == "validate" and any(self.path(folder).glob("*/*/metrics.json"))


def figure(png: bytes | None, caption: str, alt: str) -> dict[str, str] | None:
    return None if png is None else {"uri": figures.data_uri(png), "caption": caption, "alt": alt}


def open_rgb(path: str | Path, side: int):
    """An image decoded near ``side`` px (long side) as a PIL RGB image, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced DCT scale
            rgb = image.convert("RGB")
    except (OSError, ValueError):
        return None
    rgb.thumbnail((side, side))
    return rgb


def _step_of(path: Path) -> str:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return str(int(digits)) if digits else path.stem


def _short(text: Any, limit: int = 90) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _tiles(root: Path, paths: Iterable[Any]) -> list[np.ndarray]:
    tiles = (figures.load_thumb(p if Path(str(p)).is_absolute() else root / str(p), TILE) for p in paths)
    return [t for t in tiles if t is not None]


def _yaml(text: str | None) -> dict[str, Any] | None:
    import yaml

    if not text:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None
