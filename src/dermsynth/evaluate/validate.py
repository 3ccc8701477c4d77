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
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.config import validate_config
from dermsynth.data.dataset import PreparedDataset, load_prepared, subsample_per_class
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.augment import RECIPE as AUGMENT_RECIPE
from dermsynth.evaluate.augment import copy_seed, strong_augment
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.datasets import (
    ImageBank,
    check_no_copies,
    check_no_leak,
    real_frame,
    synthetic_frame,
)
from dermsynth.evaluate.metrics import METRICS, youden_threshold
from dermsynth.evaluate.models import is_pretrained
from dermsynth.evaluate.regimes import Regime, augmentation_control, augmented_pool, compose, parse_regime
from dermsynth.evaluate.runs import READ_ERRORS, read_predictions, read_run
from dermsynth.evaluate.stats import RunPredictions, compare, image_intervals, summarize
from dermsynth.evaluate.subgroups import GroupRule, gap_rows, subgroup_labels, subgroup_rows
from dermsynth.progress import console, make_progress
from dermsynth.utils import (
    ensure_writable_dir,
    pick_device,
    seed_everything,
    sha256_file,
    stable_hash,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

# Settings that do not change a run's result (or are handled per run) stay out of its settings hash.
NOT_IN_RUN_HASH = {"synthetic", "regimes", "seeds", "first_seed", "bootstrap", "confidence", "save_checkpoint",
                   "device", "threads", "subgroup_min_images", "subgroup_min_per_class"}
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "pauc_sens80", "sensitivity", "specificity", "f1")


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


@dataclass
class RunPlan:
    regime: Regime
    source: str | None
    seed: int
    folder: Path
    train: pd.DataFrame
    settings_hash: str

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
    with torch_threads(config.threads):
        return _validate(config, Path(out), progress)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _validate(config: ValidateConfig, out: Path, progress: bool) -> ValidateResult:
    from dermsynth.evaluate.classifiers import build_classifier

    started = time.monotonic()
    root = ensure_writable_dir(out / "validation")
    device = pick_device(config.device)
    prepared = load_prepared(config.real)
    size = config.image_size or prepared.image_size
    spec = build_classifier(config.model, prepared.classes, None if _pretrained(config) else size,
                            config.architecture).spec
    data = load_data(config, prepared, spec.size, progress)
    plans = plan_runs(config, data, root)
    _load_training_images(data, plans, progress)
    _write_truth(data, root)
    ran, skipped = [], []
    for plan in plans:
        if _finished(plan):
            skipped.append(plan.label + f" seed {plan.seed}")
            continue
        execute_run(plan, config, data, device, progress)
        ran.append(plan.label + f" seed {plan.seed}")
    summary, comparisons = write_summary(config, data, plans, root)
    write_json_atomic(root / "validate.json", _clean({
        "config": config.model_dump(mode="json"), "device": device, "image_size": spec.size,
        "classes": data.classes, "counts": _counts(data), "fingerprints": data.fingerprints,
        "unreadable_synthetic": sorted(data.bank.failed), "ran": ran, "skipped": skipped,
        "augment_recipe": AUGMENT_RECIPE.as_dict() if any(p.regime.uses_augmented for p in plans) else None,
        "seconds_this_call": round(time.monotonic() - started, 1)}))
    return ValidateResult(root, summary, comparisons, ran, skipped)


def _pretrained(config: ValidateConfig) -> bool:
    return is_pretrained(config.model)


# --------------------------------------------------------------------------- data


def load_data(config: ValidateConfig, prepared: PreparedDataset, size: int, progress: bool) -> Data:
    """Real splits (leak-checked, decoded), synthetic pools (decoded, unreadable files skipped)."""
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
    for name, folder in _source_names(config.synthetic).items():
        pool = synthetic_frame(folder, classes)
        bank.load(pool["path"].tolist(), f"loading {name}", progress)
        pool = bank.drop_unreadable(pool, str(folder))
        if pool.empty:
            raise DermsynthError(f"{folder}: none of its images could be read")
        check_no_copies(bank, pool, evaluation)
        pools[name] = pool
    fingerprints = {"real": sha256_file(Path(config.real) / "metadata.csv")[:16]}
    for name, pool in pools.items():
        fingerprints[name] = stable_hash([(p, Path(p).stat().st_size) for p in pool["path"]])
    return Data(classes, bank, frames["train"], frames["val"], frames["test"], pools, fingerprints,
                subgroup_labels(prepared.split("test")))


