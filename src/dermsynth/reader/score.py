"""`dermsynth reader-study score`: how well did the readers tell synthetic images from real ones?

Per reader and pooled: accuracy with its exact (Clopper-Pearson) binomial interval and the two-sided exact test
against 50 % (chance); sensitivity and specificity for "synthetic"; AUROC from the calls and confidences (a call
of synthetic with confidence c scores +c, real scores -c). Agreement between readers on the images all of them
answered: Cohen's kappa for two readers, Fleiss' kappa for more. All of it per class as well. Then the synthetic
images most often called real, each with the audit's similarity of its nearest real training image beside it
(``--audit``): a convincing image that is a near-copy of a training image is a memorization finding, not a
success.

Pooled accuracy counts every answer of every reader; answers to the same image by different readers are not
independent, so its interval is narrower than the truth when readers agree. Read the per-reader rows first.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from dermsynth.errors import DermsynthError
from dermsynth.reader.build import KEY_FILE, KEY_FOLDER, READER_FOLDER, RECORD_FILE, key_digest
from dermsynth.utils import json_safe, read_csv, read_json, write_json_atomic, write_text_atomic

CALLS = ("real", "synthetic")
SCORE_FOLDER = "score"


def load_key(study: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The study record and its answer key, checked: the key's hash is the study id, the images are as built."""
    study = Path(study)
    remedy = "rebuild the study (dermsynth reader-study build) or restore its key/ folder"
    record = read_json(study / KEY_FOLDER / RECORD_FILE, remedy)
    key = read_csv(study / KEY_FOLDER / KEY_FILE, remedy, ("image", "truth", "class", "practice"))
    if key_digest(study / KEY_FOLDER / KEY_FILE) != record.get("study_id"):
        raise DermsynthError(f"{study}: the answer key was changed after the build (its hash no longer matches study "
                             f"{record.get('study_id')}); {remedy}")
    images = study / READER_FOLDER / "images"
    for name, digest in record.get("image_sha256", {}).items():
        path = images / name
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DermsynthError(f"{path}: edited after the build (its sha256 differs from the study record); the "
                                 "answers to it cannot be trusted: rebuild the study")
    return record, key


def read_answers(path: Path, study_id: str) -> tuple[str, pd.DataFrame]:
    """One answers file (the page's JSON export, or a CSV with study_id, reader, image, call, confidence):
    the reader and one row per answered image (the last answer wins)."""
    path = Path(path)
    remedy = "export the answers again from the reader page"
    if not path.is_file():
        raise DermsynthError(f"{path}: answers file not found")
    if path.suffix.lower() == ".csv":
        frame = read_csv(path, remedy, ("study_id", "reader", "image", "call", "confidence"))
        ids, readers = set(frame["study_id"].astype(str)), set(frame["reader"].astype(str))
        study, reader = (ids.pop() if len(ids) == 1 else None), (readers.pop() if len(readers) == 1 else None)
        if len(ids) > 1 or len(readers) > 1:
            raise DermsynthError(f"{path}: holds answers of several studies or readers; give one file per reader")
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.stat().st_size else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise DermsynthError(f"{path}: not an answers file ({type(exc).__name__}); {remedy}") from None
        if not isinstance(data, dict):
            raise DermsynthError(f"{path}: not an answers file (a JSON {type(data).__name__}); {remedy}")
        study, reader = data.get("study_id"), data.get("reader")
        frame = pd.DataFrame(data.get("answers") or [])
    if frame.empty:
        raise DermsynthError(f"{path}: holds no answers")
    if str(study) != study_id:
        raise DermsynthError(f"{path}: answers for study {study}, not for this study ({study_id})")
    if not reader or not str(reader).strip():
        raise DermsynthError(f"{path}: names no reader")
    missing = [c for c in ("image", "call", "confidence") if c not in frame.columns]
    if missing:
        raise DermsynthError(f"{path}: answers lack {', '.join(missing)}; {remedy}")
    bad = frame[~frame["call"].isin(CALLS) | ~pd.to_numeric(frame["confidence"], errors="coerce").between(1, 5)]
    if len(bad):
        raise DermsynthError(f"{path}: {len(bad)} answer(s) with a call other than real/synthetic or a confidence "
                             f"outside 1-5 (e.g. image {bad['image'].iloc[0]})")
    frame = frame.assign(confidence=frame["confidence"].astype(int)).drop_duplicates("image", keep="last")
    return str(reader).strip(), frame.reset_index(drop=True)


