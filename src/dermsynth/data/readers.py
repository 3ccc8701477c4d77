"""Dataset readers: each turns one on-disk layout into the reader frame of :mod:`dermsynth.data.schema`.

A reader never decodes images (that is `prepare`'s job, in parallel); it resolves each image's file and
records rows it cannot use in ``skipped`` with a short reason, so that every dropped image is accounted for.

Readers register themselves with :func:`register_reader` (name, licence, help text); `PrepareConfig.dataset`,
`dermsynth prepare --help` and the report's data licence all read that registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from dermsynth.data.config import READERS, PrepareConfig
from dermsynth.data.images import IMAGE_SUFFIXES, list_images
from dermsynth.data.schema import HAM_DIAGNOSES, clean_text, finish_reader_frame
from dermsynth.errors import DermsynthError


@dataclass
class ReadResult:
    frame: pd.DataFrame
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


ReadFunction = Callable[[PrepareConfig], ReadResult]


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``read(config)`` and what the CLI help and the report say about its dataset."""

    name: str
    read: ReadFunction
    licence: str  # the report's provenance line; a reader may put a more specific one in its notes
    help: str  # a few words after the name in `dermsynth prepare --help`
    # ``detect(root)``: the file or folder that shows ``root`` is in this reader's layout, or None
    detect: Callable[[Path], str | None] | None = None

    def __call__(self, config: PrepareConfig) -> ReadResult:
        return self.read(config)


def register_reader(name: str, *, licence: str, help: str, detect: Callable[[Path], str | None] | None = None
                    ) -> Callable[[ReadFunction], ReadFunction]:
    """Decorator: make ``read`` the reader of ``--dataset name``; ``detect`` lets `prepare --root` without
    ``--dataset`` recognise the layout."""

    def add(read: ReadFunction) -> ReadFunction:
        READERS.add(name, Reader(name, read, licence, help, detect))
        return read

    return add


def infer_reader(root: Path) -> tuple[str, str] | None:
    """(reader name, the evidence) of the one registered layout ``root`` is in; None when none or several match
    (a guess between two readers would be wrong half the time)."""
    found = [(reader.name, evidence) for _, reader in READERS.items()
             if reader.detect is not None and (evidence := reader.detect(root)) is not None]
    return found[0] if len(found) == 1 else None


def _file_named(*names: str) -> Callable[[Path], str | None]:
    def detect(root: Path) -> str | None:
        return next((name for name in names if (root / name).is_file()), None)

    return detect


def _archive_layout(root: Path) -> str | None:
    return "json_meta/" if (root / "json_meta").is_dir() else None


