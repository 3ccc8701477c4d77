"""`dermsynth reader-study build`: a blinded, class-stratified set of real and synthetic images for human readers.

Blinding, so that nothing but the pixels can tell an image's origin:

- every image, real or synthetic, is decoded, centre-cropped and resized to one square size with the same
  filter, and encoded once as baseline JPEG at one quality, with no EXIF, ICC profile or text chunk (a dermsynth
  PNG says ``synthetic=true`` in its text; none of that survives);
- every file is then padded to one common byte length with a JPEG comment segment of zero bytes, so that file
  size, which tracks image detail (smooth synthetic images compress smaller), cannot give an image away;
- file names are random hex; the order is shuffled per reader (in the page, or by the server);
- real images come only from the held-out (val and test) splits, never from what a generator trained on.

The answer key (``key/answer_key.csv``: each file's truth, class and source) is written apart from what readers
get (``reader/``: ``index.html``, one self-contained page, and ``images/``). The study id is a hash of the key, so
answers name the study they belong to and a changed key is caught at scoring; ``key/study.json`` also holds each
image file's sha256, so an image edited after the build is caught too.
"""

from __future__ import annotations

import hashlib
import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import ImageReadError, load_rgb, square_resize
from dermsynth.data.synthetic_folders import comparable_folder, synthetic_frame
from dermsynth.errors import DermsynthError
from dermsynth.progress import track
from dermsynth.utils import ensure_writable_dir, relative_path, write_csv_atomic, write_json_atomic

JPEG_QUALITY = 92
PAD_QUANTUM = 1024       # files are padded up to a multiple of this above the largest encoded image
KEY_FOLDER, READER_FOLDER = "key", "reader"
KEY_FILE, RECORD_FILE = "answer_key.csv", "study.json"
HELD_OUT = ("val", "test")
TELL_NAMES = ("file bytes", "metadata fields", "metadata length", "JPEG quantisation")
BLINDING_LIMIT = 0.6     # a file-only classifier's AUROC above this means the files give the origin away


@dataclass(frozen=True)
class StudySettings:
    n: int = 100                       # scored images, split equally over the classes ...
    per_class: int | None = None       # ... or this many per class
    synthetic_fraction: float = 0.5    # in every class
    seed: int = 0
    size: int | None = None            # default: the smaller of the real and the synthetic images' sides
    practice: int = 4                  # unscored items with feedback, shown first

    def check(self) -> None:
        if self.n < 2 or (self.per_class is not None and self.per_class < 2):
            raise DermsynthError("reader-study: --n and --per-class must be 2 or more")
        if not 0 < self.synthetic_fraction < 1:
            raise DermsynthError("reader-study: --synthetic-fraction must be between 0 and 1 (exclusive), "
                                 f"got {self.synthetic_fraction}")
        if self.size is not None and not 32 <= self.size <= 1024:
            raise DermsynthError(f"reader-study: --size must be 32-1024 px (got {self.size})")
        if not 0 <= self.practice <= 20:
            raise DermsynthError(f"reader-study: --practice must be 0-20 (got {self.practice})")

    def counts(self, classes: int) -> list[tuple[int, int]]:
        """(real, synthetic) images per class: equal class shares (the first classes take the remainder), the
        synthetic fraction rounded half up in each."""
        per = [self.per_class] * classes if self.per_class is not None else \
            [self.n // classes + (c < self.n % classes) for c in range(classes)]
        return [(k - math.floor(k * self.synthetic_fraction + 0.5), math.floor(k * self.synthetic_fraction + 0.5))
                for k in per]


def encode_blinded(image: np.ndarray, size: int) -> bytes:
    """One image as every study image is encoded: square ``size`` px, baseline JPEG, no metadata at all."""
    buffer = io.BytesIO()
    Image.fromarray(square_resize(image, size)).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=2,
                                                     optimize=False, progressive=False)
    return buffer.getvalue()


