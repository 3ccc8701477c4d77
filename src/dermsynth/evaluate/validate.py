"""The `validate` stage: does adding synthetic images help a real skin-lesion classifier, and how sure is that?

For every regime x synthetic folder x seed, train a classifier (selection on the real validation split), test
once on the real, patient-disjoint test split, and write ``OUT/validation/<regime>/<seed>/``:

- ``history.csv``: per epoch train loss, lr, val loss/accuracy/balanced accuracy/AUROC, test accuracy/AUROC
  (plotting only);
- ``predictions.csv`` / ``val_predictions.csv``: isic-challenge-scoring format (``image`` + one probability
  column per class), scorable against ``OUT/validation/test_truth.csv``;
- ``metrics.json``: test metrics at the validation-chosen threshold, per-image bootstrap intervals, the training
  set's composition, timings and the settings hash (written last: its presence marks a finished run);
- ``checkpoint/`` (``save_checkpoint``): the selected classifier, loadable by ``load_classifier``.

Then ``OUT/validation/summary.csv|json|md`` (one row per regime: mean, sd and intervals of every metric) and
``comparisons.csv`` (each regime minus ``real``, paired by seed and test image). Finished runs with the same
settings are skipped on a rerun; an interrupted run restarts from scratch.

Several processes (``torchrun`` / ``accelerate launch``) deal the unfinished runs round-robin; each writes its
own run folders, and the main process writes the summary once all have finished. A job-array task
(``shard: K/N``) takes every N-th run of the full list; the summary lists the runs no shard has finished yet.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.classify.metrics import METRICS, youden_threshold
from dermsynth.classify.models import is_pretrained
from dermsynth.config import validate_config
from dermsynth.data.dataset import PreparedDataset, load_prepared, sample_fingerprint, subsample_per_class
from dermsynth.data.synthetic_folders import (
    RECONSTRUCTION_RECORD,
    comparable_folder,
    is_reconstruction,
    synthetic_frame,
)
from dermsynth.distributed import ProcessShare, current_share, parse_shard
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.augment import RECIPE as AUGMENT_RECIPE
from dermsynth.evaluate.augment import strong_augment
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.controls import RECIPES as CONTROL_RECIPES
from dermsynth.evaluate.controls import LowpassTarget, dihedral, fit_lowpass, lowpass_copy, mixup_copy
from dermsynth.evaluate.datasets import (
    ImageBank,
    check_no_copies,
    check_no_leak,
    real_frame,
)
from dermsynth.evaluate.external import ExternalSet, load_external, unique_names
from dermsynth.evaluate.regimes import Regime, compose, control_pool, parse_regime
from dermsynth.evaluate.runs import READ_ERRORS, predictions_file, read_predictions, read_run
from dermsynth.evaluate.stats import RunPredictions, image_intervals
from dermsynth.evaluate.subgroups import subgroup_labels
from dermsynth.evaluate.summary import json_safe, summarise_test_set, write_summary_files
from dermsynth.layout import RUN_FOLDERS
from dermsynth.progress import console, make_progress
from dermsynth.utils import (
    ensure_writable_dir,
    read_csv,
    read_json,
    seed_everything,
    sha256_file,
    stable_hash,
    torch_threads,
    write_csv_atomic,
    write_json_atomic,
)

# Settings that do not change a run's result (or are handled per run) stay out of its settings hash.
NOT_IN_RUN_HASH = {"synthetic", "reconstruction", "regimes", "seeds", "first_seed", "bootstrap", "confidence",
                   "save_checkpoint", "device", "threads", "shard", "subgroups", "subgroup_min_images",
                   "subgroup_min_per_class"}


@dataclass
class Data:
    """Everything the runs read: the real splits, the synthetic pools, the decoded images."""

    classes: list[str]
    bank: ImageBank
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    pools: dict[str, pd.DataFrame]
    fingerprints: dict[str, str]
    test_groups: dict[str, pd.Series]  # per attribute, each test image's subgroup (subgroups.py)
    external: dict[str, ExternalSet]
    preprocessing: dict[str, Any]  # per synthetic folder: how it was brought to the real images' preprocessing
    reconstructions: Reconstructions | None = None
    lowpass_targets: dict[tuple[str, str], dict[int, LowpassTarget]] = field(default_factory=dict)


@dataclass
class Reconstructions:
    """A `dermsynth reconstruct --split train` folder: each real training image's reconstruction, by image id."""

    folder: Path
    record: dict[str, Any]
    paths: dict[str, str]
    fingerprint: str

    @property
    def learned(self) -> bool:
        """Through a trained autoencoder (which must have seen only the run's sample), not a bicubic down-up."""
        return "vae_sha256" in self.record