def _source_names(folders: list[Path]) -> dict[str, Path]:
    """Folder name per synthetic folder, made unique (``syn``, ``syn-2``) when two share a name."""
    names: dict[str, Path] = {}
    for folder in folders:
        name, n = Path(folder).name or "synthetic", 2
        while name in names:
            name, n = f"{Path(folder).name}-{n}", n + 1
        names[name] = Path(folder)
    return names


def _real_train(config: ValidateConfig, data: Data, seed: int) -> pd.DataFrame:
    if config.real_per_class is None:
        return data.train
    sample_seed = seed if config.subsample_seed is None else config.subsample_seed
    return subsample_per_class(data.train, config.real_per_class, sample_seed, data.classes)


def plan_runs(config: ValidateConfig, data: Data, root: Path) -> list[RunPlan]:
    """Every run's training table, composed (and checked) before anything trains."""
    if any(parse_regime(r).uses_synthetic for r in config.regimes) and not data.pools:
        raise DermsynthError("a regime other than 'real' needs at least one --synthetic folder")
    base = config.model_dump(mode="json", exclude=NOT_IN_RUN_HASH)
    plans = []
    for text in config.regimes:
        regime = parse_regime(text)
        sources: list[str | None] = list(data.pools) if regime.uses_synthetic else [None]
        for source in sources:
            folder_name = regime.slug + (f"@{source}" if source and len(data.pools) > 1 else "")
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                real = _real_train(config, data, seed)
                pool = data.pools.get(source) if source else None
                if regime.uses_augmented:
                    pool = augmented_pool(regime, real, data.classes, seed, config.class_mix)
                train = compose(regime, real, pool, data.classes, seed, config.class_mix)
                check_no_leak({"train": train, "val": data.val, "test": data.test})
                key = {"config": base, "regime": regime.name, "seed": seed, "real": data.fingerprints["real"],
                       "source": data.fingerprints.get(source) if source else None}
                if regime.uses_augmented:
                    key["augment"] = AUGMENT_RECIPE.as_dict()
                plans.append(RunPlan(regime, source, seed, root / folder_name / str(seed), train, stable_hash(key)))
    return plans


def _load_training_images(data: Data, plans: list[RunPlan], progress: bool) -> None:
    """The real training images of every run, and the augmented copies the augmentation controls draw."""
    frames = [p.train for p in plans]
    real = pd.concat([f[~f["synthetic"]] for f in frames]).drop_duplicates("path")
    augmented = pd.concat([f[f["path"].str.startswith("augment:")] for f in frames]).drop_duplicates("path")
    sources = pd.DataFrame({"path": augmented.get("source_path", pd.Series(dtype=str))})
    needed = pd.concat([real[["path"]], sources]).drop_duplicates("path")
    data.bank.load(needed["path"].tolist(), "loading train", progress)
    data.bank.require(needed, "real training images")
    for row in augmented.itertuples():
        _, seed, image_id = row.path.split(":", 2)
        image_id, copy = image_id.rsplit(":", 1)
        data.bank.arrays[row.path] = strong_augment(data.bank.arrays[row.source_path],
                                                    copy_seed(int(seed), image_id, int(copy)))


def _write_truth(data: Data, root: Path) -> None:
    truth = pd.DataFrame({"image": data.test["image_id"]})
    for target, name in enumerate(data.classes):
        truth[name] = (data.test["target"] == target).astype(float)
    write_csv_atomic(root / "test_truth.csv", truth)


