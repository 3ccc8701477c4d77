"""`dermsynth audit`: fidelity and memorization of a synthetic folder against a prepared real dataset.

Outputs in ``out``: ``audit.json`` (every number, the feature space, thresholds, notes on anything partial),
``flagged.csv`` (synthetic images judged near-copies of a training image), ``nearest.csv`` (every synthetic
image's nearest training image), figures (``top_pairs.png``, ``similarity.png``) and a feature cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.audit.config import FEATURE_SPACES, AuditConfig
from dermsynth.audit.features import FeatureSpace, named_space, trained_classifier_space
from dermsynth.audit.fidelity import compare
from dermsynth.audit.memorization import (
    MemorizationConfig,
    TrainingIndex,
    light_copies,
    threshold,
    within_set_similarity,
)
from dermsynth.data.dataset import PreparedDataset, load_prepared
from dermsynth.data.images import ImageReadError
from dermsynth.errors import DermsynthError
from dermsynth.progress import console, track
from dermsynth.utils import atomic_path, ensure_writable_dir, pick_device, write_csv_atomic, write_json_atomic


@dataclass
class LoadedSet:
    name: str
    frame: pd.DataFrame     # image_id, path, target (+ real metadata)
    images: np.ndarray      # uint8 NHWC at the audit size
    features: np.ndarray | None = None


def _sample(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    if cap is None or len(frame) <= cap:
        return frame.reset_index(drop=True)
    return frame.sample(n=cap, random_state=seed).sort_values("image_id").reset_index(drop=True)


def _load(name: str, frame: pd.DataFrame, size: int, notes: list[str], progress: bool) -> LoadedSet:
    from dermsynth.data.images import load_image

    images, keep = [], []
    for i, path in enumerate(track(frame["path"], len(frame), f"load {name}", progress and len(frame) > 200)):
        try:
            images.append(load_image(path, size))
            keep.append(i)
        except ImageReadError as exc:
            notes.append(f"{name}: skipped unreadable image {path} ({exc.reason})")
    frame = frame.iloc[keep].reset_index(drop=True)
    array = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return LoadedSet(name, frame, array)


def _real_sets(prepared: PreparedDataset, config: AuditConfig, notes: list[str], progress: bool) -> dict:
    sets = {}
    for split in ("train", "val", "test"):
        frame = prepared.split(split).copy()
        frame["path"] = [str(p) for p in prepared.paths(frame)]
        sets[split] = _load(f"real {split}", _sample(frame, config.max_images, config.seed), config.image_size,
                            notes, progress)
    if len(sets["train"].frame) < 2:
        raise DermsynthError(f"{prepared.root}: the real train split has fewer than 2 images; nothing to audit")
    return sets


def feature_training_rows(train: LoadedSet, config: AuditConfig) -> np.ndarray:
    """Which real training images teach the default feature CNN (True) and which are left to compare against.

    One half of the patients (else lesions), stratified by class, when ``feature_split`` is half; all otherwise
    (and for feature spaces trained elsewhere)."""
    rows = np.ones(len(train.frame), dtype=bool)
    groups = _lesion_groups(train.frame)
    targets = train.frame["target"].to_numpy()
    if config.features != "classifier" or config.feature_split == "all" or len(np.unique(groups)) < 4:
        return rows
    from sklearn.model_selection import StratifiedGroupKFold

    split = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=config.seed % 2**32)
    _, reference = next(split.split(np.zeros(len(rows)), targets, groups))
    rows[reference] = False
    return rows


def _feature_space(config: AuditConfig, real: dict[str, LoadedSet], classes: list[str], out: Path,
                   device: str, teach: np.ndarray) -> FeatureSpace:
    spec = config.features
    if spec == "classifier":
        val = real["val"] if len(real["val"].frame) else real["test"]
        train = real["train"]
        folder = out / ("feature-classifier" if teach.all() else "feature-classifier-half")
        return trained_classifier_space(
            train.images[teach], train.frame["target"].to_numpy()[teach], val.images,
            val.frame["target"].to_numpy(), classes, folder, config.classifier_epochs, config.seed, device,
            "" if teach.all() else f" (one patient-grouped half of the train split; FID, KID and precision/recall "
                                   f"compare against the other {int((~teach).sum())})")
    if spec.startswith(("classifier:", "hf:")):
        return named_space(spec, device)
    raise DermsynthError(f"features: unknown feature space {spec!r} ({', '.join(FEATURE_SPACES)})")


def _cached_features(space: FeatureSpace, loaded: LoadedSet, cache: Path) -> np.ndarray:
    """Features are cached by feature space + exact pixels, so reruns and repeated sets cost nothing."""
    key = hashlib.sha256(space.name.encode() + loaded.images.tobytes()).hexdigest()[:20]
    path = cache / f"{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.ndim == 2 and len(cached) == len(loaded.images) and np.isfinite(cached).all():
                return cached
        except (OSError, ValueError, EOFError):
            pass
        console.print(f"[yellow]feature cache {path.name} is damaged: computing the features again[/yellow]")
    features = space(loaded.images).astype(np.float32)
    with atomic_path(path) as tmp:  # its name ends in .npy, so np.save adds no suffix
        np.save(tmp, features, allow_pickle=False)
    return features


# --------------------------------------------------------------------------- fidelity


def _fidelity(real: dict[str, LoadedSet], synthetic: LoadedSet, classes: list[str], config: AuditConfig,
              notes: list[str], compared: np.ndarray) -> dict[str, Any]:
    """Synthetic vs real train, beside real test vs real train: the same metric between two real samples.

    FID and precision/recall depend on sample size and, overall, on the class mix, so both comparisons use the same
    number of images, drawn in the class mix of the same training images (``compared``): those the feature network
    did not learn from, or all of them when it learnt from all.
    """
    train, reference = real["train"], real["test"]
    rng = np.random.default_rng(config.seed)

    def pair(mask_train: np.ndarray, mask_syn: np.ndarray, mask_ref: np.ndarray) -> dict[str, Any]:
        syn_rows, ref_rows = _in_class_mix(np.flatnonzero(mask_syn), np.flatnonzero(mask_ref), mask_train & compared,
                                           synthetic, reference, train, rng)
        base = train.features[mask_train & compared]
        kwargs = {"k": config.nearest_k, "kid_subsets": config.kid_subsets, "seed": config.seed}
        result = {"synthetic_vs_train": compare(base, synthetic.features[syn_rows], **kwargs),
                  "real_test_vs_train": compare(base, reference.features[ref_rows], **kwargs)}
        syn_fid, ref_fid = result["synthetic_vs_train"]["fid"], result["real_test_vs_train"]["fid"]
        result["fid_ratio"] = syn_fid / ref_fid if ref_fid and math.isfinite(ref_fid) else math.nan
        return result

    everything = [np.ones(len(s.frame), dtype=bool) for s in (train, synthetic, reference)]
    result: dict[str, Any] = {"overall": pair(*everything)}
    per_class = {}
    for target, name in enumerate(classes):
        masks = [s.frame["target"].to_numpy() == target for s in (train, synthetic, reference)]
        if not masks[1].any() or not masks[0].any():
            where = "synthetic" if not masks[1].any() else "real train"
            notes.append(f"class {name!r} has no images in the {where} set: no per-class fidelity for it")
            per_class[name] = None
            continue
        per_class[name] = pair(*masks)
    result["per_class"] = per_class
    n_used = result["overall"]["synthetic_vs_train"]["n_fake"]
    if n_used < 2:
        notes.append("fewer than 2 synthetic images: FID/KID/precision/recall are undefined (NaN)")
    elif n_used <= synthetic.features.shape[1]:
        notes.append(f"FID from {n_used} images in a {synthetic.features.shape[1]}-d space is strongly biased; "
                     "read it only beside the real-vs-real value, computed from the same number of images")
    return result


def _in_class_mix(syn_rows: np.ndarray, ref_rows: np.ndarray, base: np.ndarray, synthetic: LoadedSet,
                  reference: LoadedSet, train: LoadedSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Equal-sized samples of the synthetic and reference rows, both in the class mix of the compared train images.

    A class-balanced synthetic set compared with an 80/20 real one would otherwise differ by its mix alone: in a
    feature space trained to separate the classes, that alone inflates FID. With one class (per-class figures),
    or a class missing from a set, this is a plain random sample of equal size."""
    base_targets = train.frame["target"].to_numpy()[base]
    syn_t, ref_t = synthetic.frame["target"].to_numpy()[syn_rows], reference.frame["target"].to_numpy()[ref_rows]
    classes, counts = np.unique(base_targets, return_counts=True)
    share = counts / counts.sum()
    mixable = len(classes) > 1 and len(ref_rows) and all((syn_t == c).any() and (ref_t == c).any() for c in classes)
    if not mixable:
        n = min(len(syn_rows), len(ref_rows)) if len(ref_rows) else len(syn_rows)
        return (np.sort(rng.choice(syn_rows, n, replace=False)),
                np.sort(rng.choice(ref_rows, n, replace=False)) if len(ref_rows) else ref_rows)
    total = min(min((syn_t == c).sum(), (ref_t == c).sum()) / f for c, f in zip(classes, share, strict=True))
    picked: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for c, f in zip(classes, share, strict=True):
        k = max(1, int(total * f))
        picked[0].append(rng.choice(syn_rows[syn_t == c], k, replace=False))
        picked[1].append(rng.choice(ref_rows[ref_t == c], k, replace=False))
    return np.sort(np.concatenate(picked[0])), np.sort(np.concatenate(picked[1]))