def _class_folders(root: Path) -> str | None:
    """Only sub-folders that hold images, and no metadata file of another layout beside them."""
    if not root.is_dir() or any(root.glob("*.csv")) or (root / "json_meta").exists():
        return None
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(folders) >= 2 and all(list_images(p) for p in folders):
        return f"{len(folders)} class folders"
    return None


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; an unknown name is a one-line error listing the known ones."""
    return READERS.get(name)


def readers_help() -> str:
    """``--dataset`` help: each reader's name and help text, in registration order."""
    parts = [f"{reader.name} ({reader.help})" if reader.help else reader.name for _, reader in READERS.items()]
    return (", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)) + "."


def sample_root() -> Path:
    """The embedded CC0 UDA-1 sample (ISIC Archive layout, downscaled to a 128 px short side)."""
    return Path(str(resources.files("dermsynth.data") / "sample" / "uda1"))


# --------------------------------------------------------------------------- helpers


def _require_dir(path: Path | None, what: str) -> Path:
    if path is None:
        raise DermsynthError(f"{what}: --root is required for this dataset")
    if not path.is_dir():
        raise DermsynthError(f"{what}: folder not found: {path}")
    return path


def _read_csv(path: Path, required: list[list[str]], what: str) -> pd.DataFrame:
    """Read a metadata CSV; ``required`` lists alternatives, e.g. [["image_name"], ["target", "benign_malignant"]]."""
    if not path.is_file():
        raise DermsynthError(f"{what}: metadata CSV not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DermsynthError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    frame.columns = [c.strip() for c in frame.columns]
    for options in required:
        if not any(option in frame.columns for option in options):
            wanted = " or ".join(repr(o) for o in options)
            raise DermsynthError(f"{path}: missing required column {wanted} (found: {', '.join(frame.columns)})")
    return frame


def _first_csv(candidates: list[Path], what: str) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(str(c) for c in candidates)
    raise DermsynthError(f"{what}: no metadata CSV found (looked for {names}); pass --csv")


def _image_index(folders: list[Path]) -> dict[str, Path]:
    """Map image stem -> file over the first existing folders (one directory listing, not a stat per row)."""
    index: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for path in list_images(folder):
                index.setdefault(path.stem, path)
    return index


def _col(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in row and clean_text(row[name]) is not None:
            return row[name]
    return None


# --------------------------------------------------------------------------- the embedded sample


@register_reader("sample", licence="ISIC Archive collection UDA-1, CC0 1.0 (embedded in dermsynth, downscaled)",
                 help="embedded CC0 UDA-1")
def read_sample(config: PrepareConfig) -> ReadResult:
    return read_isic_archive(config, root=sample_root(), source="isic-archive:uda1")


# --------------------------------------------------------------------------- ISIC 2020


@register_reader("isic2020",
                 licence="ISIC 2020 Challenge training data, CC BY-NC 4.0 (non-commercial use, attribution required)",
                 help="GroundTruth CSV or Kaggle train.csv + JPEGs",
                 detect=_file_named("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv"))
def read_isic2020(config: PrepareConfig, require_images: bool = True) -> ReadResult:
    """ISIC 2020: the official GroundTruth CSV (v1/v2) or Kaggle's train.csv, next to a folder of JPEGs."""
    root = config.root
    if require_images:
        root = _require_dir(root, "isic2020")
    csv = config.csv or _first_csv(
        [root / name for name in ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv",
                                  "train.csv")] if root else [],
        "isic2020",
    )
    table = _read_csv(csv, [["image_name"], ["target", "benign_malignant"]], "isic2020")
    index = _image_index([root / "train", root / "jpeg" / "train", root / "ISIC_2020_Training_JPEG" / "train", root]
                         if root else [])
    result = ReadResult(frame=pd.DataFrame(), notes={"csv": str(csv)})
    table = _drop_isic2020_duplicates(table, config, csv, result)
    rows = []
    for record in table.to_dict("records"):
        image_id = record["image_name"].strip()
        path = index.get(image_id)
        if path is None and require_images:
            result.skipped.append({"image_id": image_id, "reason": "missing image"})
            continue
        benign_malignant = _col(record, "benign_malignant")
        if benign_malignant is None and clean_text(record.get("target")) in ("0", "1"):
            benign_malignant = "malignant" if record["target"].strip() == "1" else "benign"
        rows.append({
            "image_id": image_id,
            "source_path": str(path) if path else None,
            "patient_id": _col(record, "patient_id"),
            "lesion_id": _col(record, "lesion_id"),
            "sex": _col(record, "sex"),
            "age_approx": _col(record, "age_approx"),
            "anatom_site": _col(record, "anatom_site_general_challenge", "anatom_site_general", "anatom_site"),
            "diagnosis": _col(record, "diagnosis"),
            "benign_malignant": benign_malignant,
            "raw_label": record.get("benign_malignant") or record.get("target"),
            "source": "isic2020",
        })
    result.frame = _with_raw_label(rows)
    return result


def _drop_isic2020_duplicates(
    table: pd.DataFrame, config: PrepareConfig, csv: Path, result: ReadResult
) -> pd.DataFrame:
    dup_path = config.duplicates or csv.parent / "ISIC_2020_Training_Duplicates.csv"
    if not config.drop_duplicates or not dup_path.is_file():
        result.notes["duplicates"] = "not dropped" if not config.drop_duplicates else "no duplicates list found"
        return table
    pairs = _read_csv(dup_path, [["image_name_1"], ["image_name_2"]], "isic2020 duplicates")
    present = set(table["image_name"].str.strip())
    dropped = set()
    for first, second in zip(pairs["image_name_1"].str.strip(), pairs["image_name_2"].str.strip(), strict=True):
        # Keep the first image of each pair unless it was itself already dropped.
        if first in present and second in present and first not in dropped:
            dropped.add(second)
    result.skipped.extend({"image_id": i, "reason": "duplicate image"} for i in sorted(dropped))
    result.notes["duplicates"] = f"{len(dropped)} dropped using {dup_path}"
    return table[~table["image_name"].str.strip().isin(dropped)]


# --------------------------------------------------------------------------- ISIC Archive (JSON records)


def _archive_records(root: Path) -> list[dict[str, Any]]:
    json_dir = root / "json_meta"
    files = sorted(json_dir.glob("*.json")) if json_dir.is_dir() else sorted(root.glob("*.json"))
    records: list[dict[str, Any]] = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            records.append({"_unreadable": str(path)})
            continue
        # A single record, a list of records, or an API page {"results": [...]}.
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            records.extend(data["results"])
        elif isinstance(data, list):
            records.extend(data)
        else:
            records.append(data)
    return records


def _archive_row(record: dict[str, Any]) -> dict[str, Any]:
    """Both the legacy archive format (name/meta.clinical) and the v2 API (isic_id/metadata.clinical)."""
    meta = record.get("metadata") or record.get("meta") or {}
    clinical = {**(meta.get("clinical") or {}), **(meta.get("patient") or {}), **(meta.get("lesion") or {})}
    diagnosis = _col(clinical, "diagnosis", "diagnosis_3", "diagnosis_2", "diagnosis_1")
    return {
        "image_id": record.get("isic_id") or record.get("name"),
        "patient_id": _col(clinical, "patient_id"),
        "lesion_id": _col(clinical, "lesion_id"),
        "sex": _col(clinical, "sex"),
        "age_approx": _col(clinical, "age_approx"),
        "anatom_site": _col(clinical, "anatom_site_general", "anatom_site_general_challenge"),
        "diagnosis": diagnosis,
        "benign_malignant": _col(clinical, "benign_malignant"),
        "raw_label": clinical.get("benign_malignant"),
        "source": "isic-archive",
    }


@register_reader("isic-archive", licence="ISIC Archive: the licence of each image is in its own record "
                 "(attribution required unless CC0)", help="json_meta/*.json + images/", detect=_archive_layout)
def read_isic_archive(config: PrepareConfig, root: Path | None = None, source: str = "isic-archive") -> ReadResult:
    """ISIC Archive JSON metadata: ``json_meta/*.json`` (one record each) or API pages, images in ``images/``."""
    root = _require_dir(root or config.root, source)
    records = _archive_records(root)
    if not records:
        raise DermsynthError(f"{source}: no JSON metadata found in {root / 'json_meta'} or {root}")
    index = _image_index([root / "images", root])
    result = ReadResult(frame=pd.DataFrame())
    rows = []
    for record in records:
        if "_unreadable" in record:
            result.skipped.append({"image_id": record["_unreadable"], "reason": "unreadable metadata JSON"})
            continue
        row = _archive_row(record)
        if not row["image_id"]:
            result.skipped.append({"image_id": "?", "reason": "metadata record without image id"})
            continue
        path = index.get(row["image_id"])
        if path is None:
            result.skipped.append({"image_id": row["image_id"], "reason": "missing image"})
            continue
        rows.append({**row, "source_path": str(path), "source": source})
    result.frame = _with_raw_label(rows)
    return result


# --------------------------------------------------------------------------- HAM10000


@register_reader("ham10000", licence="HAM10000, CC BY-NC-SA 4.0 (non-commercial use, attribution, share-alike)",
                 help="HAM10000_metadata.csv + images", detect=_file_named("HAM10000_metadata.csv"))
def read_ham10000(config: PrepareConfig) -> ReadResult:
    """HAM10000: ``HAM10000_metadata.csv`` + images (``images/``, the two ``HAM10000_images_part_*`` or root)."""
    root = _require_dir(config.root, "ham10000")
    csv = config.csv or _first_csv([root / "HAM10000_metadata.csv", root / "HAM10000_metadata"], "ham10000")
    table = _read_csv(csv, [["image_id"], ["dx"], ["lesion_id"]], "ham10000")
    index = _image_index([root / "images", root / "HAM10000_images_part_1", root / "HAM10000_images_part_2", root])
    malignant = {code.strip().lower() for code in config.malignant_diagnoses}
    result = ReadResult(frame=pd.DataFrame(), notes={"csv": str(csv), "malignant_diagnoses": sorted(malignant)})
    rows = []
    for record in table.to_dict("records"):
        image_id = record["image_id"].strip()
        path = index.get(image_id)
        if path is None:
            result.skipped.append({"image_id": image_id, "reason": "missing image"})
            continue
        code = (clean_text(record["dx"]) or "")
        rows.append({
            "image_id": image_id,
            "source_path": str(path),
            "patient_id": None,  # HAM10000 has lesion ids only; splits group by lesion.
            "lesion_id": record["lesion_id"],
            "sex": record.get("sex"),
            "age_approx": record.get("age"),
            "anatom_site": record.get("localization"),
            "diagnosis": HAM_DIAGNOSES.get(code, code or None),
            "benign_malignant": ("malignant" if code in malignant else "benign") if code in HAM_DIAGNOSES else None,
            "raw_label": record["dx"],
            "source": "ham10000",
        })
    result.frame = _with_raw_label(rows)
    return result


# --------------------------------------------------------------------------- class-per-folder tree


@register_reader("folder", licence="user-supplied images: the licence is whatever their owner granted",
                 help="root/<class>/*.jpg", detect=_class_folders)
def read_folder(config: PrepareConfig) -> ReadResult:
    """``root/<class>/*.jpg|png``: the folder name is the label; no patient metadata."""
    root = _require_dir(config.root, "folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DermsynthError(f"folder: no class sub-folders in {root} (expected {root}/<class>/<image files>)")
    result = ReadResult(frame=pd.DataFrame(), notes={"empty_classes": []})
    rows = []
    for class_dir in classes:
        images = list_images(class_dir)
        if not images:
            result.notes["empty_classes"].append(class_dir.name)
        rows += [{"image_id": p.stem, "source_path": str(p), "raw_label": class_dir.name, "source": "folder"}
                 for p in images]
    frame = _with_raw_label(rows)
    if frame["image_id"].duplicated().any():  # the same file name in two classes: qualify ids by class
        frame["image_id"] = frame["raw_label"].map(str) + "_" + frame["image_id"]
    repeated = frame["image_id"].duplicated()
    result.skipped += [{"image_id": i, "reason": "duplicate file name"} for i in frame.loc[repeated, "image_id"]]
    result.frame = frame[~repeated].reset_index(drop=True)
    return result


def _with_raw_label(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = finish_reader_frame(rows)
    frame["raw_label"] = [row.get("raw_label") for row in rows] if rows else pd.Series(dtype="object")
    return frame


def read_dataset(config: PrepareConfig) -> ReadResult:
    reader = get_reader(config.dataset)
    result = reader.read(config)
    result.notes.setdefault("licence", reader.licence)  # prepare.json carries it to the report
    return result


__all__ = ["IMAGE_SUFFIXES", "READERS", "ReadResult", "Reader", "get_reader", "infer_reader", "read_dataset",
           "readers_help",
           "register_reader", "sample_root"]
