"""The report: a self-contained HTML page and summary.md from a run folder, with honest "not run" sections."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth.classify.metrics import METRICS
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.stats import RunPredictions, compare, summarize
from dermsynth.report import build_report, verdict
from dermsynth.report.results import headline, paired_differences

from .conftest import lesion_image, one_line_error

CLASSES = ["benign", "malignant"]
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


# --------------------------------------------------------------------------- a small run folder, real schemas


def _png(path: Path, seed: int, size: int = 16, malignant: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lesion_image(seed, (size, size), malignant)).save(path)


def _json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=2))


def _clean(value: object) -> object:
    """As the stages write JSON: NaN -> null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_prepared(run: Path, originals: bool = True) -> pd.DataFrame:
    """prepared/: 24 images (4 per class per split), metadata.csv, preprocess.csv, prepare.json."""
    rows, pre = [], []
    for i in range(24):
        label = CLASSES[i % 2]
        split = ("train", "val", "test")[i // 8]
        image_id = f"ISIC_{5000000 + i}"
        _png(run / "prepared" / "images" / label / f"{image_id}.png", i, malignant=label == "malignant")
        source = run.parent / "originals" / f"{image_id}.jpg"
        if originals:
            source.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lesion_image(i, (48, 36), label == "malignant")).save(source, quality=90)
        rows.append({"image_id": image_id, "path": f"images/{label}/{image_id}.png", "label": label,
                     "target": i % 2, "patient_id": f"IP_{i // 2}", "lesion_id": "", "sex": ["male", "female"][i % 2],
                     "age_approx": 30 + 5 * (i % 9) if i % 5 else "", "anatom_site": ["torso", "head/neck", ""][i % 3],
                     "diagnosis": "melanoma" if label == "malignant" else "nevus", "source": "isic2020",
                     "split": split, "prompt": f"dermoscopy image of a {label} skin lesion"})
        pre.append({"image_id": image_id, "decoded_width": 48, "decoded_height": 36, "box_x0": 8, "box_y0": 2,
                    "box_x1": 40, "box_y1": 34, "lesion_fraction": 0.12 if i % 7 else float("nan"),
                    "centered": bool(i % 7), "source_path": str(source)})
    meta = pd.DataFrame(rows)
    meta.to_csv(run / "prepared" / "metadata.csv", index=False)
    pd.DataFrame(pre).to_csv(run / "prepared" / "preprocess.csv", index=False)
    splits = {s: {"images": 8, "groups": 4, "patients": 4, "labels": {"benign": 4, "malignant": 4}}
              for s in ("train", "val", "test")}
    _json(run / "prepared" / "prepare.json", {
        "dermsynth_version": "0.1.0",
        "settings": {"dataset": "isic2020", "root": "/data/isic2020", "label_scheme": "binary",
                     "split": {"val": 0.15, "test": 0.15, "seed": 0},
                     "preprocess": {"image_size": 16, "hair_removal": True, "vignette": True, "center": True,
                                    "margin": 0.25, "color_constancy": False}},
        "images": 24, "classes": CLASSES, "targets": {"benign": 0, "malignant": 1}, "grouping": "patient",
        "splits": splits,
        "missing_values": {"patient_id": 0, "lesion_id": 24, "sex": 0, "age_approx": 5, "anatom_site": 8,
                           "diagnosis": 0},
        "skipped_count": 3, "skipped_by_reason": {"unreadable image": 2, "no label": 1},
        "skipped": [{"image_id": "ISIC_9", "reason": "no label"}],
        "notes": {"duplicates": "1 dropped using ISIC_2020_Training_Duplicates.csv"},
        "seconds": 1.0,
        "content_duplicates": [{"image_id_1": "ISIC_5000001", "image_id_2": "ISIC_5000003", "similarity": 0.98}],
    })
    return meta