# --------------------------------------------------------------------------- how synthetic images differ


def _compare_size(config: AuditConfig, synthetic: LoadedSet) -> int:
    """C2ST and domain-gap resolution: the synthetic images' own size when smaller than the audit size."""
    if config.compare_size is not None:
        return config.compare_size
    from dermsynth.data.images import load_rgb

    sides = []
    for path in synthetic.frame["path"].head(20):
        with contextlib.suppress(ImageReadError):
            sides.append(min(load_rgb(path).shape[:2]))
    return min([config.image_size, *sides])


def _at_size(loaded: LoadedSet, size: int) -> np.ndarray:
    if loaded.images.shape[1] == size:
        return loaded.images
    from dermsynth.data.images import load_image

    return np.stack([load_image(path, size) for path in loaded.frame["path"]]) if len(loaded.frame) else \
        np.zeros((0, size, size, 3), np.uint8)


def _through_size(loaded: LoadedSet, small: np.ndarray) -> LoadedSet:
    """``loaded`` as a generator of ``small``'s size would see it (``small`` = :func:`_at_size`), brought back to
    the audit size the way its images are: with the same bicubic resize."""
    from dermsynth.data.images import square_resize

    full = loaded.images.shape[1]
    images = np.stack([square_resize(image, full) for image in small]) if len(small) else loaded.images
    return LoadedSet(f"{loaded.name} at {small.shape[1]} px", loaded.frame, images)