@dataclass
class RunPlan:
    regime: Regime
    source: str | None
    seed: int
    folder: Path
    train: pd.DataFrame
    settings_hash: str
    real: pd.DataFrame | None = None  # the run's whole real sample (the controls fit and draw from it)
    made: dict[str, Any] = field(default_factory=dict)  # how its control copies were made (metrics.json)

    @property
    def label(self) -> str:
        return self.regime.name + (f"@{self.source}" if self.source else "")


@dataclass
class ValidateResult:
    out: Path
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    ran: list[str]
    skipped: list[str]


def validate(config: ValidateConfig | Mapping[str, Any], out: str | Path, *, progress: bool = True) -> ValidateResult:
    """Run (or resume) every regime x synthetic folder x seed of ``config``; write runs and the summary."""
    if not isinstance(config, ValidateConfig):
        config = validate_config(ValidateConfig, dict(config))
    share = current_share()
    with torch_threads(share.cpu_threads(config.threads)):
        return _validate(config, Path(out), progress, share)


def _validate(config: ValidateConfig, out: Path, progress: bool,
              share: ProcessShare = ProcessShare()) -> ValidateResult:
    from dermsynth.classify.classifiers import build_classifier

    started = time.monotonic()
    root = ensure_writable_dir(out / RUN_FOLDERS["validate"])
    device = share.device(config.device)
    prepared = load_prepared(config.real)
    size = config.image_size if config.image_size is not None else prepared.image_size
    spec = build_classifier(config.model, prepared.classes, None if _pretrained(config) else size,
                            config.architecture).spec
    cache = root / "synthetic-preprocessed"
    with share.main_first():  # the main process writes the preprocessed-synthetic cache the others then read
        if share.distributed:
            preprocess_synthetic(config, prepared, cache, progress and share.is_main)
    data = load_data(config, prepared, spec.size, progress and share.is_main, cache=cache)
    plans = plan_runs(config, data, root)
    shard = parse_shard(config.shard)
    assigned = shard.take(plans) if shard else plans
    # The main process decides which runs are finished, before any rank adds one, and tells the others.
    unfinished = share.broadcast([i for i, plan in enumerate(assigned) if not _finished(plan)]
                                 if share.is_main else None)
    mine = share.mine([assigned[i] for i in unfinished])
    _load_training_images(data, mine, progress and share.is_main)
    if share.is_main:
        _write_truth(data, root)
    for plan in mine:
        execute_run(plan, config, data, device, progress and share.is_main)
    ran = [name for names in share.gather([_run_name(plan) for plan in mine]) for name in names]
    skipped = [_run_name(plan) for i, plan in enumerate(assigned) if i not in set(unfinished)]
    if not share.is_main:
        return ValidateResult(root, pd.DataFrame(), pd.DataFrame(), ran, skipped)
    missing = [_run_name(plan) for plan in plans if not _finished(plan)]
    summary, comparisons = write_summary(config, data, plans, root, missing)
    write_json_atomic(root / "validate.json", json_safe({
        "config": config.model_dump(mode="json"), "device": device, "image_size": spec.size,
        "processes": {"world_size": share.world_size, "shard": str(shard) if shard else None,
                      "rule": "the unfinished runs (of this shard) in plan order; run i goes to rank i % world_size"},
        "missing_runs": missing,
        "classes": data.classes, "counts": _counts(data), "fingerprints": data.fingerprints,
        "unreadable_synthetic": sorted(data.bank.failed), "ran": ran, "skipped": skipped,
        "augment_recipe": AUGMENT_RECIPE.as_dict() if any(p.regime.method == "augment" for p in plans) else None,
        "control_recipes": {m: CONTROL_RECIPES[m] for m in sorted({p.regime.method for p in plans
                                                                   if p.regime.is_control} - {"augment"})},
        "reconstruction": None if data.reconstructions is None else {
            "through": data.reconstructions.record.get("through"), "images": len(data.reconstructions.paths),
            "fingerprint": data.reconstructions.fingerprint},
        "synthetic_preprocessing": data.preprocessing,
        "external": {name: {"images": len(ext.frame), "removed_duplicates": ext.removed,
                            "absent_subgroups": ext.absent_subgroups} for name, ext in data.external.items()},
        "seconds_this_call": round(time.monotonic() - started, 1)}))
    return ValidateResult(root, summary, comparisons, ran, skipped)


