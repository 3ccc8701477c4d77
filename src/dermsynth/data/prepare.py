"""The `prepare` stage: dataset on disk -> prepared/ (metadata.csv, images/<label>/*, prepare.json).

Order: read metadata -> labels -> optional subsample -> decode + preprocess images in worker processes
(cached and resumable) -> grouped split of the images that survived -> prompts -> atomic writes.
`prepare.json` is written last; its presence marks a complete prepared folder.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.data.config import PrepareConfig, PreprocessConfig
from dermsynth.data.images import ImageReadError, load_rgb, save_image
from dermsynth.data.labels import assign_labels, class_order
from dermsynth.data.prompts import render_prompt, validate_template
from dermsynth.data.readers import read_dataset
from dermsynth.data.schema import CANONICAL_COLUMNS
from dermsynth.data.splits import check_disjoint, grouped_split, grouping_level, split_summary
from dermsynth.errors import DermsynthError
from dermsynth.progress import track
from dermsynth.utils import (
    atomic_path,
    ensure_writable_dir,
    marker_hash,
    stable_hash,
    write_csv_atomic,
    write_json_atomic,
)

JOURNAL = ".preprocess-journal.jsonl"
SETTINGS_MARKER = ".settings.json"


@dataclass
class PrepareResult:
    out: Path
    metadata: pd.DataFrame
    summary: dict[str, Any]


def prepare(config: PrepareConfig, out: str | Path, progress: bool = True) -> PrepareResult:
    """Prepare a dataset into ``out``. Reruns reuse processed images made with the same settings."""
    started = time.time()
    out = Path(out)
    _check_output_location(config, out)
    ensure_writable_dir(out)
    validate_template(config.prompt.template, _TEMPLATE_FIELDS)

    read = read_dataset(config)
    skipped = list(read.skipped)
    frame, unlabelled = assign_labels(read.frame, config.label_scheme)
    skipped += unlabelled
    if config.max_images and len(frame) > config.max_images:
        frame = _stratified_subsample(frame, config.max_images, config.split.seed)
    _require_two_classes(frame, config.dataset, skipped)
    frame, failed, info = _process_images(frame, config.preprocess, out, config.workers, progress)
    skipped += failed
    _require_two_classes(frame, config.dataset, skipped)
    duplicates = _content_duplicates(frame, out, config) if config.group_duplicates else []
    links = [(a, b) for a, b, _ in duplicates]
    frame["split"] = grouped_split(frame, config.split.val, config.split.test, config.split.seed, links)
    check_disjoint(frame)
    frame["prompt"] = [render_prompt(config.prompt.template, row) for row in frame.to_dict("records")]
    metadata = frame[CANONICAL_COLUMNS].sort_values("image_id").reset_index(drop=True)

    summary = _summary(config, read.notes, metadata, skipped, started)
    summary["content_duplicates"] = [{"image_id_1": a, "image_id_2": b, "similarity": round(s, 4)}
                                     for a, b, s in duplicates]
    write_csv_atomic(out / "metadata.csv", metadata)
    write_csv_atomic(out / "preprocess.csv", info)
    write_json_atomic(out / "prepare.json", summary)
    (out / "images" / JOURNAL).unlink(missing_ok=True)
    return PrepareResult(out=out, metadata=metadata, summary=summary)


_TEMPLATE_FIELDS = set(CANONICAL_COLUMNS) | {"lesion"}


def expected_split_counts(config: PrepareConfig) -> dict[str, dict[str, int]]:
    """Images per split and class that `prepare` would make, without decoding an image: the metadata read, labelled,
    subsampled and split as prepare does (a plan; images that fail to decode later, and content duplicates that
    move between splits, can change it slightly)."""
    read = read_dataset(config)
    frame, _ = assign_labels(read.frame, config.label_scheme)
    if config.max_images and len(frame) > config.max_images:
        frame = _stratified_subsample(frame, config.max_images, config.split.seed)
    _require_two_classes(frame, config.dataset, list(read.skipped))
    frame = frame.reset_index(drop=True)
    frame["split"] = grouped_split(frame, config.split.val, config.split.test, config.split.seed, [])
    classes = class_order(frame["label"].unique())
    return {split: {label: int(((frame["split"] == split) & (frame["label"] == label)).sum()) for label in classes}
            for split in ("train", "val", "test")}


def _check_output_location(config: PrepareConfig, out: Path) -> None:
    if config.root is None:
        return
    root, target = config.root.resolve(), out.resolve()
    if target == root or root in target.parents:
        raise DermsynthError(f"output folder {out} is inside the dataset folder {config.root}; choose another --out")


def _content_duplicates(frame: pd.DataFrame, out: Path, config: PrepareConfig) -> list[tuple[str, str, float]]:
    """Pairs of processed images with (nearly) the same content: re-uploads under a new id, flipped copies.

    Left in two splits they leak the test set into training. On HAM10000 every pair found above 0.95 is the
    same lesion (bench/RESULTS.md); on the UDA-1 sample two exact duplicates under different ids are found.
    """
    from dermsynth.data.similarity import duplicate_pairs

    images = np.stack([load_rgb(out / path) for path in frame["path"]])
    ids = frame["image_id"].tolist()
    return [(ids[i], ids[j], s) for i, j, s in duplicate_pairs(images, config.duplicate_threshold)]


def _require_two_classes(frame: pd.DataFrame, dataset: str, skipped: list[dict[str, str]]) -> None:
    if frame.empty:
        raise DermsynthError(f"{dataset}: no usable images (skipped: {_reason_counts(skipped) or 'none found'})")
    if frame["label"].nunique() < 2:
        found = sorted(frame["label"].unique())
        raise DermsynthError(f"{dataset}: need at least two classes with images, found {found}")


def _stratified_subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Keep ``n`` images with the label mix of the whole (at least one per class)."""
    share = frame["label"].value_counts(normalize=True)
    quota = {label: max(1, round(n * fraction)) for label, fraction in share.items()}
    parts = [group.sample(n=min(len(group), quota[label]), random_state=seed)
             for label, group in frame.groupby("label")]
    return pd.concat(parts).sort_values("image_id").reset_index(drop=True)