def _counts(data: Data) -> dict[str, Any]:
    def by_class(frame: pd.DataFrame) -> dict[str, int]:
        return {name: int((frame["target"] == t).sum()) for t, name in enumerate(data.classes)}

    counts = {split: by_class(getattr(data, split)) for split in ("train", "val", "test")}
    return counts | {f"synthetic:{name}": by_class(pool) for name, pool in data.pools.items()}


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
    from dermsynth.evaluate.classifiers import build_classifier, save_classifier
    from dermsynth.evaluate.train_classifier import evaluate, fit, resolve_settings

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
        "made_by": "augmentation" if plan.regime.uses_augmented else "generator" if plan.source else None,
        "train_by_class": {name: int((train.targets == t).sum()) for t, name in enumerate(data.classes)},
        "seconds": round(result.seconds, 1), "train_images_per_second": round(result.images_per_second, 1),
        "settings": vars(settings),
    }
    write_csv_atomic(plan.folder / "history.csv", result.history)
    write_csv_atomic(plan.folder / "predictions.csv", _probability_frame(test.ids, test_probs, data.classes))
    write_csv_atomic(plan.folder / "val_predictions.csv", _probability_frame(val.ids, val_probs, data.classes))
    write_csv_atomic(plan.folder / "train_images.csv", plan.train[["image_id", "target", "synthetic"]])
    if config.save_checkpoint:
        save_classifier(classifier, plan.folder / "checkpoint")
    write_json_atomic(plan.folder / "metrics.json", _clean(metrics))
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


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- summary


def _read_run(plan: RunPlan, data: Data) -> RunPredictions | None:
    record = read_run(plan.folder, plan.settings_hash)
    if record is None:
        return None
    try:
        probs = read_predictions(record).loc[data.test["image_id"], data.classes].to_numpy(np.float64)
    except (KeyError, *READ_ERRORS):
        raise DermsynthError(f"{plan.folder / 'predictions.csv'} lacks test images or classes of this study; "
                             "delete that run folder to train it again") from None
    return RunPredictions(plan.seed, data.test["target"].to_numpy(np.int64), probs, record.metrics["threshold"])