def _run_name(plan: RunPlan) -> str:
    return f"{plan.label} seed {plan.seed}"


def _pretrained(config: ValidateConfig) -> bool:
    return is_pretrained(config.model)


# --------------------------------------------------------------------------- data


def load_data(config: ValidateConfig, prepared: PreparedDataset, size: int, progress: bool,
              cache: Path | None = None) -> Data:
    """Real splits (leak-checked, decoded), synthetic pools (decoded, unreadable files skipped; a folder not made
    by dermsynth first goes through the real images' preprocessing, cached under ``cache``)."""
    classes = prepared.classes
    frames = {split: real_frame(prepared, split) for split in ("train", "val", "test")}
    check_no_leak(frames)
    for split in ("train", "val", "test"):
        if frames[split].empty:
            raise DermsynthError(f"{config.real}: the {split} split is empty")
    if frames["test"]["target"].nunique() < 2:
        warnings.warn("the test split holds a single class: AUROC, pAUC, sensitivity/specificity are undefined "
                      "and reported as NaN", stacklevel=3)
    bank = ImageBank(size)
    evaluation = pd.concat([frames["val"], frames["test"]])
    bank.load(evaluation["path"].tolist(), "loading val/test", progress)
    bank.require(evaluation, f"{config.real} val/test")
    pools = {}
    preprocessing: dict[str, Any] = {}
    for name, original in unique_names(config.synthetic).items():
        if is_reconstruction(original):
            raise DermsynthError(f"{original}: holds reconstructions of real images (dermsynth reconstruct), not "
                                 "synthetic ones; audit it, or give it as `reconstruction:` for the reconstruct "
                                 "control regimes")
        pool = _read_pool(bank, synthetic_frame(original, classes), original, name, progress)
        check_no_copies(bank, pool, evaluation)  # a held-out image is a leak however it is later framed
        folder, preprocessing[name] = comparable_folder(original, prepared.summary, config.synthetic_preprocess
                                                        and cache is not None, cache or ".", progress)
        if folder != original:
            bank.forget(pool["path"])
            pool = _read_pool(bank, synthetic_frame(folder, classes), original, name, progress)
            check_no_copies(bank, pool, evaluation)
        pools[name] = pool
    fingerprints = {"real": sha256_file(Path(config.real) / "metadata.csv")[:16]}
    for name, pool in pools.items():
        fingerprints[name] = stable_hash([(p, Path(p).stat().st_size) for p in pool["path"]])
    data = Data(classes, bank, frames["train"], frames["val"], frames["test"], pools, fingerprints,
                subgroup_labels(prepared.split("test"), config.subgroups), {}, preprocessing)
    data.external = load_external(config, bank, pd.concat([data.train, *pools.values()]), data.train, classes,
                                  progress)
    if config.reconstruction is not None:
        data.reconstructions = load_reconstructions(config.reconstruction, data.train)
    return data