def fleiss_kappa(calls: np.ndarray) -> float:
    """Fleiss' kappa of an images x readers array of 0/1 calls (every reader rated every image)."""
    n_items, n_raters = calls.shape
    if n_items < 2 or n_raters < 2:
        return math.nan
    counts = np.stack([(calls == 0).sum(1), (calls == 1).sum(1)], axis=1).astype(float)
    p_item = ((counts * (counts - 1)).sum(1)) / (n_raters * (n_raters - 1))
    p_class = counts.sum(0) / (n_items * n_raters)
    expected = float((p_class**2).sum())
    if expected >= 1:
        return math.nan
    return (float(p_item.mean()) - expected) / (1 - expected)


def _binary_scores(frame: pd.DataFrame, confidence: float) -> dict[str, Any]:
    """Accuracy (exact CI, test vs 50 %), sensitivity/specificity for synthetic, AUROC from the confidences."""
    from sklearn.metrics import roc_auc_score

    n, correct = len(frame), int((frame["call"] == frame["truth"]).sum())
    if n == 0:
        return {"answers": 0}
    test = stats.binomtest(correct, n, 0.5)
    interval = test.proportion_ci(confidence_level=confidence, method="exact")
    synthetic, real = frame["truth"] == "synthetic", frame["truth"] == "real"
    score = np.where(frame["call"] == "synthetic", 1, -1) * frame["confidence"].to_numpy()
    both = synthetic.any() and real.any()
    return {"answers": n, "correct": correct, "accuracy": correct / n, "ci_lo": float(interval.low),
            "ci_hi": float(interval.high), "p_vs_chance": float(test.pvalue),
            "sensitivity": float((frame.loc[synthetic, "call"] == "synthetic").mean()) if synthetic.any() else None,
            "specificity": float((frame.loc[real, "call"] == "real").mean()) if real.any() else None,
            "auroc": float(roc_auc_score(synthetic, score)) if both else None}