def _matched_fidelity(real: dict[str, LoadedSet], small: dict[str, np.ndarray], synthetic: LoadedSet,
                      classes: list[str], config: AuditConfig, compared: np.ndarray, space: FeatureSpace,
                      cache: Path, at_audit_size: dict[str, Any]) -> dict[str, Any]:
    """Fidelity with the real images passed through the synthetic size; the audit-size figures kept beside."""
    matched = {}
    for split, loaded in real.items():
        matched[split] = _through_size(loaded, small[split])
        matched[split].features = _cached_features(space, matched[split], cache) if len(loaded.frame) else \
            loaded.features
    fidelity = _fidelity(matched, synthetic, classes, config, [], compared)
    fidelity["resolution"] = int(next(iter(small.values())).shape[1])
    fidelity["at_audit_size"] = {k: at_audit_size[k] for k in ("overall", "per_class", "resolution")}
    return fidelity


def _lesion_groups(frame: pd.DataFrame) -> np.ndarray:
    """Patient, else lesion, else image of each real image (the grouping of prepare's splits)."""
    from dermsynth.data.splits import group_keys

    filled = frame.assign(**{c: frame.get(c) for c in ("patient_id", "lesion_id")})
    return group_keys(filled).to_numpy(dtype=object)


def _two_sample_tests(real: dict[str, np.ndarray], real_targets: dict[str, np.ndarray],
                      real_groups: dict[str, np.ndarray], synthetic: np.ndarray, synthetic_targets: np.ndarray,
                      classes: list[str], config: AuditConfig, device: str, progress: bool) -> dict[str, Any]:
    """Per class: C2ST of synthetic vs real train, and of real held-out (val + test) vs real train as reference;
    real images are grouped by patient (else lesion) across folds, synthetic images are each their own group."""
    from dermsynth.audit.c2st import c2st

    held_out = np.concatenate([real["val"], real["test"]])
    held_out_targets = np.concatenate([real_targets["val"], real_targets["test"]])
    held_out_groups = np.concatenate([real_groups["val"], real_groups["test"]])
    kwargs = {"folds": config.c2st_folds, "epochs": config.c2st_epochs, "max_per_set": config.c2st_max_per_set,
              "seed": config.seed, "device": device}
    per_class = {}
    for target, name in enumerate(track(classes, len(classes), "C2ST", progress)):
        in_train, in_held_out = real_targets["train"] == target, held_out_targets == target
        train, train_groups = real["train"][in_train], real_groups["train"][in_train]
        per_class[name] = {
            "synthetic_vs_real": c2st(train, synthetic[synthetic_targets == target], groups_a=train_groups,
                                      **kwargs).as_dict(),
            "real_held_out_vs_real": c2st(train, held_out[in_held_out], groups_a=train_groups,
                                          groups_b=held_out_groups[in_held_out], **kwargs).as_dict(),
        }
    return {"method": "per class, a small CNN trained from scratch to tell the two sets apart (balanced sets, "
                      f"{config.c2st_folds}-fold cross-validation with every patient or lesion in one fold, seed "
                      f"{config.seed}); pooled out-of-fold AUROC with a bootstrap CI. 0.5 = indistinguishable, "
                      "1 = always told apart.",
            "image_size": int(synthetic.shape[1]), "per_class": per_class}