def load_reconstructions(folder: Path, train: pd.DataFrame) -> Reconstructions:
    """The reconstructions the ``reconstruct`` controls draw, checked to be of this dataset's training images."""
    if not is_reconstruction(folder):
        raise DermsynthError(f"{folder}: not a reconstruction folder (no {RECONSTRUCTION_RECORD}); make one with "
                             "dermsynth reconstruct --split train --model MODEL --model-sample")
    remedy = "make the folder again with dermsynth reconstruct"
    record = read_json(folder / RECONSTRUCTION_RECORD, remedy)
    manifest = read_csv(folder / "manifest.csv", remedy, ("source_image_id", "path"), dtype={"source_image_id": str})
    paths = {str(i): str(folder / p) for i, p in zip(manifest["source_image_id"], manifest["path"], strict=True)}
    if record.get("split") != "train":
        raise DermsynthError(f"{folder}: holds reconstructions of the {record.get('split')!r} split; the "
                             "reconstruct control is made from training images only (--split train)")
    strangers = set(paths) - set(train["image_id"])
    if strangers:
        raise DermsynthError(f"{folder}: {len(strangers)} of its images (e.g. {sorted(strangers)[0]}) are not "
                             "training images of this prepared dataset")
    fingerprint = stable_hash([record.get("vae_sha256"), record.get("through"),
                               sorted((i, Path(p).stat().st_size) for i, p in paths.items())])
    return Reconstructions(folder, record, paths, fingerprint)


def preprocess_synthetic(config: ValidateConfig, prepared: PreparedDataset, cache: Path, progress: bool) -> None:
    """Build the preprocessed copies of the synthetic folders that need them (cached; load_data reuses them)."""
    for original in config.synthetic:
        comparable_folder(Path(original), prepared.summary, config.synthetic_preprocess, cache, progress)


def _read_pool(bank: ImageBank, pool: pd.DataFrame, folder: Path, name: str, progress: bool) -> pd.DataFrame:
    bank.load(pool["path"].tolist(), f"loading {name}", progress)
    pool = bank.drop_unreadable(pool, str(folder))
    if pool.empty:
        raise DermsynthError(f"{folder}: none of its images could be read")
    return pool


def _real_train(config: ValidateConfig, data: Data, seed: int) -> pd.DataFrame:
    if config.real_per_class is None:
        return data.train
    sample_seed = seed if config.subsample_seed is None else config.subsample_seed
    return subsample_per_class(data.train, config.real_per_class, sample_seed, data.classes)


def plan_runs(config: ValidateConfig, data: Data, root: Path) -> list[RunPlan]:
    """Every run's training table, composed (and checked) before anything trains."""
    for text in config.regimes:
        regime = parse_regime(text)
        if regime.per_source and not data.pools:
            what = "takes its statistics from" if regime.method == "lowpass" else "needs"
            raise DermsynthError(f"regime {regime.name} {what} at least one --synthetic folder")
    base = config.model_dump(mode="json", exclude=NOT_IN_RUN_HASH)
    plans = []
    for text in config.regimes:
        regime = parse_regime(text)
        sources: list[str | None] = list(data.pools) if regime.per_source else [None]
        for source in sources:
            folder_name = regime.slug + (f"@{source}" if source and len(data.pools) > 1 else "")
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                real = _real_train(config, data, seed)
                pool = _control_pool(regime, real, data, seed, config, source) if regime.is_control else \
                    data.pools.get(source) if source else None
                train = compose(regime, real, pool, data.classes, seed, config.class_mix)
                check_no_leak({"train": train, "val": data.val, "test": data.test})
                key = {"config": base, "regime": regime.name, "seed": seed, "real": data.fingerprints["real"],
                       "source": data.fingerprints.get(source) if source else None}
                if regime.method == "augment":
                    key["augment"] = AUGMENT_RECIPE.as_dict()
                elif regime.is_control:
                    key["control"] = CONTROL_RECIPES[regime.method] | (
                        {"reconstruction": data.reconstructions.fingerprint}  # type: ignore[union-attr]
                        if regime.method == "reconstruct" else {})
                if data.external:  # a run predicts on every external set: adding one means training again
                    key["external"] = {name: ext.fingerprint for name, ext in data.external.items()}
                plans.append(RunPlan(regime, source, seed, root / folder_name / str(seed), train, stable_hash(key),
                                     real))
    return plans


def _control_pool(regime: Regime, real: pd.DataFrame, data: Data, seed: int, config: ValidateConfig,
                  source: str | None) -> pd.DataFrame:
    """The copies a control regime draws from; a reconstruct copy's source is the image's reconstruction."""
    pool = control_pool(regime, real, data.classes, seed, config.class_mix, source or "")
    if regime.method == "reconstruct":
        paths = _run_reconstructions(data, real, seed)
        by_real_path = dict(zip(real["path"], real["image_id"], strict=True))
        pool["source_path"] = [paths[by_real_path[p]] for p in pool["source_path"]]
    return pool