def _agreement(answers: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Kappa on the images every reader answered (Cohen's for two readers, Fleiss' for more)."""
    if len(answers) < 2:
        return {"readers": len(answers), "kappa": None, "method": "needs two readers or more"}
    from sklearn.metrics import cohen_kappa_score

    common = sorted(set.intersection(*(set(f["image"]) for f in answers.values())))
    calls = np.array([[int(f.set_index("image").loc[i, "call"] == "synthetic") for f in answers.values()]
                      for i in common])
    if len(common) < 2:
        return {"readers": len(answers), "images": len(common), "kappa": None, "method": "too few common images"}
    if len(answers) == 2:
        kappa, method = float(cohen_kappa_score(calls[:, 0], calls[:, 1])), "Cohen's kappa"
    else:
        kappa, method = fleiss_kappa(calls), "Fleiss' kappa"
    return {"readers": len(answers), "images": len(common), "kappa": None if math.isnan(kappa) else kappa,
            "method": method}


def _nearest_similarity(audit: Path | None) -> dict[str, dict[str, Any]]:
    """The audit's nearest-real similarity of each synthetic image, by its last two path parts (class/file)."""
    if audit is None:
        return {}
    nearest = read_csv(Path(audit) / "nearest.csv", "rerun dermsynth audit", ("path", "pixel_similarity", "flagged"))
    return {"/".join(Path(p).parts[-2:]): {"pixel_similarity": float(s), "flagged": bool(f)}
            for p, s, f in zip(nearest["path"], nearest["pixel_similarity"], nearest["flagged"], strict=True)}


def score_study(study: str | Path, answers: list[str | Path], audit: str | Path | None = None,
                confidence: float = 0.95, top: int = 10) -> dict[str, Any]:
    """Score every answers file against the study's key; writes ``STUDY/score/score.json|md``; returns the JSON."""
    study = Path(study)
    if not answers:
        raise DermsynthError("reader-study score: give at least one answers file")
    record, key = load_key(study)
    scored = key[~key["practice"].astype(bool)]
    known = set(scored["image"])
    by_reader: dict[str, pd.DataFrame] = {}
    files: dict[str, str] = {}
    for path in answers:
        reader, frame = read_answers(Path(path), record["study_id"])
        if reader in by_reader:
            raise DermsynthError(f"{path}: reader {reader!r} appears twice (also in {files[reader]}); give each "
                                 "reader's answers once")
        strangers = sorted(set(frame["image"]) - set(key["image"]))
        if strangers:
            raise DermsynthError(f"{path}: answers to {len(strangers)} image(s) not in this study (e.g. "
                                 f"{strangers[0]})")
        frame = frame[frame["image"].isin(known)].merge(scored[["image", "truth", "class", "source"]], on="image")
        if frame.empty:
            raise DermsynthError(f"{path}: holds no answers to scored images (practice answers only)")
        by_reader[reader], files[reader] = frame, str(path)
    pooled = pd.concat(by_reader.values(), ignore_index=True)
    classes = record["classes"]
    result = {
        "study_id": record["study_id"], "images": len(scored), "readers": list(by_reader), "confidence": confidence,
        "per_reader": {r: _binary_scores(f, confidence) | {"answered": len(f)} for r, f in by_reader.items()},
        "pooled": _binary_scores(pooled, confidence),
        "agreement": _agreement(by_reader),
        "per_class": {c: {"pooled": _binary_scores(pooled[pooled["class"] == c], confidence),
                          "per_reader": {r: _binary_scores(f[f["class"] == c], confidence)
                                         for r, f in by_reader.items()},
                          "agreement": _agreement({r: f[f["class"] == c] for r, f in by_reader.items()})}
                      for c in classes},
        "convincing": _convincing(pooled, _nearest_similarity(Path(audit) if audit else None), top),
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
    }
    out = study / SCORE_FOLDER
    write_json_atomic(out / "score.json", json_safe(result))
    write_text_atomic(out / "score.md", score_markdown(result))
    return result


def _convincing(pooled: pd.DataFrame, nearest: dict[str, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    synthetic = pooled[pooled["truth"] == "synthetic"]
    if synthetic.empty:
        return []
    rows = synthetic.groupby("image").agg(called_real=("call", lambda c: float((c == "real").mean())),
                                          readers=("call", "size"), source=("source", "first"),
                                          class_name=("class", "first")).reset_index()
    rows = rows.sort_values(["called_real", "image"], ascending=[False, True]).head(top)
    out = []
    for row in rows.itertuples():
        found = nearest.get("/".join(Path(row.source).parts[-2:]), {})
        out.append({"image": row.image, "source": row.source, "class": row.class_name,
                    "called_real": row.called_real, "readers": int(row.readers),
                    "nearest_pixel_similarity": found.get("pixel_similarity"),
                    "flagged_as_near_copy": found.get("flagged"),
                    "reading": "near-copy of a training image: a memorization finding, not realism"
                    if found.get("flagged") else ""})
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def score_markdown(result: dict[str, Any]) -> str:
    level = f"{result['confidence']:.0%}"
    lines = [f"# Reader study {result['study_id']}", "",
             f"{len(result['readers'])} reader(s), {result['images']} scored images. Accuracy of telling synthetic "
             f"from real (50 % = chance), exact {level} interval, exact binomial test against 50 %.", "",
             "| reader | answers | accuracy [CI] | p vs chance | sensitivity (synthetic) | specificity | AUROC |",
             "|---|---|---|---|---|---|---|"]
    for name, s in [*result["per_reader"].items(), ("pooled", result["pooled"])]:
        if not s.get("answers"):
            continue
        auroc = "n/a" if s["auroc"] is None else f"{s['auroc']:.3f}"
        lines.append(f"| {name} | {s['answers']} | {_pct(s['accuracy'])} [{_pct(s['ci_lo'])}, {_pct(s['ci_hi'])}] | "
                     f"{s['p_vs_chance']:.3g} | {_pct(s['sensitivity'])} | {_pct(s['specificity'])} | {auroc} |")
    agreement = result["agreement"]
    kappa = "n/a" if agreement.get("kappa") is None else f"{agreement['kappa']:.3f}"
    lines += ["", f"Agreement: {agreement['method']} {kappa}.", "", "Per class (pooled):", "",
              "| class | answers | accuracy [CI] | sensitivity | specificity | AUROC | kappa |",
              "|---|---|---|---|---|---|---|"]
    for name, c in result["per_class"].items():
        s = c["pooled"]
        if not s.get("answers"):
            continue
        auroc = "n/a" if s["auroc"] is None else f"{s['auroc']:.3f}"
        k = c["agreement"].get("kappa")
        lines.append(f"| {name} | {s['answers']} | {_pct(s['accuracy'])} [{_pct(s['ci_lo'])}, {_pct(s['ci_hi'])}] "
                     f"| {_pct(s['sensitivity'])} | {_pct(s['specificity'])} | {auroc} | "
                     f"{'n/a' if k is None else f'{k:.3f}'} |")
    if result["convincing"]:
        lines += ["", "Synthetic images most often called real (with the audit's nearest-real pixel similarity):", "",
                  "| image | class | called real | nearest real similarity | |", "|---|---|---|---|---|"]
        for c in result["convincing"]:
            sim = "n/a" if c["nearest_pixel_similarity"] is None else f"{c['nearest_pixel_similarity']:.3f}"
            lines.append(f"| {c['source']} | {c['class']} | {_pct(c['called_real'])} of {c['readers']} | {sim} | "
                         f"{c['reading']} |")
    lines += ["", "Pooled figures count every answer of every reader; answers to one image are not independent, so "
              "the pooled interval is too narrow when readers agree."]
    return "\n".join(lines) + "\n"