def pad_jpeg(data: bytes, length: int) -> bytes:
    """``data`` padded to exactly ``length`` bytes with JPEG comment (COM) segments of zero bytes, inserted after
    the start-of-image marker; decoders skip comments, so the pixels are unchanged."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    missing = length - len(data)
    if missing < 0:
        raise ValueError("padding target below the encoded size")
    segments = []
    while missing:
        if missing < 4:  # a segment costs 4 bytes at least: grow the previous one instead
            raise ValueError("padding target is 1-3 bytes above the size; choose a multiple of the quantum")
        body = min(missing - 4, 65533)
        if 0 < missing - 4 - body < 4:  # keep room for the last segment's header
            body -= 4
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + bytes(body))
        missing -= body + 4
    return data[:2] + b"".join(segments) + data[2:]


def _draw(frame: pd.DataFrame, count: int, rng: np.random.Generator, what: str) -> pd.DataFrame:
    if count > len(frame):
        raise DermsynthError(f"reader-study: needs {count} {what}, but there are only {len(frame)}; lower --n or "
                             "--synthetic-fraction")
    return frame.iloc[np.sort(rng.permutation(len(frame))[:count])]


def _readable(frame: pd.DataFrame, count: int, rng: np.random.Generator, what: str,
              taken: set[str]) -> list[tuple[pd.Series, np.ndarray]]:
    """``count`` rows of ``frame`` (seeded order), decoded; unreadable files are passed over, as are ``taken``."""
    picked = []
    for i in rng.permutation(len(frame)):
        if len(picked) == count:
            break
        row = frame.iloc[int(i)]
        if row["path"] in taken:
            continue
        try:
            picked.append((row, load_rgb(row["path"])))
            taken.add(row["path"])
        except ImageReadError:
            continue
    if len(picked) < count:
        raise DermsynthError(f"reader-study: needs {count} {what}, but only {len(picked)} readable ones are left; "
                             "lower --n / --per-class or --practice")
    return picked


def _native_side(frame: pd.DataFrame) -> int | None:
    for path in frame["path"].head(10):
        try:
            return min(load_rgb(path).shape[:2])
        except ImageReadError:
            continue
    return None


def build_study(real: str | Path, synthetic: str | Path, out: str | Path, settings: StudySettings | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Write the study folder ``out`` (``reader/`` for readers, ``key/`` for the organiser); returns study.json."""
    import tempfile

    from dermsynth.reader.page import write_page

    settings = settings or StudySettings()
    settings.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(not p.name.startswith(".") for p in out.iterdir())):
        raise DermsynthError(f"{out}: exists and is not an empty folder; choose a new --out")
    prepared = load_prepared(real)
    classes = prepared.classes
    held_out = pd.concat([prepared.split(s) for s in HELD_OUT], ignore_index=True)
    if held_out.empty:
        raise DermsynthError(f"{real}: no val or test images; the study shows held-out real images only")
    held_out["path"] = [str(p) for p in prepared.paths(held_out)]
    ensure_writable_dir(out.parent)
    work = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dermsynth-reader-") as cache:
        folder, _ = comparable_folder(synthetic, prepared.summary, True, cache, progress)
        syn = synthetic_frame(folder, classes)
        size = settings.size or min(prepared.image_size, _native_side(syn) or prepared.image_size)
        items = _pick(settings, classes, held_out, syn, Path(synthetic), folder)
        record = _write(items, settings, classes, size, work, out, real, synthetic, progress)
    write_page(work, record, items_of(work))
    _install(work, out)
    return record


def _install(work: Path, out: Path) -> None:
    """The finished folder in place: renamed whole, or (into a folder holding only a run's hidden stage markers)
    its two parts moved in, key/ last, so that a study with a key is a complete one."""
    if not out.exists():
        work.rename(out)
        return
    for name in (READER_FOLDER, KEY_FOLDER):
        (work / name).rename(out / name)
    work.rmdir()