def _run_reconstructions(data: Data, real: pd.DataFrame, seed: int) -> dict[str, str]:
    """The reconstructions of a run's real sample, refused unless their autoencoder was trained on exactly that
    sample: one that saw other real images would carry them into the control (as --real-per-class ensures for
    the generator)."""
    rec = data.reconstructions
    if rec is None:
        raise DermsynthError("the reconstruct control needs `reconstruction:` (a folder from dermsynth reconstruct "
                             "--split train --model MODEL --model-sample)")
    trained_on = rec.record.get("autoencoder_sample")
    if rec.learned and (trained_on is None or trained_on.get("image_ids_sha256")
                        != sample_fingerprint(real["image_id"])):
        seen = "an unknown sample" if trained_on is None else f"{trained_on.get('images')} images"
        raise DermsynthError(f"{rec.folder}: its autoencoder was trained on {seen}, not on exactly this run's "
                             f"{len(real)} real training images (seed {seed}); train the generator with the same "
                             "real_per_class and subsample_seed as validate, then reconstruct with --model-sample")
    missing = sorted(set(real["image_id"]) - set(rec.paths))
    if missing:
        raise DermsynthError(f"{rec.folder}: no reconstruction of {len(missing)} of the run's training images "
                             f"(e.g. {missing[0]}); reconstruct the whole sample (--model-sample)")
    return rec.paths


def _copies(plan: RunPlan) -> pd.DataFrame:
    train = plan.train
    return train[train["method"].notna()] if "method" in train.columns else train.iloc[:0]


def _load_training_images(data: Data, plans: list[RunPlan], progress: bool) -> None:
    """The real training images of every run, and the copies its control regime draws (made here, in memory)."""
    if not plans:  # every run of this process's share is finished already
        return
    frames = [p.train[~p.train["synthetic"]] for p in plans]
    frames += [p.real for p in plans if p.regime.method == "lowpass" and p.real is not None]  # fitted on all
    for copies in (_copies(p) for p in plans if p.regime.is_control):
        frames += [pd.DataFrame({"path": copies[column].dropna()}) for column in ("source_path", "partner_path")]
    needed = pd.concat([f[["path"]] for f in frames]).drop_duplicates("path")
    data.bank.load(needed["path"].tolist(), "loading train", progress)
    data.bank.require(needed, "real training images (or their reconstructions)")
    for plan in plans:
        _make_copies(plan, data)


def _make_copies(plan: RunPlan, data: Data) -> None:
    """Each copy of ``plan``'s control regime, from its source image (in the bank) by the regime's method."""
    copies, method, arrays = _copies(plan), plan.regime.method, data.bank.arrays
    if copies.empty or method is None:
        return
    targets = _lowpass_targets(plan, data) if method == "lowpass" else {}
    if targets:
        plan.made = {"method": method, "source": plan.source,
                     "targets": {data.classes[c]: t.as_dict() for c, t in targets.items()}}
    lams = []
    for row in copies.itertuples():
        source = arrays[row.source_path]
        if method == "augment":
            made = strong_augment(source, int(row.copy_seed))
        elif method == "lowpass":
            made = lowpass_copy(source, targets[int(row.target)], int(row.copy))
        elif method == "reconstruct":
            made = dihedral(source, int(row.copy))
        else:
            made, lam = mixup_copy(source, arrays[row.partner_path], int(row.copy_seed))
            lams.append(lam)
        arrays[row.path] = made
    if lams:
        plan.made = {"method": method, "lam_mean": round(float(np.mean(lams)), 4), "copies": len(lams)}


