"""Resumable checkpoints shared by both trainers: ``OUT/checkpoints/step-NNNNNN/`` folders, each with a
``state.json`` beside the trainer's own files.

A checkpoint is written into a hidden temporary folder and renamed into place, so a kill mid-save leaves the
previous checkpoints whole. On resume the newest one that reads back is used; damaged ones are named and left
on disk (nothing that could still be recovered by hand is deleted).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError
from dermsynth.progress import console

CHECKPOINTS = "checkpoints"
T = TypeVar("T")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").is_file())


def latest_checkpoint_step(out: str | Path) -> int | None:
    checkpoints = list_checkpoints(out)
    return int(checkpoints[-1].name.split("-")[1]) if checkpoints else None


def save_checkpoint(out: Path, step: int, write: Callable[[Path], None], keep: int | None) -> Path:
    """``write(folder)`` fills a temporary folder, which then replaces ``step-NNNNNN``; only the newest ``keep``
    checkpoints stay (None: all)."""
    root = out / CHECKPOINTS
    final, tmp = root / step_name(step), root / f".{step_name(step)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_newest_intact(out: Path, read: Callable[[Path], T]) -> tuple[Path, T] | None:
    """The newest checkpoint that ``read`` reads back whole, with what it read; None when there is none.

    ``read`` must only read (so a damaged file leaves the trainer untouched) and raise one of
    UNREADABLE_ARTIFACT_ERRORS for a damaged file; a DermsynthError (changed data or settings) is not a skip.
    When every checkpoint is damaged, a DermsynthError says so.
    """
    checkpoints = list_checkpoints(out)
    for folder in reversed(checkpoints):
        try:
            return folder, read(folder)
        except UNREADABLE_ARTIFACT_ERRORS as exc:
            console.print(f"[yellow]skipped corrupt checkpoint {folder.name} ({type(exc).__name__}); "
                          "trying an older one[/yellow]")
    if checkpoints:  # training afresh would prune them by name: refuse rather than lose what may be recovered
        names = ", ".join(p.name for p in checkpoints)
        raise DermsynthError(f"no intact checkpoint in {out / CHECKPOINTS} (damaged: {names}); move that folder "
                             "away to train from step 0")
    return None