# --------------------------------------------------------------------------- images


def _output_path(out: Path, row: dict[str, Any], image_format: str) -> Path:
    return out / "images" / row["label"] / f"{row['image_id']}.{image_format}"


def _process_one(task: tuple[str, str, str, dict[str, Any]]) -> dict[str, Any]:
    """Decode, preprocess and save one image (runs in a worker process)."""
    from dermsynth.data.preprocess import process_image

    image_id, source, target, settings = task
    cfg = PreprocessConfig(**settings)
    try:
        rgb = load_rgb(source, min_side=int(cfg.draft_factor * cfg.image_size))
    except ImageReadError as exc:
        return {"image_id": image_id, "error": exc.reason, "detail": exc.detail}
    height, width = rgb.shape[:2]
    if min(height, width) < cfg.min_source_side:
        return {"image_id": image_id, "error": "too small",
                "detail": f"{width}x{height} px, below min_source_side {cfg.min_source_side}"}
    result = process_image(rgb, cfg)
    with atomic_path(target) as tmp:
        save_image(result.image, tmp)
    x0, y0, x1, y1 = (int(v) for v in result.box)
    return {
        "image_id": image_id, "decoded_width": width, "decoded_height": height,
        "box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1,
        "lesion_fraction": float(result.lesion_fraction), "centered": bool(result.centered),
        "hair_fraction": float(result.hair_fraction),
    }


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; nested threads only contend