def _lowpass_targets(plan: RunPlan, data: Data) -> dict[int, LowpassTarget]:
    """Per class, the blur and colour transfer that give the run's real sample its synthetic folder's statistics
    (fitted once per synthetic folder and real sample)."""
    assert plan.source is not None and plan.real is not None
    key = (plan.source, sample_fingerprint(plan.real["image_id"]))
    if key not in data.lowpass_targets:
        pool, fitted = data.pools[plan.source], {}
        for c, name in enumerate(data.classes):
            synthetic = [data.bank.arrays[p] for p in pool.loc[pool["target"] == c, "path"]]
            real = [data.bank.arrays[p] for p in plan.real.loc[plan.real["target"] == c, "path"]]
            if not real:
                continue
            if not synthetic:
                raise DermsynthError(f"regime {plan.regime.name}: the synthetic folder {plan.source} has no "
                                     f"{name!r} images to measure that class's sharpness and colour on")
            fitted[c] = fit_lowpass(real, synthetic)
        data.lowpass_targets[key] = fitted
    return data.lowpass_targets[key]


def _write_truth(data: Data, root: Path) -> None:
    """Ground truth of the test split and of each external set, scorable with isic-challenge-scoring."""
    sets = {"test": data.test} | {name: ext.frame for name, ext in data.external.items()}
    for test_set, frame in sets.items():
        truth = pd.DataFrame({"image": frame["image_id"]})
        for target, name in enumerate(data.classes):
            truth[name] = (frame["target"] == target).astype(float)
        write_csv_atomic(root / ("test_truth.csv" if test_set == "test" else f"truth_{test_set}.csv"), truth)


def _counts(data: Data) -> dict[str, Any]:
    def by_class(frame: pd.DataFrame) -> dict[str, int]:
        return {name: int((frame["target"] == t).sum()) for t, name in enumerate(data.classes)}

    counts = {split: by_class(getattr(data, split)) for split in ("train", "val", "test")}
    return (counts | {f"synthetic:{name}": by_class(pool) for name, pool in data.pools.items()}
            | {f"external:{name}": by_class(ext.frame) for name, ext in data.external.items()})


# --------------------------------------------------------------------------- one run


def _finished(plan: RunPlan) -> bool:
    # A damaged metrics.json or predictions.csv (hand-edited, or copied in part) means the run is trained again.
    return read_run(plan.folder, plan.settings_hash) is not None


def _probability_frame(ids: list[str], probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"image": ids})
    for k, name in enumerate(classes):
        frame[name] = probs[:, k].astype(np.float64).round(8)
    return frame


