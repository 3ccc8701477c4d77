"""Synthetic folders made elsewhere get the real images' preprocessing before they are validated or audited.

A folder written by `dermsynth generate` (``manifest.csv`` + ``generate.json``) already matches the prepared
images: its generator learned from them. A third-party folder (uncropped 512 px squares, say, beside lesion-centred
crops) does not, and a classifier can then learn framing instead of disease. Such a folder is passed through
prepare's own :func:`~dermsynth.data.preprocess.process_image` (vignette handling, lesion-centred crop, resize,
hair removal, colour constancy: whatever the real dataset's ``prepare.json`` recorded) into a cache folder that
is reused while the source files and the settings stay the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from dermsynth.data.config import PreprocessConfig
from dermsynth.data.images import ImageReadError, list_images, load_rgb, save_image
from dermsynth.data.preprocess import process_image
from dermsynth.data.schema import slug
from dermsynth.errors import DermsynthError
from dermsynth.progress import track
from dermsynth.utils import read_marker, stable_hash, write_json_atomic

MARKER = "preprocessed.json"
RECONSTRUCTION_RECORD = "reconstruct.json"  # `dermsynth reconstruct`: real images through an autoencoder


def made_by_dermsynth(folder: str | Path) -> bool:
    """Written by `generate` (or `reconstruct`) from the prepared images, so already in their preprocessing."""
    folder = Path(folder)
    return (folder / "manifest.csv").is_file() and any(
        (folder / record).is_file() for record in ("generate.json", RECONSTRUCTION_RECORD))


def is_reconstruction(folder: str | Path) -> bool:
    """Reconstructions of real images: derived from patients' images, so never a synthetic training set."""
    return (Path(folder) / RECONSTRUCTION_RECORD).is_file()


def class_folders(folder: Path) -> list[Path]:
    base = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def preprocessed_copy(folder: str | Path, settings: PreprocessConfig, cache: str | Path,
                      progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """``cache/<name>-<key>/images/<class>/*.png``: every image of ``folder`` through prepare's preprocessing.
    Returns the copy and its record (source, settings, counts, unreadable files skipped)."""
    folder = Path(folder)
    files = [path for class_dir in class_folders(folder) for path in list_images(class_dir)]
    key = stable_hash([settings.model_dump(mode="json"),
                       [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]])
    target = Path(cache) / f"{folder.name}-{key}"
    record = read_marker(target / MARKER)
    if record.get("key") == key:
        return target, record
    # A folder of our own (job-array tasks may build the same copy at once): never one another's.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        record = _write_copy(folder, files, settings, tmp, key, progress)
        if read_marker(target / MARKER).get("key") == key:  # another task finished it meanwhile: keep theirs
            return target, read_marker(target / MARKER)
        shutil.rmtree(target, ignore_errors=True)  # a stale or half-deleted copy
        os.replace(tmp, target)
    except OSError:
        if read_marker(target / MARKER).get("key") != key:
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, record


def _write_copy(folder: Path, files: list[Path], settings: PreprocessConfig, tmp: Path, key: str,
                progress: bool) -> dict[str, Any]:
    skipped: list[str] = []
    for class_dir in class_folders(folder):
        (tmp / "images" / class_dir.name).mkdir(parents=True, exist_ok=True)
    for path in track(files, len(files), f"preprocess {folder.name}", enabled=progress):
        try:
            result = process_image(load_rgb(path, min_side=settings.image_size), settings)
        except (ImageReadError, ValueError):
            skipped.append(str(path.relative_to(folder)))  # counted and skipped, as validate does
            continue
        out = tmp / "images" / path.parent.name / f"{path.stem}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(result.image, out, text={"synthetic": "true", "preprocessed_from": folder.name})
    record = {"source": folder.name, "images": len(files) - len(skipped), "skipped": skipped,
              "settings": settings.model_dump(mode="json"), "key": key}
    write_json_atomic(tmp / MARKER, record)
    return record


def comparable_folder(folder: str | Path, prepared_summary: dict[str, Any], enabled: bool, cache: str | Path,
                      progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The folder to read a synthetic set from beside a prepared dataset (whose ``prepare.json`` is
    ``prepared_summary``), and a record of how it was brought to that dataset's preprocessing."""
    folder = Path(folder)
    if made_by_dermsynth(folder):
        return folder, {"preprocessed": False, "why": "made by dermsynth generate from the prepared images"}
    if not enabled:
        return folder, {"preprocessed": False, "why": "synthetic_preprocess is off"}
    if not folder.is_dir():
        raise DermsynthError(f"synthetic folder not found: {folder}")
    settings = PreprocessConfig.model_validate(prepared_summary["settings"]["preprocess"])
    copy, record = preprocessed_copy(folder, settings, cache, progress)
    return copy, {"preprocessed": True, "why": "no dermsynth manifest", "copy": copy.name,
                  "images": record["images"], "skipped": len(record["skipped"])}


# The columns of every image table a stage builds from real splits or synthetic folders.
IMAGE_COLUMNS = ["image_id", "path", "target", "group", "synthetic"]


def synthetic_frame(folder: str | Path, classes: list[str]) -> pd.DataFrame:
    """A folder of class sub-folders (``SYN/images/<class>/`` as written by `generate`, or ``SYN/<class>/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DermsynthError(f"synthetic folder not found: {folder}")
    base = folder / "images" if (folder / "images").is_dir() else folder
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DermsynthError(f"{folder}: no class sub-folders (expected <class>/*.png, e.g. benign/, malignant/)")
    by_slug = {slug(name): target for target, name in enumerate(classes)}
    rows = []
    for class_dir in class_dirs:
        target = by_slug.get(slug(class_dir.name))
        if target is None:
            raise DermsynthError(f"{folder}: class folder {class_dir.name!r} is not a class of the real data "
                                 f"({', '.join(classes)})")
        rows += [{"image_id": f"syn:{folder.name}/{class_dir.name}/{p.name}", "path": str(p), "target": target,
                  "group": f"syn:{folder.name}", "synthetic": True} for p in list_images(class_dir)]
    if not rows:
        raise DermsynthError(f"{folder}: no PNG/JPEG images in its class folders")
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS)
