"""The `generate` stage: a model folder + a plan -> ``SYN/images/<class>/*.png``, ``manifest.csv``, ``generate.json``.

Image ``i`` of class ``c`` (``c`` = the class's index in the model) has the seed
``seed + SEED_STRIDE * c + i``: it depends on neither the batch it was drawn in nor on the plan's other classes,
and asking for more images later extends a folder without changing the images already in it.

Crash safety: each PNG is written to a temporary name and renamed; the manifest is rebuilt from the PNGs on
disk (each carries its manifest row in its text chunks), so a killed run leaves no truncated image and no row
without its image, and a rerun of the same command makes only what is missing. Images failing QC are listed in
``rejected.csv`` (never saved), and replaced by the class's next seeds.

Several processes (``torchrun`` / ``accelerate launch``): each pass over the missing items is cut into the same
batches a single process would draw, and batch ``b`` goes to rank ``b % world_size``. Every image therefore comes
from the same seed in the same batch as in a single-process run (pixel-identical), each process writes only its
own PNGs, and the main process writes the manifest and ``rejected.csv`` from what all ranks made, after a barrier.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import ValidationError

from dermsynth.config import format_validation_error
from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import save_image
from dermsynth.diffusion.families import ImageGenerator, load_generator, read_model_info
from dermsynth.diffusion.generate_config import FALLBACK_SAMPLING, GenerateConfig
from dermsynth.diffusion.grid import to_uint8
from dermsynth.diffusion.qc import QCLimits, qc_reason
from dermsynth.diffusion.schedulers import check_scheduler_name
from dermsynth.distributed import ProcessShare, current_share
from dermsynth.errors import DermsynthError
from dermsynth.progress import console, make_progress
from dermsynth.utils import (
    atomic_path,
    ensure_writable_dir,
    read_csv,
    read_json,
    relative_path,
    stable_hash,
    torch_threads,
    write_csv_atomic,
    write_json_atomic,
)

SEED_STRIDE = 1_000_000
MANIFEST_COLUMNS = [
    "image_id", "path", "label", "prompt", "negative_prompt", "seed", "scheduler", "steps", "guidance_scale",
    "model", "model_sha256", "created_utc", "qc", "synthetic",
]
# Written only by a model conditioned on diagnoses (``Conditioning``): the diagnosis each image was drawn as.
OPTIONAL_COLUMNS = ["diagnosis"]
REJECTED_COLUMNS = ["image_id", "label", "seed", "reason", "created_utc"]


@dataclass
class GenerateResult:
    out: Path
    manifest: pd.DataFrame
    summary: dict[str, Any]


@dataclass(frozen=True)
class Item:
    label: str
    index: int
    seed: int
    image_id: str


def generate(
    model: str | Path,
    out: str | Path,
    config: GenerateConfig | Mapping[str, Any] | None = None,
    *,
    progress: bool = True,
    qc_limits: QCLimits = QCLimits(),
    **overrides: Any,
) -> GenerateResult:
    """Generate ``per_class`` images of each class, or (``balance``) fill every class of that prepared dataset's
    train split up to its largest class. Settings: ``config`` (a :class:`GenerateConfig` or a dict), then any
    keyword ``overrides`` of its fields; unset sampling settings fall back to the model's recorded defaults.

    Text-to-image models (Stable Diffusion families) also take ``prompts`` per class and a ``negative_prompt``
    (instead of the recorded ones) or ``prompts_from`` (a prepared dataset: each image takes the next metadata
    prompt of its class from the train split), and ``init_images`` (a prepared dataset or a folder of class folders) for
    image-to-image variations at ``strength``, or, with ``mask_from`` ("lesion" or a folder of masks), inpainting.
    """
    started = time.monotonic()
    cfg = _resolve_config(config, overrides)
    model = Path(model)
    out = Path(out)
    info = read_model_info(model)
    plan = make_plan(info["classes"], cfg.per_class, cfg.balance, cfg.classes)
    sampling = {**FALLBACK_SAMPLING, **info.get("sampling", {})}
    settings = {
        "scheduler": check_scheduler_name(cfg.scheduler if cfg.scheduler is not None else sampling["scheduler"]),
        "steps": cfg.steps if cfg.steps is not None else sampling["steps"],
        "guidance_scale": _guidance(cfg.guidance, sampling["guidance_scale"], info["classes"]),
        "seed": cfg.seed,
    }
    share = current_share()
    ensure_writable_dir(out / "images")
    with torch_threads(share.cpu_threads(cfg.threads)):
        generator = load_generator(model, info, share.device(cfg.device))
        batch_size = cfg.batch_size if cfg.batch_size is not None else generator.batch_size
        settings |= {"model": relative_path(model, out), "model_sha256": generator.sha256,
                     "family": generator.family, "precision": generator.precision}
        settings |= _text_image_options(generator, cfg.prompts, cfg.negative_prompt, cfg.init_images,
                                        cfg.strength, cfg.mask_from, out)
        if cfg.prompts_from is not None:
            settings |= _metadata_prompts(generator, cfg.prompts_from, out)
        state = _open_folder(out, settings, info["classes"], share)
        made = _generate_missing(generator, state, plan, info["classes"], settings, batch_size, share, qc_limits,
                                 progress and share.is_main, started)
    summary = _summary(state, plan, settings, "complete", started, batch_size, _split_record(share, made))
    if share.is_main:
        write_json_atomic(out / "generate.json", summary)
    return GenerateResult(out=out, manifest=state.manifest(), summary=summary)


def _open_folder(out: Path, settings: dict[str, Any], classes: list[str], share: ProcessShare) -> _FolderState:
    """The folder's state as the main process reads it (after clearing what a killed run left), sent to every
    rank: all of them then plan from the same view, whatever their file system shows them."""
    state = _FolderState.open(out, settings, classes, shared=share.distributed) if share.is_main else None
    rows, rejected = share.broadcast((state.rows, state.rejected) if state else None)
    return state or _FolderState(out, rows, rejected, writer=False, shared=True)


def _generate_missing(generator: ImageGenerator, state: _FolderState, plan: dict[str, int], classes: list[str],
                      settings: dict[str, Any], batch_size: int, share: ProcessShare,
                      qc_limits: QCLimits, progress: bool, started: float) -> list[list[Item]]:
    """Make every missing image, pass after pass (QC rejections are replaced by the next seeds); this rank takes
    every world_size-th batch of a pass. Returns, per rank, the items it made."""
    if share.is_main:
        write_json_atomic(state.root / "generate.json", _summary(state, plan, settings, "running", started,
                                                                 batch_size))
    made: list[list[Item]] = [[] for _ in range(share.world_size)]
    todo = _pending(state, plan, classes, settings["seed"])
    with _bar(progress, _share_size(todo, batch_size, share)) as advance:
        while any(todo.values()):
            batches = share.mine(list(_batches([item for items in todo.values() for item in items], batch_size)))
            accepted, rejected = [], []
            for batch in batches:
                rows, refused = _run_batch(generator, batch, settings, state, qc_limits)
                accepted += rows
                rejected += refused
                advance(len(batch))
            tried = [item for batch in batches for item in batch]
            for rank, (rows, refused, items) in enumerate(share.gather((accepted, rejected, tried))):
                if rank != share.rank:  # this rank's own rows are in its state already
                    for row in rows:
                        state.accept(row)
                    for row in refused:
                        state.reject(row)
                made[rank] += items
            state.flush()
            _check_rejections(state, plan)
            todo = _pending(state, plan, classes, settings["seed"])
    return made


def _share_size(todo: dict[str, list[Item]], batch_size: int, share: ProcessShare) -> int:
    """Images of this rank's first pass (the progress bar's total)."""
    batches = list(_batches([item for items in todo.values() for item in items], batch_size))
    return sum(len(batch) for batch in share.mine(batches))


def _split_record(share: ProcessShare, made: list[list[Item]]) -> dict[str, Any]:
    """How this call's work was split: per rank, the runs of consecutive indices it made, per class."""
    ranks = []
    for rank, items in enumerate(made):
        runs: list[list[Any]] = []
        for item in sorted(items, key=lambda i: (i.label, i.index)):
            if runs and runs[-1][0] == item.label and runs[-1][2] == item.index - 1:
                runs[-1][2] = item.index
            else:
                runs.append([item.label, item.index, item.index])
        ranks.append({"rank": rank, "images_tried": len(items), "indices": runs})
    return {"world_size": share.world_size, "rule": "each pass over the missing items is cut into batches of "
            "batch_size; batch b goes to rank b % world_size", "ranks": ranks}