def execute_run(plan: RunPlan, config: ValidateConfig, data: Data, device: str, progress: bool) -> dict[str, Any]:
    """Train, select on val, test once; write the run folder (metrics.json last)."""
    from dermsynth.classify.classifiers import build_classifier, save_classifier
    from dermsynth.classify.training import evaluate, fit, resolve_settings

    shutil.rmtree(plan.folder, ignore_errors=True)  # a partial run restarts cleanly
    plan.folder.mkdir(parents=True)
    seed_everything(plan.seed)
    classifier = build_classifier(config.model, data.classes, None if _pretrained(config) else data.bank.size,
                                  config.architecture)
    settings = resolve_settings(config.train, config.model, device)
    train, val, test = (data.bank.image_set(f) for f in (plan.train, data.val, data.test))
    steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    with make_progress() if progress else _NoProgress() as bar:
        task = bar.add_task(f"{plan.label} seed {plan.seed}", total=steps, status="")
        result = fit(classifier, train, val, settings, plan.seed, device, test if settings.track_test else None,
                     on_step=lambda: bar.advance(task),
                     on_epoch=lambda row: bar.update(task, status=f"epoch {row['epoch']} val AUROC "
                                                                  f"{row['val_auroc']:.3f}"))
        bar.update(task, completed=steps)
    val_probs, _ = evaluate(classifier, val, settings, device)
    threshold = youden_threshold(val.targets == 1, val_probs[:, 1]) if len(data.classes) == 2 else None
    test_probs, test_metrics = evaluate(classifier, test, settings, device, threshold)
    run = RunPredictions(plan.seed, test.targets, test_probs, threshold)
    metrics = {
        "regime": plan.regime.name, "source": plan.source, "seed": plan.seed, "settings_hash": plan.settings_hash,
        "test": {k: test_metrics[k] for k in METRICS},
        "test_image_ci": image_intervals(run, config.bootstrap, config.confidence, plan.seed),
        "undefined": [k for k in METRICS if math.isnan(test_metrics[k])],
        "threshold": threshold, "threshold_rule": "Youden J on the validation split" if threshold is not None else None,
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "train_images": len(train), "train_synthetic": int(train.synthetic.sum()),
        "made_by": {"augment": "augmentation"}.get(plan.regime.method or "", plan.regime.method)
        if plan.regime.is_control else "generator" if plan.source else None,
        "control": plan.made or None,
        "train_by_class": {name: int((train.targets == t).sum()) for t, name in enumerate(data.classes)},
        "seconds": round(result.seconds, 1), "train_images_per_second": round(result.images_per_second, 1),
        "settings": vars(settings),
    }
    metrics["external"] = {}
    for name, ext in data.external.items():  # the same model and threshold, on another clinic's images
        images = data.bank.image_set(ext.frame)
        probs, scores = evaluate(classifier, images, settings, device, threshold)
        write_csv_atomic(plan.folder / predictions_file(name), _probability_frame(images.ids, probs, data.classes))
        metrics["external"][name] = {
            "test": {k: scores[k] for k in METRICS},
            "test_image_ci": image_intervals(RunPredictions(plan.seed, images.targets, probs, threshold),
                                             config.bootstrap, config.confidence, plan.seed)}
    write_csv_atomic(plan.folder / "history.csv", result.history)
    write_csv_atomic(plan.folder / "predictions.csv", _probability_frame(test.ids, test_probs, data.classes))
    write_csv_atomic(plan.folder / "val_predictions.csv", _probability_frame(val.ids, val_probs, data.classes))
    write_csv_atomic(plan.folder / "train_images.csv", plan.train[["image_id", "target", "synthetic"]])
    if config.save_checkpoint:
        save_classifier(classifier, plan.folder / "checkpoint")
    write_json_atomic(plan.folder / "metrics.json", json_safe(metrics))
    if progress:
        console.print(f"{plan.label} seed {plan.seed}: test AUROC {test_metrics['auroc']:.3f}, accuracy "
                      f"{test_metrics['accuracy']:.3f} (best epoch {result.best_epoch}, {result.seconds:.0f} s)")
    return metrics


class _NoProgress:
    """Stands in for a rich Progress when progress output is off."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


# --------------------------------------------------------------------------- summary


def _read_run(plan: RunPlan, data: Data, test_set: str = "test") -> RunPredictions | None:
    """A finished run's predictions on ``test_set`` (the internal test split, or an external set's name)."""
    record = read_run(plan.folder, plan.settings_hash)
    if record is None:
        return None
    frame = data.test if test_set == "test" else data.external[test_set].frame
    try:
        probs = read_predictions(record, test_set).loc[frame["image_id"], data.classes].to_numpy(np.float64)
    except (KeyError, *READ_ERRORS):
        raise DermsynthError(f"{plan.folder}: its predictions lack images or classes of {test_set!r}; delete "
                             "that run folder to train it again") from None
    return RunPredictions(plan.seed, frame["target"].to_numpy(np.int64), probs, record.metrics["threshold"])


def write_summary(config: ValidateConfig, data: Data, plans: list[RunPlan], root: Path,
                  missing: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv|json|md, comparisons.csv and the subgroup tables from every finished run of ``plans``, for the
    internal test split and every external test set; ``missing`` names the runs not finished yet."""
    labels = {"test": data.test_groups} | {name: ext.groups for name, ext in data.external.items()}
    tables = []
    for test_set, groups_of_set in labels.items():
        groups: dict[tuple[str, str], list[tuple[pd.DataFrame, RunPredictions]]] = {}
        for plan in plans:
            run = _read_run(plan, data, test_set)
            if run is not None:
                groups.setdefault((plan.regime.name, plan.source or ""), []).append((plan.train, run))
        tables.append(summarise_test_set(test_set, groups, groups_of_set, data.classes, config))
    external = {name: {"images": len(ext.frame), "removed": ext.removed, "absent_subgroups": ext.absent_subgroups}
                for name, ext in data.external.items()}
    return write_summary_files(root, tables, config, external, missing or [])