def _load_journal(images_dir: Path, settings_hash: str) -> dict[str, dict[str, Any]]:
    """Results of an earlier run with the same settings; anything else is invalidated."""
    marker = images_dir / SETTINGS_MARKER
    if marker_hash(marker) == settings_hash:
        done: dict[str, dict[str, Any]] = {}
        journal = images_dir / JOURNAL
        if journal.is_file():
            for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if isinstance(record, dict) and isinstance(record.get("image_id"), str):
                    done[record["image_id"]] = record
        previous = images_dir.parent / "preprocess.csv"
        with contextlib.suppress(ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            if previous.is_file():  # a cache: when damaged, its images are processed again
                for record in pd.read_csv(previous, dtype={"image_id": str}).to_dict("records"):
                    done.setdefault(record["image_id"], record)
        return done
    if images_dir.exists():
        import shutil

        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    (images_dir / SETTINGS_MARKER).write_text(json.dumps({"hash": settings_hash}))
    return {}


def _process_images(
    frame: pd.DataFrame, cfg: PreprocessConfig, out: Path, workers: int, progress: bool
) -> tuple[pd.DataFrame, list[dict[str, str]], pd.DataFrame]:
    images_dir = out / "images"
    settings = cfg.model_dump()
    done = _load_journal(images_dir, stable_hash(settings))
    rows = frame.to_dict("records")
    targets = {row["image_id"]: _output_path(out, row, cfg.image_format) for row in rows}
    tasks = [
        (row["image_id"], row["source_path"], str(targets[row["image_id"]]), settings)
        for row in rows
        if not (row["image_id"] in done and "error" not in done[row["image_id"]] and targets[row["image_id"]].is_file())
    ]
    results = {image_id: record for image_id, record in done.items() if image_id in targets}
    with open(images_dir / JOURNAL, "a", encoding="utf-8") as journal:
        for record in _run_tasks(tasks, workers, progress):
            results[record["image_id"]] = record
            journal.write(json.dumps(record) + "\n")
            journal.flush()

    failed = [
        {"image_id": i, "reason": f"image {r['error']}"} for i, r in results.items() if isinstance(r.get("error"), str)
    ]
    good = [i for i, r in results.items() if not isinstance(r.get("error"), str)]
    frame = frame[frame["image_id"].isin(good)].copy()
    frame["path"] = [str(targets[i].relative_to(out)) for i in frame["image_id"]]
    info_columns = ["image_id", "decoded_width", "decoded_height", "box_x0", "box_y0", "box_x1", "box_y1",
                    "lesion_fraction", "centered", "hair_fraction"]
    info = pd.DataFrame([results[i] for i in sorted(good)], columns=info_columns)
    info = info.merge(frame[["image_id", "source_path"]], on="image_id", how="left")
    return frame.reset_index(drop=True), failed, info


def _run_tasks(tasks: list, workers: int, progress: bool):
    if not tasks:
        return
    if workers <= 1 or len(tasks) < 8:
        yield from track(map(_process_one, tasks), len(tasks), "preprocess", progress)
        return
    # Not "fork": a parent that already ran OpenCV/BLAS thread pools can deadlock its forked children.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(min(workers, os.cpu_count() or 1), mp_context=context, initializer=_init_worker)
    with pool:
        chunk = max(1, min(32, len(tasks) // (workers * 8)))
        yield from track(pool.map(_process_one, tasks, chunksize=chunk), len(tasks), "preprocess", progress)


# --------------------------------------------------------------------------- summary


def _reason_counts(skipped: list[dict[str, str]]) -> dict[str, int]:
    return dict(Counter(item["reason"] for item in skipped).most_common())


def _summary(
    config: PrepareConfig, notes: dict[str, Any], metadata: pd.DataFrame, skipped: list[dict[str, str]], started: float
) -> dict[str, Any]:
    from dermsynth.version import __version__

    labels = class_order(metadata["label"].unique())
    return {
        "dermsynth_version": __version__,
        "settings": json.loads(config.model_dump_json()),
        "images": len(metadata),
        "classes": labels,
        "targets": {label: i for i, label in enumerate(labels)},
        "grouping": grouping_level(metadata),
        "splits": split_summary(metadata),
        "missing_values": {c: int(metadata[c].isna().sum()) for c in ("patient_id", "lesion_id", "sex",
                                                                      "age_approx", "anatom_site", "diagnosis")},
        "skipped_count": len(skipped),
        "skipped_by_reason": _reason_counts(skipped),
        "skipped": skipped,
        "notes": notes,
        "seconds": round(time.time() - started, 2),
    }