def _resolve_config(config: GenerateConfig | Mapping[str, Any] | None, overrides: dict[str, Any]) -> GenerateConfig:
    """``config`` with the keyword overrides on top (None leaves a setting as it is), validated: one line naming
    the option as the CLI spells it."""
    base = config.model_dump() if isinstance(config, GenerateConfig) else dict(config or {})
    try:
        return GenerateConfig.model_validate({**base, **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as exc:
        raise DermsynthError(format_validation_error(exc, as_option=True)) from None


def _text_image_options(generator: ImageGenerator, prompts: dict[str, str] | None, negative_prompt: str | None,
                        init_images: str | Path | None, strength: float, mask_from: str | None,
                        out: Path) -> dict[str, Any]:
    """Apply prompt overrides and image-to-image / inpainting to a text-to-image generator; the settings they add
    (none when unused, so plain runs keep their settings and resume as before)."""
    if prompts is None and negative_prompt is None and init_images is None and mask_from is None:
        return {}
    if not generator.takes_prompts:
        raise DermsynthError(f"model family {generator.family!r} takes no prompts or init images "
                             "(only text-to-image models, such as Stable Diffusion, do)")
    added: dict[str, Any] = {}
    if prompts:
        unknown = sorted(set(prompts) - set(generator.classes))
        if unknown:
            raise DermsynthError(f"prompts for unknown class(es) {', '.join(unknown)}")
        if any(not str(p).strip() for p in prompts.values()):
            raise DermsynthError("a class prompt is empty")
        generator.use_prompts(prompts)
        added["prompts"] = dict(prompts)
    if negative_prompt is not None:
        generator.use_negative_prompt(negative_prompt)
        added["negative_prompt"] = negative_prompt
    if mask_from is not None and init_images is None:
        raise DermsynthError("--mask-from needs --init-images (the images to inpaint)")
    if init_images is not None:
        generator.use_start_images(init_images, strength, mask_from)
        added |= {"init_images": relative_path(init_images, out), "strength": strength,
                  "mask_from": mask_from if mask_from in (None, "lesion") else relative_path(mask_from, out)}
    return added


def _metadata_prompts(generator: ImageGenerator, prepared: str | Path, out: Path) -> dict[str, Any]:
    if not generator.takes_prompts:
        raise DermsynthError(f"model family {generator.family!r} takes no prompts (only text-to-image models, such "
                             "as Stable Diffusion, do)")
    generator.use_item_prompts(prepared)
    return {"prompts_from": relative_path(prepared, out)}


# --------------------------------------------------------------------------- the plan


def make_plan(
    model_classes: list[str], per_class: int | None, balance: str | Path | None, classes: list[str] | None
) -> dict[str, int]:
    """Images wanted per class (accepted images, after QC)."""
    if (per_class is None) == (balance is None):
        raise DermsynthError("give exactly one of --per-class N or --balance PREP")
    chosen = list(model_classes)
    if classes:
        unknown = [c for c in classes if c not in model_classes]
        if unknown:
            raise DermsynthError(f"unknown class(es) {', '.join(unknown)}; the model knows {', '.join(model_classes)}")
        chosen = [c for c in model_classes if c in classes]
    if per_class is not None:
        if per_class < 1:
            raise DermsynthError(f"--per-class must be at least 1 (got {per_class})")
        return dict.fromkeys(chosen, per_class)
    counts = load_prepared(balance).split("train")["label"].value_counts()
    unknown = [c for c in counts.index if c not in model_classes]
    if unknown:
        raise DermsynthError(f"{balance} has class(es) {', '.join(unknown)} that the model does not know")
    largest = int(counts.max())
    plan = {c: largest - int(counts.get(c, 0)) for c in chosen}
    if not any(plan.values()):
        raise DermsynthError(f"nothing to generate: the chosen classes of {balance} are already balanced "
                             f"({largest} training images each)")
    return plan


def _guidance(chosen: float | dict[str, float] | None, model_default: float, classes: list[str]
              ) -> float | dict[str, float]:
    """One guidance for every class, or one per class (classes not named take the model's default)."""
    if not isinstance(chosen, dict):
        return float(chosen if chosen is not None else model_default)
    unknown = sorted(set(chosen) - set(classes))
    if unknown:
        raise DermsynthError(f"guidance names class(es) {', '.join(unknown)} that the model does not make "
                             f"({', '.join(classes)})")
    return {label: float(chosen.get(label, model_default)) for label in classes}


def guidance_for(settings: dict[str, Any], label: str) -> float:
    scale = settings["guidance_scale"]
    return float(scale[label]) if isinstance(scale, dict) else float(scale)


def item_for(label: str, target: int, index: int, seed: int) -> Item:
    return Item(label, index, seed + SEED_STRIDE * target + index, f"syn-{label}-s{seed}-{index:05d}")


def _pending(state: _FolderState, plan: dict[str, int], model_classes: list[str], seed: int) -> dict[str, list[Item]]:
    """Per class, the next unused indices, as many as accepted images are still missing."""
    todo: dict[str, list[Item]] = {}
    for label, wanted in plan.items():
        used = state.used_indices(label)
        missing = wanted - state.accepted(label)
        todo[label] = []
        index = 0
        while len(todo[label]) < missing:
            if index not in used:
                todo[label].append(item_for(label, model_classes.index(label), index, seed))
            index += 1
    return todo


def _batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    """Batches of one class each (a class may have its own guidance); an image does not depend on its batch."""
    for label in dict.fromkeys(item.label for item in items):
        of_class = [item for item in items if item.label == label]
        for start in range(0, len(of_class), size):
            yield of_class[start:start + size]


def _check_rejections(state: _FolderState, plan: dict[str, int]) -> None:
    for label, wanted in plan.items():
        rejected = state.rejected_count(label)
        if rejected > max(8, wanted):
            raise DermsynthError(f"QC rejected {rejected} images of class {label} (see rejected.csv); "
                                 "the model is likely undertrained or broken")


# --------------------------------------------------------------------------- one batch


def _run_batch(generator: ImageGenerator, batch: list[Item], settings: dict[str, Any], state: _FolderState,
               limits: QCLimits) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sample one batch, write the PNGs that pass QC; the manifest rows and rejections it made."""
    accepted, rejected = [], []
    guidance = guidance_for(settings, batch[0].label)
    images = generator([item.label for item in batch], [item.seed for item in batch], steps=settings["steps"],
                       scheduler=settings["scheduler"], guidance_scale=guidance,
                       indices=[item.index for item in batch])
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for item, image in zip(batch, images, strict=True):
        reason = qc_reason(image, limits)
        if reason:
            rejected.append({"image_id": item.image_id, "label": item.label, "seed": item.seed, "reason": reason,
                             "created_utc": now})
            state.reject(rejected[-1])
            continue
        row = {
            "image_id": item.image_id, "path": f"images/{item.label}/{item.image_id}.png", "label": item.label,
            "prompt": generator.prompt_for(item.label, item.index),
            "negative_prompt": generator.negative_prompt(item.label),
            "seed": item.seed, "scheduler": settings["scheduler"], "steps": settings["steps"],
            "guidance_scale": guidance, "model": settings["model"],
            "model_sha256": settings["model_sha256"], "created_utc": now, "qc": "pass", "synthetic": True,
        }
        if generator.conditioning.scheme == "diagnosis":
            row["diagnosis"] = generator.diagnosis_for(item.label, item.seed)
        write_png(to_uint8(image), state.root / row["path"], row)
        state.accept(row)
        accepted.append(row)
    if not state.shared:
        state.flush()
    return accepted, rejected


def write_png(pixels: np.ndarray, path: Path, row: dict[str, Any]) -> None:
    """Atomically: a reader sees the whole PNG with its provenance, or no file."""
    with atomic_path(path) as tmp:
        save_image(pixels, tmp, text={k: str(v) for k, v in row.items()})


# --------------------------------------------------------------------------- the output folder


class _FolderState:
    """What ``SYN`` already holds: rows recovered from its PNGs, and rejections from rejected.csv."""

    def __init__(self, root: Path, rows: dict[str, dict[str, Any]], rejected: list[dict[str, Any]],
                 writer: bool = True, shared: bool = False):
        self.root = root
        self.rows = rows
        self.rejected = rejected
        self.writer = writer  # only one process writes manifest.csv and rejected.csv
        self.shared = shared  # several processes fill the folder: the files are written once per pass

    @classmethod
    def open(cls, root: Path, settings: dict[str, Any], classes: list[str], shared: bool = False) -> _FolderState:
        """Read the folder, deleting what a killed run left half-written."""
        _check_same_settings(root, settings)
        for stale in (root / "images").rglob(".*.tmp*"):
            stale.unlink(missing_ok=True)  # left by a killed write; the image is made again
        rows, damaged = {}, 0
        for path in sorted((root / "images").glob("*/*.png")):
            row = _row_from_png(path)
            if row == "damaged":  # truncated or overwritten after it was written: made again below
                path.unlink()
                damaged += 1
                continue
            if row is None or row.get("label") not in classes or path.parent.name != row["label"]:
                raise DermsynthError(f"{path} was not made by dermsynth generate with these settings; "
                                     "use an empty --out folder")
            rows[row["image_id"]] = row
        if damaged:
            console.print(f"[yellow]{damaged} damaged image(s) in {root} removed; they are made again[/yellow]")
        rejected_path = root / "rejected.csv"
        rejected = (read_csv(rejected_path, "delete it (its images are then tried again) or use another --out",
                             REJECTED_COLUMNS, dtype={"image_id": str, "label": str}).to_dict("records")
                    if rejected_path.is_file() else [])
        state = cls(root, rows, rejected, shared=shared)
        state.flush()
        return state

    def used_indices(self, label: str) -> set[int]:
        ids = [r["image_id"] for r in self.rows.values() if r["label"] == label]
        ids += [r["image_id"] for r in self.rejected if r["label"] == label]
        return {int(image_id.rsplit("-", 1)[1]) for image_id in ids}

    def accepted(self, label: str) -> int:
        return sum(r["label"] == label for r in self.rows.values())

    def rejected_count(self, label: str) -> int:
        return sum(r["label"] == label for r in self.rejected)

    def accept(self, row: dict[str, Any]) -> None:
        self.rows[row["image_id"]] = row

    def reject(self, row: dict[str, Any]) -> None:
        self.rejected.append(row)

    def manifest(self) -> pd.DataFrame:
        rows = list(self.rows.values())
        extra = [column for column in OPTIONAL_COLUMNS if any(column in row for row in rows)]
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + extra)
        return frame.sort_values(["label", "image_id"]).reset_index(drop=True)

    def flush(self) -> None:
        if not self.writer:
            return
        manifest = self.manifest()
        write_csv_atomic(self.root / "manifest.csv", manifest)
        write_csv_atomic(self.root / "images" / "metadata.csv", imagefolder_metadata(manifest))
        if self.rejected:  # sorted: the same file whichever process or batch found them
            rejected = pd.DataFrame(self.rejected, columns=REJECTED_COLUMNS).sort_values(["label", "image_id"])
            write_csv_atomic(self.root / "rejected.csv", rejected)


def imagefolder_metadata(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as Hugging Face ``datasets``' imagefolder reads it: ``file_name`` relative to ``SYN/images``,
    then the manifest's columns: the class as ``label`` (its folder name) and the provenance (seed, prompt, model
    hash, the ``synthetic`` flag)."""
    frame = manifest.drop(columns=["path"])
    frame.insert(0, "file_name", manifest["path"].str.removeprefix("images/"))
    return frame


def _row_from_png(path: Path) -> dict[str, Any] | str | None:
    """The manifest row stored in a PNG's text chunks; None if it has none, "damaged" if its pixels do not decode."""
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}))
            image.load()
    except (OSError, SyntaxError, ValueError):
        return "damaged"
    if not all(column in text for column in MANIFEST_COLUMNS):
        return None
    row: dict[str, Any] = {column: text[column] for column in MANIFEST_COLUMNS + OPTIONAL_COLUMNS if column in text}
    row.update(seed=int(row["seed"]), steps=int(row["steps"]), guidance_scale=float(row["guidance_scale"]),
               synthetic=row["synthetic"] == "True")
    return row