def write_model(run: Path) -> None:
    model = run / "model"
    pd.DataFrame({"step": [25, 50, 75, 100], "loss": [0.9, 0.5, 0.4, 0.35], "lr": [5e-4] * 4,
                  "seconds": [1.0, 2.0, 3.0, 4.0], "threads": [1] * 4}).to_csv(model.mkdir(parents=True) or
                                                                              model / "train_log.csv", index=False)
    for name in ("step-000050.png", "final.png"):
        _png(model / "samples" / name, 7, size=40)
    _json(model / "dermsynth_model.json", {
        "family": "scratch", "classes": CLASSES, "null_class": 2, "image_size": 16, "weights": "ema",
        "weights_sha256": "ab" * 32, "parameters": 12345,
        "data": {"prepared": str(run / "prepared"), "split": "train", "images": 8,
                 "counts": {"benign": 4, "malignant": 4}, "sha256": "0123456789abcdef"},
        "preset": "cpu-fast", "config": {"seed": 0, "max_steps": 100}, "steps": 100, "seconds": 4.2,
        "stopped_by": "max_steps", "final_loss": 0.35,
        "sampling": {"scheduler": "dpm++", "steps": 20, "guidance_scale": 2.0}, "sample_grid": "samples/final.png",
        "device": "cpu", "precision": "no", "created_utc": "2026-01-01T00:00:00+00:00", "versions": {}})


def write_synthetic(run: Path) -> None:
    syn = run / "synthetic"
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(8):
            image_id = f"syn-{label}-s0-{i:05d}"
            _png(syn / "images" / label / f"{image_id}.png", 100 + 10 * c + i, malignant=label == "malignant")
            rows.append({"image_id": image_id, "path": f"images/{label}/{image_id}.png", "label": label,
                         "prompt": f"class:{label}", "negative_prompt": "", "seed": 1_000_000 * c + i,
                         "scheduler": "dpm++", "steps": 10, "guidance_scale": 2.0, "model": str(run / "model"),
                         "model_sha256": "ab" * 32, "created_utc": "2026-01-01T00:00:00+00:00", "qc": "pass",
                         "synthetic": True})
    pd.DataFrame(rows).to_csv(syn / "manifest.csv", index=False)
    _json(syn / "generate.json", {
        "status": "complete", "plan": {"benign": 8, "malignant": 8},
        "settings": {"scheduler": "dpm++", "steps": 10, "guidance_scale": 2.0, "seed": 0, "model": str(run / "model"),
                     "model_sha256": "ab" * 32, "family": "scratch"},
        "seed_rule": "seed + 1000000 * class_index + i", "batch_size": 32, "counts": {"benign": 8, "malignant": 8},
        "rejected": {"benign": 1, "malignant": 0}, "rejected_by_reason": {"blank": 1}, "seconds_this_run": 1.0,
        "updated_utc": "2026-01-01T00:00:00+00:00"})


def _fidelity(fid: float) -> dict[str, float]:
    return {"n_real": 8, "n_fake": 8, "fid": fid, "kid_mean": 0.01, "kid_sd": 0.002, "precision": 0.7,
            "recall": 0.5, "density": 0.9, "coverage": 0.6}