def write_summary(config: ValidateConfig, data: Data, plans: list[RunPlan], root: Path
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv|json|md and comparisons.csv from every finished run of ``plans``."""
    groups: dict[tuple[str, str | None], list[tuple[RunPlan, RunPredictions]]] = {}
    for plan in plans:
        run = _read_run(plan, data)
        if run is not None:
            groups.setdefault((plan.regime.name, plan.source), []).append((plan, run))
    rows, comparisons = [], []
    baseline = [run for _, run in groups.get(("real", None), [])]
    for (regime, source), members in groups.items():
        runs = [run for _, run in members]
        first = members[0][0]
        rows.append({"regime": regime, "source": source or "", "seeds": len(runs),
                     "train_images": len(first.train), "train_synthetic": int(first.train["synthetic"].sum()),
                     **summarize(runs, config.bootstrap, config.confidence)})
        if regime != "real" and baseline:
            for row in compare(runs, baseline, config.bootstrap, config.confidence):
                comparisons.append({"regime": regime, "source": source or "", "baseline": "real", **row})
        control = augmentation_control(parse_regime(regime))  # diffusion images vs cheap augmentation
        for row in compare(runs, [run for _, run in groups.get((control, None), [])], config.bootstrap,
                           config.confidence):
            comparisons.append({"regime": regime, "source": source or "", "baseline": control, **row})
    summary, comparison_frame = pd.DataFrame(rows), pd.DataFrame(comparisons)
    subgroups, gaps = _subgroups(config, data, groups)
    write_csv_atomic(root / "summary.csv", summary)
    write_csv_atomic(root / "comparisons.csv", comparison_frame.drop(columns="per_seed_diff", errors="ignore"))
    write_csv_atomic(root / "subgroups.csv", pd.DataFrame(subgroups))
    write_csv_atomic(root / "subgroup_gaps.csv", pd.DataFrame(gaps))
    write_json_atomic(root / "summary.json", _clean({"regimes": rows, "comparisons": comparisons,
                                                     "subgroups": subgroups, "subgroup_gaps": gaps,
                                                     "confidence": config.confidence, "bootstrap": config.bootstrap}))
    write_text_atomic(root / "summary.md", summary_markdown(summary, comparison_frame, config.confidence)
                      + subgroup_markdown(gaps, subgroups))
    return summary, comparison_frame


def _subgroups(config: ValidateConfig, data: Data, groups: dict) -> tuple[list[dict], list[dict]]:
    """Per-subgroup metrics of every regime, and the worst-group gaps with their change from real-only."""
    rule = GroupRule(config.subgroup_min_images, config.subgroup_min_per_class)
    runs = {(regime, source or ""): [run for _, run in members] for (regime, source), members in groups.items()}
    rows = [row for (regime, source), members in runs.items()
            for row in subgroup_rows(regime, source, members, data.test_groups, data.classes, rule,
                                     config.bootstrap, config.confidence)]
    return rows, gap_rows(runs, data.test_groups, rows, config.confidence)


def subgroup_markdown(gaps: list[dict], rows: list[dict]) -> str:
    """The worst-group table: per regime and attribute, the worst and best group's AUROC and the gap."""
    if not rows:
        return ""
    small = sorted({f"{r['attribute']}={r['group']} ({r['images']})" for r in rows if r["status"] != "ok"})
    lines = ["", "Subgroups of the test split, AUROC x 100 (mean over seeds); the gap change is this regime's "
             "best-worst gap minus real-only's, mean over seeds [t-interval over seeds].", "",
             "| regime | attribute | worst group | best group | gap | gap change | reading |",
             "|---|---|---|---|---|---|---|"]
    for g in gaps:
        name = g["regime"] + (f" @{g['source']}" if g["source"] else "")
        change = "" if "gap_change" not in g else _fmt(g["gap_change"], g["gap_change_seed_ci_lo"],
                                                         g["gap_change_seed_ci_hi"], 100)
        lines.append(f"| {name} | {g['attribute']} | {g['worst_group']} {g['worst'] * 100:.1f} | {g['best_group']} "
                     f"{g['best'] * 100:.1f} | {g['gap'] * 100:.1f} | {change} | {g.get('reading', '')} |")
    if small:
        lines += ["", "Too small to report (test images): " + ", ".join(small) + "."]
    return "\n".join(lines) + "\n"


def _fmt(mean: float, lo: float, hi: float, scale: float) -> str:
    if math.isnan(mean):
        return "n/a"
    interval = "" if math.isnan(lo) else f" [{lo * scale:.1f}, {hi * scale:.1f}]"
    return f"{mean * scale:.1f}{interval}"


def summary_markdown(summary: pd.DataFrame, comparisons: pd.DataFrame, confidence: float) -> str:
    """The reference study's Table 1, extended: every metric with its two-level bootstrap interval (in %)."""
    level = f"{confidence:.0%}"
    lines = [f"Test metrics x 100, mean over seeds [{level} CI, bootstrap over seeds and test images]. "
             "pauc_sens80 x 100 ranges 0-20 (chance 2).", "",
             "| regime | seeds | train (synthetic) | " + " | ".join(TABLE_METRICS) + " |",
             "|---|---|---|" + "---|" * len(TABLE_METRICS)]
    for row in summary.to_dict("records"):
        name = row["regime"] + (f" @{row['source']}" if row["source"] else "")
        cells = [_fmt(row[f"{m}_mean"], row[f"{m}_ci_lo"], row[f"{m}_ci_hi"], 100) for m in TABLE_METRICS]
        lines.append(f"| {name} | {row['seeds']} | {row['train_images']} ({row['train_synthetic']}) | "
                     + " | ".join(cells) + " |")
    if not comparisons.empty:
        lines += ["", f"Paired difference regime - baseline (real-only, or the augmentation control with as many "
                  f"made images), x 100 (percentage points): {level} CI from the two-level "
                  "bootstrap, and the t-interval over seeds alone (with few seeds the bootstrap understates the seed "
                  "variance; trust the wider of the two).", "",
                  "| regime | baseline | metric | difference [bootstrap CI] | t-interval over seeds | p_boot "
                  "| seeds better |", "|---|---|---|---|---|---|---|"]
        for row in comparisons[comparisons["metric"].isin(TABLE_METRICS)].to_dict("records"):
            name = row["regime"] + (f" @{row['source']}" if row["source"] else "")
            seed_ci = "n/a" if math.isnan(row["seed_ci_lo"]) else \
                f"[{row['seed_ci_lo'] * 100:.1f}, {row['seed_ci_hi'] * 100:.1f}]"
            lines.append(f"| {name} | {row['baseline']} | {row['metric']} | "
                         f"{_fmt(row['diff'], row['ci_lo'], row['ci_hi'], 100)} | "
                         f"{seed_ci} | {row['p_boot']:.3f} | {row['seeds_better']}/{row['seeds']} |")
    return "\n".join(lines) + "\n"
