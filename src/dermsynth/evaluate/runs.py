"""The run-folder contract of `validate`, read back: ``REGIME/seed-N/metrics.json`` (+ ``predictions.csv``,
``history.csv``). Both the validate stage (to skip finished runs and summarise them) and the report read runs
through here, so a damaged file means the same thing to both: that run is not finished."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

READ_ERRORS = (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError)


@dataclass
class RunRecord:
    folder: Path
    metrics: dict[str, Any]
    history: pd.DataFrame | None

    @property
    def regime(self) -> str:
        return str(self.metrics.get("regime", ""))

    @property
    def source(self) -> str:
        return str(self.metrics.get("source") or "")

    @property
    def seed(self) -> int | None:
        return self.metrics.get("seed")


def read_run(folder: Path, settings_hash: str | None = None) -> RunRecord | None:
    """The finished run in ``folder``, or None when it is missing, damaged or (with ``settings_hash``) was trained
    with other settings: in every such case the run is trained again."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        if not isinstance(metrics, dict) or "threshold" not in metrics:
            return None
        if settings_hash is not None and metrics.get("settings_hash") != settings_hash:
            return None
        if "image" not in pd.read_csv(folder / "predictions.csv", dtype={"image": str}, nrows=1).columns:
            return None
    except READ_ERRORS:
        return None
    history = None
    if (folder / "history.csv").is_file():
        try:
            history = pd.read_csv(folder / "history.csv")
        except READ_ERRORS:
            history = None  # the curves of one run are lost, not its result
    return RunRecord(folder, metrics, history)


def finished_runs(root: Path) -> list[RunRecord]:
    """Every finished run under a validate output folder, in folder order."""
    found = (read_run(path.parent) for path in sorted(root.glob("*/*/metrics.json")))
    return [run for run in found if run is not None]


def predictions_file(test_set: str = "test") -> str:
    """The run file holding probabilities on the internal test split, or on an external test set."""
    return "predictions.csv" if test_set == "test" else f"predictions_{test_set}.csv"


def read_predictions(run: RunRecord, test_set: str = "test") -> pd.DataFrame:
    """Test-image probabilities of a finished run, indexed by image id."""
    return pd.read_csv(run.folder / predictions_file(test_set), dtype={"image": str}).set_index("image")