def write_audit(run: Path) -> None:
    audit = run / "audit"
    nearest = pd.DataFrame({
        "image_id": ["syn-benign-s0-00000", "syn-malignant-s0-00001"], "path": ["a.png", "b.png"],
        "label": CLASSES, "nearest_pixel_train_id": ["ISIC_5000000", "ISIC_5000001"],
        "nearest_pixel_train_path": ["x.png", "y.png"], "pixel_similarity": [0.97, 0.41],
        "nearest_feature_train_id": ["ISIC_5000000", "ISIC_5000001"], "feature_similarity": [0.99, 0.7],
        "flagged": [True, False], "feature_above_threshold": [True, False]})
    audit.mkdir(parents=True)
    nearest.to_csv(audit / "nearest.csv", index=False)
    nearest[nearest["flagged"]].to_csv(audit / "flagged.csv", index=False)
    _png(audit / "top_pairs.png", 3, size=48)
    _png(audit / "similarity.png", 4, size=48)
    _json(audit / "audit.json", {
        "feature_space": {"name": "classifier-cnn", "description": "penultimate features", "dimensions": 64},
        "image_size": 64, "counts": {"synthetic": 16, "real_train": 8, "real_val": 8, "real_test": 8,
                                     "synthetic_per_class": {"benign": 8, "malignant": 8}},
        "fidelity": {"overall": {"synthetic_vs_train": _fidelity(80.0), "real_test_vs_train": _fidelity(20.0),
                                 "fid_ratio": 4.0},
                     "per_class": {"benign": {"synthetic_vs_train": _fidelity(90.0),
                                              "real_test_vs_train": _fidelity(25.0)}, "malignant": None}},
        "memorization": {"method": "pixel similarity above a calibrated threshold",
                         "thresholds": {"pixel": 0.9, "feature": 0.95, "quantile": 0.995,
                                        "calibrated_on": "real val (8 images)"},
                         "synthetic_flagged": 1, "synthetic_flagged_rate": 1 / 16,
                         "synthetic_feature_above_threshold": 1, "held_out_real_flagged_rate": 0.0,
                         "positive_controls": {"images": 8, "flagged_rate": {"jpeg": 1.0, "flip": 1.0, "crop": 0.75},
                                               "overall": 0.9166},
                         "nearest_similarity_median": {"synthetic_pixel": 0.5, "held_out_real_pixel": 0.45}},
        "diversity": {label: {"synthetic_mean_pairwise_cosine": 0.8, "real_train_mean_pairwise_cosine": 0.6}
                      for label in CLASSES},
        "c2st": {"method": "small CNN, 5-fold", "image_size": 32, "per_class": {
            "benign": {"synthetic_vs_real": {"auroc": 0.912, "ci_low": 0.88, "ci_high": 0.94, "n_per_set": 8},
                       "real_held_out_vs_real": {"auroc": 0.517, "ci_low": 0.41, "ci_high": 0.62, "n_per_set": 8}},
            "malignant": {"synthetic_vs_real": {"auroc": float("nan"), "ci_low": float("nan"),
                                                "ci_high": float("nan"), "n_per_set": 1},
                          "real_held_out_vs_real": {"auroc": float("nan"), "n_per_set": 1}}}},
        "domain_gap": {"method": "Cohen's d and KS", "image_size": 32, "per_class": {
            "benign": {"summary": "synthetic benign: sharpness 0.40× real", "material": ["sharpness"],
                       "rows": [{"statistic": "sharpness", "real_mean": 0.5, "synthetic_mean": 0.2,
                                 "std_diff": -1.9, "ks": 0.7}]}}},
        "partial": True, "notes": ["class 'malignant' has no images in the real train set"],
        "settings": {"seed": 0}, "real": "prepared", "synthetic": "synthetic", "seconds": 1.0})


def _runs(targets: np.ndarray, inverted: bool = False, seeds: int = 2) -> list[RunPredictions]:
    """Test predictions of a few seeds: informative, or (``inverted``) pointing the wrong way."""
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        signal = 1 - targets if inverted else targets
        p = np.clip(0.3 + 0.4 * signal + rng.normal(0, 0.25, targets.size), 0.01, 0.99)
        runs.append(RunPredictions(seed, targets, np.stack([1 - p, p], axis=1), 0.5))
    return runs


def write_validation(run: Path) -> None:
    """validation/: runs per regime and seed, and summary.json made by the stage's own statistics code."""
    root = run / "validation"
    targets = np.array([0, 1] * 20)
    regimes = {"real": _runs(targets), "hybrid:0.5": _runs(targets),  # the same predictions: difference 0
               "synthetic": _runs(targets, inverted=True)}  # clearly worse
    rows, comparisons = [], []
    for regime, runs in regimes.items():
        source = "" if regime == "real" else "synthetic"
        rows.append({"regime": regime, "source": source, "seeds": len(runs), "train_images": 8,
                     "train_synthetic": {"real": 0, "hybrid:0.5": 4, "synthetic": 8}[regime],
                     **summarize(runs, 100, 0.95)})
        if regime != "real":
            comparisons += [{"regime": regime, "source": source, "baseline": "real", **row}
                            for row in compare(runs, regimes["real"], 100, 0.95)]
        for item in runs:
            folder = root / regime.replace(":", "-") / str(item.seed)
            folder.mkdir(parents=True)
            history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.6, 0.5], "lr": [1e-3, 5e-4, 0.0],
                                    "val_loss": [0.7, 0.6, 0.6], "val_accuracy": [0.5, 0.6, 0.65],
                                    "val_balanced_accuracy": [0.5, 0.6, 0.65], "val_auroc": [0.5, 0.7, 0.72],
                                    "selected_so_far": [True, True, True],
                                    "test_accuracy": [0.5, 0.6 + 0.01 * item.seed, 0.62],
                                    "test_auroc": [0.55, 0.66, 0.7]})
            history.to_csv(folder / "history.csv", index=False)
            pd.DataFrame({"image": [f"t{i}" for i in range(len(targets))], **{c: 0.5 for c in CLASSES}}).to_csv(
                folder / "predictions.csv", index=False)
            _json(folder / "metrics.json", {
                "regime": regime, "source": source or None, "seed": item.seed, "settings_hash": "0" * 16,
                "test": {m: 0.6 for m in METRICS}, "test_image_ci": {m: [0.5, 0.7] for m in METRICS},
                "undefined": [], "threshold": 0.5, "threshold_rule": "Youden J on the validation split",
                "best_epoch": 3, "epochs_run": 3, "train_images": 8, "train_synthetic": 0,
                "train_by_class": {"benign": 4, "malignant": 4}, "seconds": 1.0, "train_images_per_second": 8.0,
                "settings": {"epochs": 3, "batch_size": 4, "lr": 1e-3}})
    _json(root / "summary.json", {"regimes": rows, "comparisons": comparisons, "confidence": 0.95,
                                  "bootstrap": 100})
    _json(root / "validate.json", {
        "config": {"model": "cnn", "seeds": 2, "first_seed": 0, "regimes": list(regimes)}, "device": "cpu",
        "image_size": 16, "classes": CLASSES,
        "counts": {"train": {"benign": 4, "malignant": 4}, "val": {"benign": 4, "malignant": 4},
                   "test": {"benign": 20, "malignant": 20}}})