def _check_same_settings(root: Path, settings: dict[str, Any]) -> None:
    previous = root / "generate.json"
    if not previous.is_file():
        return
    # The model is identified by its weights' hash, so a moved model folder still resumes.
    recorded = read_json(previous, "delete it to go on with the current settings, or use another --out")
    earlier = {k: v for k, v in dict(recorded.get("settings") or {}).items() if k != "model"}
    current = {k: v for k, v in settings.items() if k != "model"}
    if stable_hash(earlier) != stable_hash(current):
        changed = sorted(k for k in current.keys() | earlier.keys() if earlier.get(k) != current.get(k))
        raise DermsynthError(f"{root} holds images made with other settings ({', '.join(changed)}); "
                             "use another --out")


def _summary(state: _FolderState, plan: dict[str, int], settings: dict[str, Any], status: str, started: float,
             batch_size: int, processes: dict[str, Any] | None = None) -> dict[str, Any]:
    seconds = time.monotonic() - started
    return {
        "status": status,
        "plan": plan,
        "settings": settings,
        "seed_rule": f"seed + {SEED_STRIDE} * class_index + i (class_index = position in the model's classes)",
        "batch_size": batch_size,
        "counts": {label: state.accepted(label) for label in plan},
        "rejected": {label: state.rejected_count(label) for label in plan},
        "rejected_by_reason": pd.Series([r["reason"] for r in state.rejected], dtype=str).value_counts().to_dict(),
        "seconds_this_run": round(seconds, 1),
        "processes": processes,
        "updated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over images; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    with make_progress() as progress:
        task = progress.add_task("generate", total=total, status="")
        yield lambda n: progress.advance(task, n)