def _domain_gap(real_train: np.ndarray, real_targets: np.ndarray, synthetic: np.ndarray,
                synthetic_targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from dermsynth.audit.domain_gap import domain_gap

    result = domain_gap(real_train, real_targets, synthetic, synthetic_targets, classes)
    result["image_size"] = int(synthetic.shape[1])
    return result


def _difference_tests(real: dict[str, LoadedSet], images: dict[str, np.ndarray], synthetic: LoadedSet,
                      classes: list[str], config: AuditConfig, device: str, progress: bool) -> dict[str, Any]:
    """C2ST and domain gap on ``images``: the real sets at the compare size."""
    if not (config.c2st or config.domain_gap):
        return {}
    size = int(next(iter(images.values())).shape[1])
    targets = {k: v.frame["target"].to_numpy() for k, v in real.items()}
    syn_images, syn_targets = _at_size(synthetic, size), synthetic.frame["target"].to_numpy()
    out: dict[str, Any] = {}
    if config.c2st:
        console.print(f"audit: real-vs-synthetic tests (C2ST, {size} px) ...")
        groups = {k: _lesion_groups(v.frame) for k, v in real.items()}
        out["c2st"] = _two_sample_tests(images, targets, groups, syn_images, syn_targets, classes, config, device,
                                        progress)
    if config.domain_gap:
        console.print(f"audit: domain-gap statistics ({size} px) ...")
        out["domain_gap"] = _domain_gap(images["train"], targets["train"], syn_images, syn_targets, classes)
    return out


# --------------------------------------------------------------------------- memorization


def _memorization(real: dict[str, LoadedSet], synthetic: LoadedSet, config: AuditConfig, notes: list[str]
                  ) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    train = real["train"]
    index = TrainingIndex(train.images, train.features, MemorizationConfig(candidates=config.candidates))
    # Calibrate on val; count false flags on test (both real, other patients). Without val, test does both.
    calibration = real["val"] if len(real["val"].frame) else real["test"]
    held_out = real["test"]
    if calibration is held_out:
        notes.append("no val split: thresholds calibrated and checked on the same real test images")
    cal = index.search(calibration.images, calibration.features)
    t_pixel, t_feature = threshold(cal.pixel_similarity, config.quantile), threshold(cal.feature_similarity,
                                                                                       config.quantile)
    ref = index.search(held_out.images, held_out.features)
    syn = index.search(synthetic.images, synthetic.features)

    def flags(result) -> np.ndarray:
        return result.pixel_similarity > t_pixel

    controls = _positive_controls(index, train, config, flags)
    nearest = pd.DataFrame({
        "image_id": synthetic.frame["image_id"], "path": synthetic.frame["path"],
        "label_target": synthetic.frame["target"],
        "nearest_pixel_train_id": train.frame["image_id"].to_numpy()[syn.pixel_index],
        "nearest_pixel_train_path": train.frame["path"].to_numpy()[syn.pixel_index],
        "pixel_similarity": syn.pixel_similarity.round(5),
        "nearest_feature_train_id": [train.frame["image_id"].iloc[i] if i >= 0 else "" for i in syn.feature_index],
        "feature_similarity": np.round(syn.feature_similarity, 5),
    })
    nearest["flagged"] = flags(syn)
    # Feature cosine is a second opinion for review, not a flag: on small calibration sets its tail is noisy.
    nearest["feature_above_threshold"] = syn.feature_similarity > t_feature if not math.isnan(t_feature) else False
    summary = {
        "method": "flagged when the pixel similarity (max normalised cross-correlation of 64 px high-pass grey "
                  "images over flips/rotations and 0.8-1.0 scales/shifts; candidates from pixel and feature "
                  "retrieval) exceeds the threshold; feature cosine is reported beside it for review",
        "thresholds": {"pixel": t_pixel, "feature": t_feature, "quantile": config.quantile,
                       "calibrated_on": f"real {calibration.name.split()[-1]} ({len(calibration.frame)} images)"},
        "synthetic_flagged": int(nearest["flagged"].sum()),
        "synthetic_flagged_rate": float(nearest["flagged"].mean()) if len(nearest) else math.nan,
        "synthetic_feature_above_threshold": int(nearest["feature_above_threshold"].sum()),
        "held_out_real_flagged_rate": float(flags(ref).mean()) if len(held_out.frame) else math.nan,
        "positive_controls": controls,
        "nearest_similarity_median": {
            "synthetic_pixel": float(np.median(syn.pixel_similarity)) if len(nearest) else math.nan,
            "held_out_real_pixel": float(np.median(ref.pixel_similarity)) if len(held_out.frame) else math.nan,
        },
    }
    return summary, nearest, ref.pixel_similarity


def _positive_controls(index: TrainingIndex, train: LoadedSet, config: AuditConfig, flags) -> dict[str, Any]:
    """Copies of training images, lightly transformed, must be flagged: a detector self-test on every audit."""
    n = min(config.positive_controls, len(train.frame))
    if n == 0:
        return {}
    pick = np.random.default_rng(config.seed).choice(len(train.frame), n, replace=False)
    rates = {}
    for name, images in light_copies(train.images[pick], seed=config.seed).items():
        result = index.search(images, None if train.features is None else train.features[pick])
        rates[name] = float(flags(result).mean())
    return {"images": n, "flagged_rate": rates, "overall": float(np.mean(list(rates.values())))}


def _diversity(real: dict[str, LoadedSet], synthetic: LoadedSet, classes: list[str]) -> dict[str, Any]:
    out = {}
    for target, name in enumerate(classes):
        syn = synthetic.features[synthetic.frame["target"].to_numpy() == target]
        ref = real["train"].features[real["train"].frame["target"].to_numpy() == target]
        out[name] = {"synthetic_mean_pairwise_cosine": within_set_similarity(syn),
                     "real_train_mean_pairwise_cosine": within_set_similarity(ref)}
    return out


# --------------------------------------------------------------------------- entry point


def audit(real: str | Path, synthetic: str | Path, out: str | Path, config: AuditConfig | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Audit ``synthetic`` against the prepared dataset ``real``; returns what ``audit.json`` holds."""
    from dermsynth.data.synthetic_folders import comparable_folder, synthetic_frame

    config = config if config is not None else AuditConfig()
    started = time.time()
    out = ensure_writable_dir(out)
    prepared = load_prepared(real)
    classes = prepared.classes
    notes: list[str] = []
    syn_frame = synthetic_frame(synthetic, classes)  # the folder as given is checked first
    folder, preprocessing = comparable_folder(synthetic, prepared.summary, config.synthetic_preprocess,
                                              out / "cache" / "synthetic-preprocessed", progress)
    syn_frame = _sample(synthetic_frame(folder, classes) if folder != Path(synthetic) else syn_frame,
                        config.max_images, config.seed)
    real_sets = _real_sets(prepared, config, notes, progress)
    synthetic_set = _load("synthetic", syn_frame, config.image_size, notes, progress)
    if len(synthetic_set.frame) == 0:
        raise DermsynthError(f"{synthetic}: none of its images could be read")
    device = pick_device(config.device)
    console.print(f"audit: features ({config.features}) ...")
    teach = feature_training_rows(real_sets["train"], config)
    space = _feature_space(config, real_sets, classes, out, device, teach)
    for loaded in (*real_sets.values(), synthetic_set):
        loaded.features = _cached_features(space, loaded, out / "cache") if len(loaded.frame) else None
    for loaded in real_sets.values():
        if loaded.features is None:
            loaded.features = np.zeros((0, synthetic_set.features.shape[1]), np.float32)
    console.print("audit: fidelity and memorization ...")
    halves = not teach.all()
    compared = ~teach if halves else teach
    size = _compare_size(config, synthetic_set)
    matched = config.fidelity_resolution == "matched" and size < config.image_size
    # The real images at the compare size, decoded once for matched fidelity, C2ST and the domain gap.
    small = {k: _at_size(v, size) for k, v in real_sets.items()} if matched or config.c2st or config.domain_gap \
        else {}
    fidelity = _fidelity(real_sets, synthetic_set, classes, config, notes, compared)
    fidelity["resolution"] = config.image_size
    if matched:
        fidelity = _matched_fidelity(real_sets, small, synthetic_set, classes, config, compared, space,
                                     out / "cache", fidelity)
    fidelity["reference"] = {
        "train_images_compared": int(compared.sum()),
        "train_images_teaching_features": int(teach.sum()) if config.features == "classifier" else 0,
        "split": "patient-grouped halves of the train split" if halves else "the whole train split"}
    memorization, nearest, held_out_pixel = _memorization(real_sets, synthetic_set, config, notes)
    nearest.insert(2, "label", [classes[t] for t in nearest.pop("label_target")])
    differences = _difference_tests(real_sets, small, synthetic_set, classes, config, device, progress)
    report = {
        "feature_space": {"name": space.name, "description": space.description,
                          "dimensions": int(synthetic_set.features.shape[1])},
        "image_size": config.image_size,
        "synthetic_preprocessing": preprocessing,
        "counts": {"synthetic": len(synthetic_set.frame), **{f"real_{k}": len(v.frame) for k, v in real_sets.items()},
                   "synthetic_per_class": synthetic_set.frame["target"].map(dict(enumerate(classes)))
                   .value_counts().to_dict()},
        "fidelity": fidelity,
        **differences,
        "memorization": memorization,
        "diversity": _diversity(real_sets, synthetic_set, classes),
        "partial": bool(notes),
        "notes": notes,
        "settings": config.model_dump(),
        "real": str(real), "synthetic": str(synthetic),
        "seconds": round(time.time() - started, 1),
    }
    from dermsynth.audit.figures import similarity_histogram, top_pairs

    top_pairs(nearest, out / "top_pairs.png", memorization["thresholds"]["pixel"], config.image_size)
    similarity_histogram(nearest["pixel_similarity"].to_numpy(), held_out_pixel,
                         memorization["thresholds"]["pixel"], out / "similarity.png")
    write_csv_atomic(out / "nearest.csv", nearest)
    write_csv_atomic(out / "flagged.csv", nearest[nearest["flagged"]])
    write_json_atomic(out / "audit.json", report)
    return report