def write_provenance(run: Path) -> None:
    (run / "config.resolved.yaml").write_text("name: tiny study\nprepare:\n  dataset: isic2020\nfinetune: null\n")
    _json(run / "versions.json", {"python": "3.11", "dermsynth": "0.1.0", "torch": "2.13.0", "peft": None})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    write_prepared(run)
    write_model(run)
    write_synthetic(run)
    write_audit(run)
    write_validation(run)
    write_provenance(run)
    build_report(run)
    return run


# --------------------------------------------------------------------------- the page


def _img_sources(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)


def _is_png_data_uri(src: str) -> bool:
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return False
    data = base64.b64decode(src[len(prefix):], validate=True)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
        return image.format == "PNG"


def test_full_report_is_self_contained(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    sources = _img_sources(html)
    # metadata, preprocessing, loss curve, 2 training sample grids, generated grid, real vs synthetic,
    # accuracy curves, closest pairs, similarity histogram
    assert len(sources) == 10
    assert all(_is_png_data_uri(src) for src in sources)
    assert html.count("<img") == len(sources)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<link" not in html and "<script" not in html
    assert "Not run" not in html


def test_full_report_has_results_and_an_honest_verdict(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    assert "Table 1 (extended)" in html
    for regime in ("real", "hybrid:0.5", "synthetic"):
        assert f"<td>{regime}</td>" in html
    # hybrid made the same predictions as real: the CI of the difference is [0, 0] and includes 0
    assert "hybrid:0.5 − real, accuracy: +0.0 points" in html
    assert "includes 0: no evidence that the synthetic images help at this scale" in html
    assert 'class="verdict lower"' in html  # the anti-correlated synthetic-only regime
    assert "81.73" in html  # the reference study's numbers, for context
    assert "50.0 % (benign)" in html  # accuracy of a majority-class predictor


def test_full_report_sections(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    assert "No patient has images in two splits" in html
    assert "unreadable image" in html and "ISIC_5000003" in html  # skipped reasons, content duplicates
    assert "hair removed" in html or "processed" in html
    assert "FID ↓" in html and "real test vs real train (reference)" in html and "8 vs 8" in html
    assert "<strong>1 of 16</strong>" in html and "92 %" in html  # flagged, positive-control detection
    assert "0.912 [0.880, 0.940] (n = 8 per set)" in html and "0.517" in html  # C2ST beside its real reference
    assert "n/a (too few images)" in html
    assert "synthetic benign: sharpness 0.40× real" in html and "-1.90" in html  # domain gap, in words
    assert "CC BY-NC 4.0" in html and "isic2020" in html
    assert "ab" * 32 in html and "synthetic images made by this run&#39;s model" in html
    assert "tiny study" in html
    assert "train: done" in html and "finetune: done" not in html  # trained from scratch (config has finetune: null)
    assert "Diffusion model trained from scratch" in html


def test_summary_markdown_has_the_table_and_verdict(full_run):
    text = (full_run / "summary.md").read_text(encoding="utf-8")
    assert "| regime | seeds | train images (synthetic) | accuracy |" in text
    assert re.search(r"^\| hybrid:0\.5 \| 2 \| 8 \(4\) \| \d", text, re.M)
    assert "**Verdict.** hybrid:0.5 − real, accuracy" in text and "**Verdict.** hybrid:0.5 − real, AUROC" in text
    assert "| hybrid:0.5 − real | accuracy |" in text
    assert "CC BY-NC 4.0" in text
    assert "C2ST AUROC" in text and "| benign | 0.912 [0.880, 0.940]" in text
    assert "- synthetic benign: sharpness 0.40× real" in text


def test_prepared_only_says_what_was_not_run(tmp_path, cli):
    run = tmp_path / "run"
    write_prepared(run, originals=False)
    umask = os.umask(0o022)
    try:
        code, out, err = cli("report", run)
    finally:
        os.umask(umask)
    assert code == 0, err
    assert str(run / "report.html") in out
    assert (run / "report.html").stat().st_mode & 0o777 == 0o644  # shareable, not the temporary file's 0600
    html = (run / "report.html").read_text(encoding="utf-8")
    for stage in ("train", "generate", "audit", "validate"):
        assert f"Not run: the <code>{stage}</code> stage" in html
    assert "not on this machine" in html  # originals missing: no before/after figure
    assert all(_is_png_data_uri(src) for src in _img_sources(html))
    text = (run / "summary.md").read_text(encoding="utf-8")
    assert "- validate: not run" in text and "| train | 4 | 4 | 4 | 8 |" in text


def test_unfinished_validation_shows_curves_without_a_verdict(tmp_path):
    run = tmp_path / "run"
    write_prepared(run, originals=False)
    write_validation(run)
    (run / "validation" / "summary.json").unlink()
    html_path, md_path = build_report(run)
    html = html_path.read_text(encoding="utf-8")
    assert "has not finished" in html and "test accuracy per epoch" in html
    assert "Verdict." not in html and "Table 1 (extended)" not in html
    assert "has not finished" in md_path.read_text(encoding="utf-8")



def test_cli_missing_run_folder(cli, tmp_path):
    assert "run folder not found" in one_line_error(cli, "report", tmp_path / "nope")


def test_cli_run_folder_is_a_file(cli, tmp_path):
    (tmp_path / "report.html").write_text("x")
    assert "not a folder" in one_line_error(cli, "report", tmp_path / "report.html")


def test_cli_run_folder_without_stage_output(cli, tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    assert "no stage output found" in one_line_error(cli, "report", tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()


def test_cli_corrupt_stage_file(cli, tmp_path):
    run = tmp_path / "run"
    write_prepared(run, originals=False)
    (run / "audit").mkdir()
    (run / "audit" / "audit.json").write_text("{not json")
    assert "audit.json: not valid JSON" in one_line_error(cli, "report", run)


def test_build_report_raises_user_error(tmp_path):
    with pytest.raises(DermsynthError):
        build_report(tmp_path / "missing")


# --------------------------------------------------------------------------- verdict


def test_verdict_ci_above_zero():
    v = verdict("hybrid:0.5", "accuracy", 0.03, 0.01, 0.05)
    assert v.kind == "higher"
    assert "+3.0 points" in v.text and "lies above 0" in v.text


def test_verdict_ci_includes_zero_never_claims_improvement():
    v = verdict("hybrid:0.5", "accuracy", 0.023, -0.004, 0.05, seeds=5)
    assert v.kind == "inconclusive"
    assert "includes 0: no evidence that the synthetic images help at this scale" in v.text
    assert "higher" not in v.text and "improve" not in v.text
    assert verdict("hybrid:0.5", "auroc", 0.0, 0.0, 0.0).kind == "inconclusive"  # a bound at 0 is not above 0


def test_verdict_ci_below_zero():
    v = verdict("synthetic", "auroc", -0.1, -0.15, -0.05, confidence=0.9)
    assert v.kind == "lower"
    assert "90 % CI" in v.text and "lies below 0" in v.text and "lower AUROC" in v.text


def test_verdict_against_a_control_names_what_the_control_holds_fixed():
    v = verdict("hybrid:0.5", "auroc", 0.01, -0.02, 0.04, baseline="lowpass:0.5")
    assert "the synthetic images beat real images given the synthetic set's sharpness and colour" in v.text
    higher = verdict("add:200", "auroc", 0.05, 0.02, 0.08, baseline="reconstruct-add:200")
    assert "than the reconstruction control reconstruct-add:200" in higher.text
    assert "cheap augmentation" in verdict("hybrid:0.5", "auroc", 0.0, -0.1, 0.1, baseline="augment:0.5").text
    assert "the mixup copies help" in verdict("mixup:0.5", "auroc", 0.0, -0.1, 0.1).text


def test_verdict_without_interval_and_few_seeds():
    assert verdict("hybrid:0.5", "auroc", 0.01, None, None).kind == "undefined"
    assert verdict("hybrid:0.5", "auroc", float("nan"), 0.0, 0.1).kind == "undefined"
    assert "Only 1 seed" in verdict("hybrid:0.5", "accuracy", 0.03, 0.01, 0.05, seeds=1).text


def test_headline_answers_the_fifty_fifty_hybrid_first():
    verdicts = [{"regime": "synthetic", "metric": "accuracy", "kind": "lower", "text": "s"},
                {"regime": "hybrid:0.25", "metric": "accuracy", "kind": "inconclusive", "text": "q"},
                {"regime": "hybrid:0.5", "metric": "auroc", "kind": "higher", "text": "a"},
                {"regime": "hybrid:0.5", "metric": "accuracy", "kind": "inconclusive", "text": "h"}]
    assert [v["text"] for v in headline(verdicts)] == ["h", "a"]
    assert [v["text"] for v in headline(verdicts[:2])] == ["q"]
    assert [v["text"] for v in headline(verdicts[:1])] == ["s"]
    assert headline([]) == []


def test_verdicts_warn_when_a_classifier_is_at_chance():
    """A regime that predicts the majority class gains accuracy on an imbalanced test set; the page must say so."""
    def regime(name: str, balanced: tuple[float, float], auroc: tuple[float, float] = (0.7, 0.9)) -> dict:
        return {"regime": name, "source": "" if name == "real" else "syn", "balanced_accuracy_ci_lo": balanced[0],
                "balanced_accuracy_ci_hi": balanced[1], "auroc_ci_lo": auroc[0], "auroc_ci_hi": auroc[1]}

    comparisons = [{"regime": "hybrid:0.5", "source": "syn", "baseline": "real", "metric": metric, "seeds": 3,
                    "diff": 0.2, "ci_lo": 0.05, "ci_hi": 0.3, "p_boot": 0.01, "seeds_better": 3}
                   for metric in ("accuracy", "auroc")]
    summary = {"regimes": [regime("real", (0.6, 0.8)), regime("hybrid:0.5", (0.5, 0.5))],
               "comparisons": comparisons, "confidence": 0.95}
    accuracy, auroc = paired_differences(summary)[1]
    assert accuracy["kind"] == "higher"
    assert "balanced accuracy of hybrid:0.5 does not differ from chance (50 %)" in accuracy["text"]
    assert "Caution" not in auroc["text"]
    summary["regimes"] = [regime("real", (0.6, 0.8), auroc=(0.3, 0.55)), regime("hybrid:0.5", (0.6, 0.7))]
    accuracy, auroc = paired_differences(summary)[1]
    assert "Caution" not in accuracy["text"]
    assert "AUROC of real does not differ from chance (50 %)" in auroc["text"]


# --------------------------------------------------------------------------- in a real browser


# CI installs Chromium and sets DERMSYNTH_REQUIRE_BROWSER, so that there the test can fail but never skip.
@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("DERMSYNTH_REQUIRE_BROWSER"),
                    reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "check_report_render.py"),
                             str(full_run / "report.html"), "--require-results", "--window-size", "1280,3000"],
                            capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert found["images"] == 10 and found["images_not_png_data_uri"] == 0
    assert found["results_table"] and found["verdict"]


def test_model_record_is_typed_and_a_wrong_field_is_one_line(tmp_path):
    from dermsynth.errors import DermsynthError
    from dermsynth.report.records import ModelRecord

    record = ModelRecord.read({"family": "scratch", "steps": 40, "future_key": 1}, tmp_path / "m.json")
    assert record.steps == 40 and record.preset is None and not record.is_finetune
    with pytest.raises(DermsynthError, match=r"m\.json: steps: .*train the model again"):
        ModelRecord.read({"family": "scratch", "steps": "many"}, tmp_path / "m.json")