def _pick(settings: StudySettings, classes: list[str], held_out: pd.DataFrame, syn: pd.DataFrame, given: Path,
          folder: Path) -> list[dict[str, Any]]:
    """Every item: its decoded image, truth, class, source, and whether it is a practice item."""
    rng = np.random.default_rng(settings.seed)
    taken: set[str] = set()
    items = []
    for c, (n_real, n_syn) in enumerate(settings.counts(len(classes))):
        for truth, frame, count in (("real", held_out, n_real), ("synthetic", syn, n_syn)):
            rows = _readable(frame[frame["target"] == c], count, rng, f"{truth} {classes[c]!r} images", taken)
            items += [{"truth": truth, "class": classes[c], "practice": False, "image": image,
                       "source": _source(row, truth, given, folder)} for row, image in rows]
    for k in range(settings.practice):  # alternate origin and class; never an image of the scored set
        truth, c = ("real", "synthetic")[k % 2], (k // 2) % len(classes)
        frame = held_out if truth == "real" else syn
        rows = _readable(frame[frame["target"] == c], 1, rng, f"practice {truth} {classes[c]!r} images", taken)
        items += [{"truth": truth, "class": classes[c], "practice": True, "image": image,
                   "source": _source(row, truth, given, folder)} for row, image in rows]
    return items


def _source(row: pd.Series, truth: str, given: Path, folder: Path) -> str:
    """Where an item came from, without a machine path: the real image id, or the file within the folder."""
    if truth == "real":
        return str(row["image_id"])
    return Path(row["path"]).relative_to(folder).as_posix() if folder == given else Path(row["path"]).name


def _write(items: list[dict[str, Any]], settings: StudySettings, classes: list[str], size: int, work: Path,
           out: Path, real: str | Path, synthetic: str | Path, progress: bool) -> dict[str, Any]:
    rng = np.random.default_rng([settings.seed, 1])  # names: a stream of their own, apart from the draws
    encoded = [encode_blinded(item["image"], size) for item in track(items, len(items), "encode", progress)]
    length = math.ceil((max(map(len, encoded)) + 4) / PAD_QUANTUM) * PAD_QUANTUM
    names: set[str] = set()
    rows, hashes = [], {}
    images = work / READER_FOLDER / "images"
    images.mkdir(parents=True)
    for item, data in zip(items, encoded, strict=True):
        name = f"{int(rng.integers(0, 2**63)):016x}.jpg"
        while name in names:
            name = f"{int(rng.integers(0, 2**63)):016x}.jpg"
        names.add(name)
        padded = pad_jpeg(data, length)
        (images / name).write_bytes(padded)
        hashes[name] = hashlib.sha256(padded).hexdigest()
        rows.append({"image": name, "truth": item["truth"], "class": item["class"], "practice": item["practice"],
                     "source": item["source"]})
    key = pd.DataFrame(rows).sort_values("image").reset_index(drop=True)
    (work / KEY_FOLDER).mkdir()
    write_csv_atomic(work / KEY_FOLDER / KEY_FILE, key)
    study_id = key_digest(work / KEY_FOLDER / KEY_FILE)
    scored = key[~key["practice"]]
    record = {
        "study_id": study_id, "classes": classes, "image_size": size, "file_bytes": length,
        "encoding": f"baseline JPEG quality {JPEG_QUALITY}, 4:2:0, no metadata, padded with zero-byte comments",
        "settings": {k: v for k, v in vars(settings).items()},
        "counts": {f"{t}:{c}": int(((scored["truth"] == t) & (scored["class"] == c)).sum())
                   for c in classes for t in ("real", "synthetic")},
        "images": len(scored), "practice": int(key["practice"].sum()),
        "real": relative_path(real, out), "synthetic": relative_path(synthetic, out),
        "real_from": "held-out splits only (" + ", ".join(HELD_OUT) + ")",
        "image_sha256": hashes,
        "blinding": blinding_check(images, key),
    }
    write_json_atomic(work / KEY_FOLDER / RECORD_FILE, record)
    return record


def blinding_sentence(check: dict[str, Any]) -> str:
    """The blinding check in one line, for the build's output and the report."""
    if check.get("auroc") is None:
        return "Blinding check: too few images per origin to cross-validate"
    verdict = "blind" if check["auroc"] <= check["limit"] else "NOT BLIND: the files give the origin away"
    return (f"Blinding check: a classifier on {', '.join(check['features'])} alone scores AUROC "
            f"{check['auroc']:.2f} ({check['folds']}-fold; limit {check['limit']}): {verdict}")


def file_tells(path: Path) -> list[float]:
    """What a reader's computer shows of an image file besides its pixels: its byte size, its metadata (every
    field but the zero-byte padding comment, counted and measured) and its JPEG quantisation tables."""
    with Image.open(path) as image:
        info = {k: v for k, v in image.info.items() if k != "comment"}
        tables = getattr(image, "quantization", None) or {}
        return [float(path.stat().st_size), float(len(info)), float(len(repr(sorted(info.items())))),
                float(sum(sum(t) for t in tables.values()))]


def blinding_check(images: Path, key: pd.DataFrame) -> dict[str, Any]:
    """How well a classifier on :func:`file_tells` alone tells synthetic from real files: cross-validated
    AUROC (0.5 = no tell). Above BLINDING_LIMIT the study is not blind and the build says so."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.array([file_tells(images / name) for name in key["image"]])
    labels = (key["truth"] == "synthetic").to_numpy()
    folds = int(min(5, labels.sum(), (~labels).sum()))
    check = {"folds": folds, "features": list(TELL_NAMES), "limit": BLINDING_LIMIT,
             "distinct_file_sizes": len(np.unique(features[:, 0]))}
    if folds < 2:
        return check | {"auroc": None}
    if not np.ptp(features, axis=0).any():  # every file alike in every tell: nothing to learn from
        return check | {"auroc": 0.5}
    model = make_pipeline(StandardScaler(), LogisticRegression())
    scores = cross_val_predict(model, features, labels, method="predict_proba",
                               cv=StratifiedKFold(folds, shuffle=True, random_state=0))[:, 1]
    return check | {"auroc": round(float(roc_auc_score(labels, scores)), 4)}


def key_digest(path: Path) -> str:
    """The study id: the first 16 hex digits of the answer key's sha256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def items_of(study: Path) -> list[dict[str, Any]]:
    """The page's items: every image name, with its truth for practice items only."""
    key = pd.read_csv(study / KEY_FOLDER / KEY_FILE)
    return [{"image": row["image"], "practice": bool(row["practice"]),
             **({"truth": row["truth"], "class": row["class"]} if row["practice"] else {})}
            for _, row in key.iterrows()]
