"""Where the shift goes: does a synthetic set move the training distribution towards an external site, or away?

A classifier trained on one collection and tested on another meets a *domain shift*: the other site's images
differ in colour, sharpness, framing, lesion size. Mixing synthetic images into the training set changes the
training distribution too. If the change points the way the site differs, the mix is nearer the site and the
classifier may transfer better there; if it points elsewhere, the mix is further from the site.

For each class and each interpretable statistic of the domain gap (:data:`dermsynth.audit.domain_gap.STATISTICS`,
measured exactly as the audit measures them, at one common image size), this module compares three sets: the
real training sample, the synthetic set, and each external site. Standardised differences (Cohen's d with the
pooled sd of the two sets):

- ``d_site``: site - training (how the site differs from what a real-only classifier learns from);
- ``d_synthetic``: synthetic - training (which way the synthetic images pull);
- ``d_site_vs_mix``: site - the training mix with a fraction ``f`` of synthetic images (``hybrid:f``), whose
  mean and variance are the mixture's: m = (1 - f) m_t + f m_s, v = (1 - f) v_t + f v_s + f (1 - f)(m_t - m_s)^2.

Per site and class, the *distance* of a set from the site is the root mean square of the d's over the statistics
(every statistic weighted alike; the lesion-found rate is left out, as its d is not on the same scale), and a
site's distance is the mean over classes. The rule this offers a user before trusting synthetic data for a new
site: **the mix moves towards the site when distance(site, mix) < distance(site, training)**, and the margin says
by how much. Whether that predicts the sign of the classifier's gain is an empirical question, answered per
site in docs/validation.md; a statistic list cannot see every cause (new lesion content, label noise), and
distances over hand-picked statistics weight them by choice.

The same question in a learned feature space (``features``: a saved classifier, for instance validate's real-only
classifier, or a pretrained backbone): per class, the Fréchet distance of the site's features from the training
images' Gaussian and from the mixture's (whose mean and covariance follow from the two sets' exactly, as above),
and the margin FD(site, training) - FD(site, mix), also relative to FD(site, training). The features see what
the statistics do not (texture, structures a classifier uses), at the price of a scale that belongs to the space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.audit.domain_gap import STATISTICS

SHIFT_STATISTICS = tuple(name for name in STATISTICS if name != "lesion_found")
MATERIAL_SITE_D = 0.5  # the site differs from training by at least a "medium" effect on this statistic ...
MOVE_D = 0.1           # ... and the mix changes |d| by at least this much: "towards" or "away"


@dataclass(frozen=True)
class Moments:
    mean: float
    var: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        values = values[np.isfinite(values)]
        if len(values) < 2:
            return cls(math.nan, math.nan, len(values))
        return cls(float(values.mean()), float(values.var(ddof=1)), len(values))

    def mixed(self, other: Moments, fraction: float) -> Moments:
        """The mixture with ``fraction`` of ``other`` (its exact mean and variance)."""
        f = fraction
        mean = (1 - f) * self.mean + f * other.mean
        var = (1 - f) * self.var + f * other.var + f * (1 - f) * (self.mean - other.mean) ** 2
        return Moments(mean, var, self.n + other.n)


def standardised_difference(a: Moments, b: Moments) -> float:
    """(mean a - mean b) / sqrt of the average of the two variances; NaN where either is undefined."""
    pooled = math.sqrt((a.var + b.var) / 2) if math.isfinite(a.var) and math.isfinite(b.var) else math.nan
    if not math.isfinite(pooled):
        return math.nan
    scale = max(1.0, abs(a.mean), abs(b.mean))
    if pooled <= 1e-9 * scale:
        return 0.0 if abs(a.mean - b.mean) <= 1e-9 * scale else math.copysign(math.inf, a.mean - b.mean)
    return (a.mean - b.mean) / pooled


@dataclass(frozen=True)
class ShiftRow:
    site: str
    class_name: str
    statistic: str
    train_mean: float
    synthetic_mean: float
    site_mean: float
    d_site: float
    d_synthetic: float
    d_site_vs_mix: float
    d_site_vs_synthetic: float

    @property
    def moves(self) -> str:
        """towards / away (the mix is nearer to / further from the site on a statistic where it differs), or ''."""
        if not (abs(self.d_site) >= MATERIAL_SITE_D and math.isfinite(self.d_site_vs_mix)):
            return ""
        change = abs(self.d_site_vs_mix) - abs(self.d_site)
        return "towards" if change <= -MOVE_D else "away" if change >= MOVE_D else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"moves": self.moves}


def _rms(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.sqrt(sum(v * v for v in finite) / len(finite)) if finite else math.nan


def _class_rows(site: str, class_name: str, train: pd.DataFrame, synthetic: pd.DataFrame, external: pd.DataFrame,
                fraction: float) -> list[ShiftRow]:
    rows = []
    for name in SHIFT_STATISTICS:
        t, s, e = (Moments.of(frame[name].to_numpy(dtype=float)) for frame in (train, synthetic, external))
        rows.append(ShiftRow(site, class_name, name, t.mean, s.mean, e.mean, standardised_difference(e, t),
                             standardised_difference(s, t), standardised_difference(e, t.mixed(s, fraction)),
                             standardised_difference(e, s)))
    return rows


def _per_class(classes: list[str], parts: Callable[[int], list[Any]], measure: Callable[[str, list[Any]], dict]
               ) -> dict[str, Any]:
    """``measure(class_name, [train, synthetic, site])`` for each class that has 2+ images in every set."""
    per_class: dict[str, Any] = {}
    for target, class_name in enumerate(classes):
        sets = parts(target)
        if min(len(p) for p in sets) < 2:
            per_class[class_name] = {"images": [len(p) for p in sets], "skipped": "fewer than 2 images"}
        else:
            per_class[class_name] = measure(class_name, sets)
    return per_class


def _summary(per_class: dict[str, Any]) -> dict[str, Any]:
    """Mean distances over the measured classes, the margin (training - mix), its share of the distance from
    training, and the margin rule's guess."""
    measured = [c for c in per_class.values() if "distance_train" in c]
    summary = {key: float(np.mean([c[key] for c in measured])) if measured else math.nan
               for key in ("distance_train", "distance_mix", "distance_synthetic")}
    margin = summary["distance_train"] - summary["distance_mix"]
    return summary | {
        "margin": margin,
        "relative_margin": margin / summary["distance_train"] if summary["distance_train"] > 0 else math.nan,
        # A guess, not a test: on three sites it has not predicted the sign (docs/validation.md).
        "prediction": "" if not math.isfinite(margin) else
        "towards the site (the margin rule's guess: a gain)" if margin > 0
        else "away from the site (the margin rule's guess: a loss)"}


def _statistics_distances(site: str, fraction: float, class_name: str, parts: list[pd.DataFrame]
                          ) -> dict[str, Any]:
    """One class's rows (under ``rows``, taken out by the caller) and its RMS distances."""
    rows = _class_rows(site, class_name, *parts, fraction)
    return {"images": {"train": len(parts[0]), "synthetic": len(parts[1]), "site": len(parts[2])},
            "distance_train": _rms([r.d_site for r in rows]),
            "distance_mix": _rms([r.d_site_vs_mix for r in rows]),
            "distance_synthetic": _rms([r.d_site_vs_synthetic for r in rows]),
            "towards": [r.statistic for r in rows if r.moves == "towards"],
            "away": [r.statistic for r in rows if r.moves == "away"], "rows": rows}


def domain_shift(train: pd.DataFrame, synthetic: pd.DataFrame, sites: Mapping[str, pd.DataFrame],
                 classes: list[str], fraction: float = 0.5) -> dict[str, Any]:
    """Per site: the rows of every class and statistic, the distances and the verdict of the rule (JSON-ready).

    Each frame holds :func:`~dermsynth.audit.domain_gap.image_statistics` columns plus ``target`` (class index).
    """
    result: dict[str, Any] = {"fraction": fraction, "statistics": list(SHIFT_STATISTICS), "sites": {}}
    for site, external in sites.items():
        per_class = _per_class(classes, partial(_class_frames, (train, synthetic, external)),
                               partial(_statistics_distances, site, fraction))
        rows = [row for info in per_class.values() for row in info.pop("rows", [])]
        summary = _summary(per_class)
        result["sites"][site] = {"summary": summary, "per_class": per_class, "rows": [r.to_dict() for r in rows],
                                 "sentence": _sentence(site, summary, per_class, rows)}
    return result


def _class_frames(frames: tuple[pd.DataFrame, ...], target: int) -> list[pd.DataFrame]:
    return [frame[frame["target"] == target] for frame in frames]


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1) of (N, D) features."""
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def mixture(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], fraction: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """The exact mean and covariance of the mixture with ``fraction`` of ``b`` (Moments.mixed, in D dimensions)."""
    (mean_a, cov_a), (mean_b, cov_b), f = a, b, fraction
    gap = (mean_a - mean_b)[:, None]
    return (1 - f) * mean_a + f * mean_b, (1 - f) * cov_a + f * cov_b + f * (1 - f) * (gap @ gap.T)


def frechet(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    from dermsynth.audit.fidelity import trace_sqrt_product

    (mean_a, cov_a), (mean_b, cov_b) = a, b
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * trace_sqrt_product(cov_a, cov_b))


FeatureSet = tuple[np.ndarray, np.ndarray]  # (N, D) features, (N,) class indices


def feature_shift(train: FeatureSet, synthetic: FeatureSet, sites: Mapping[str, FeatureSet], classes: list[str],
                  fraction: float = 0.5) -> dict[str, Any]:
    """Per site: Fréchet distances from training, the hybrid mix and the synthetic set, per class and their mean,
    with the margin rule's guess in this feature space (JSON-ready)."""
    result: dict[str, Any] = {}
    for site, site_set in sites.items():
        per_class = _per_class(classes, partial(_class_features, (train, synthetic, site_set)),
                               partial(_frechet_distances, fraction))
        result[site] = {"summary": _summary(per_class), "per_class": per_class}
    return result


def _class_features(sets: tuple[FeatureSet, ...], target: int) -> list[np.ndarray]:
    return [features[targets == target] for features, targets in sets]


def _frechet_distances(fraction: float, class_name: str, parts: list[np.ndarray]) -> dict[str, float]:
    t, syn, e = (gaussian(p) for p in parts)
    return {"distance_train": frechet(e, t), "distance_synthetic": frechet(e, syn),
            "distance_mix": frechet(e, mixture(t, syn, fraction))}


def _sentence(site: str, summary: dict[str, Any], per_class: dict[str, Any], rows: list[ShiftRow]) -> str:
    if not rows:
        return f"{site}: too few images per class to compare."
    parts = [f"{site} is at distance {summary['distance_train']:.2f} from the real training images and "
             f"{summary['distance_mix']:.2f} from the mix: the synthetic images move training "
             + ("towards" if summary["margin"] > 0 else "away from") + " it"]
    for class_name, info in per_class.items():
        if "towards" not in info:
            continue
        by_stat = {r.statistic: r for r in rows if r.class_name == class_name}
        parts.append(f"{class_name}: towards on {_listed(info['towards'], by_stat)}; away on "
                     f"{_listed(info['away'], by_stat)}")
    return "; ".join(parts) + "."


def _listed(names: list[str], by_stat: dict[str, ShiftRow]) -> str:
    """The three statistics of ``names`` on which the site differs most, with their d's."""
    top = sorted(names, key=lambda n: -abs(by_stat[n].d_site))[:3]
    return ", ".join(f"{n} (site d {by_stat[n].d_site:+.1f}, mix {by_stat[n].d_site_vs_mix:+.1f})"
                     for n in top) or "none"


def shift_markdown(result: dict[str, Any]) -> str:
    """The table a reader sees first: per site, the distances and the rule's verdict; then the largest rows."""
    fraction = result["fraction"]
    lines = [f"Distances (RMS of standardised differences over {len(result['statistics'])} statistics, mean over "
             f"classes) of each external site from the real training images, the hybrid:{fraction:g} mix, and "
             "the synthetic images alone.", "",
             "| site | from training | from the mix | from synthetic | margin | the mix moves |",
             "|---|---|---|---|---|---|"]
    for site, info in result["sites"].items():
        s = info["summary"]
        lines.append(f"| {site} | {s['distance_train']:.2f} | {s['distance_mix']:.2f} | "
                     f"{s['distance_synthetic']:.2f} | {s['margin']:+.2f} | {s['prediction']} |")
    if "feature_space" in result:
        lines += ["", f"The same in a feature space ({result['feature_space']}): Fréchet distances, mean over classes; "
                  "relative margin = margin / distance from training.", "",
                  "| site | from training | from the mix | from synthetic | margin | relative | the mix moves |",
                  "|---|---|---|---|---|---|---|"]
        for site, info in result["feature_shift"].items():
            s = info["summary"]
            lines.append(f"| {site} | {s['distance_train']:.3g} | {s['distance_mix']:.3g} | "
                         f"{s['distance_synthetic']:.3g} | {s['margin']:+.3g} | {s['relative_margin']:+.1%} | "
                         f"{s['prediction']} |")
    for info in result["sites"].values():
        lines += ["", info["sentence"], "", "| class | statistic | training | synthetic | site | d site | "
                  "d synthetic | d site vs mix | moves |", "|---|---|---|---|---|---|---|---|---|"]
        rows = sorted(info["rows"], key=lambda r: -abs(r["d_site"]) if math.isfinite(r["d_site"]) else 0)
        for r in rows[:12]:
            lines.append(f"| {r['class_name']} | {r['statistic']} | {r['train_mean']:.3g} | {r['synthetic_mean']:.3g}"
                         f" | {r['site_mean']:.3g} | {r['d_site']:+.2f} | {r['d_synthetic']:+.2f} | "
                         f"{r['d_site_vs_mix']:+.2f} | {r['moves']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- from folders


def _statistics(paths: list[str], targets: np.ndarray, size: int, what: str, progress: bool) -> pd.DataFrame:
    from dermsynth.audit.domain_gap import image_statistics
    from dermsynth.data.images import ImageReadError, load_image
    from dermsynth.progress import track

    frames, kept = [], []
    for path, target in track(list(zip(paths, targets, strict=True)), len(paths), f"statistics: {what}", progress):
        try:
            frames.append(image_statistics(load_image(path, size)[None]))
            kept.append(int(target))
        except ImageReadError:
            continue  # counted: the record gives the images measured per set and class
    frame = pd.concat(frames, ignore_index=True) if frames else image_statistics(np.zeros((0, size, size, 3)))
    return frame.assign(target=kept)


def _features(paths: list[str], targets: np.ndarray, size: int, space: Any, what: str, progress: bool
              ) -> FeatureSet:
    from dermsynth.data.images import ImageReadError, load_image
    from dermsynth.progress import track

    images, kept = [], []
    for path, target in track(list(zip(paths, targets, strict=True)), len(paths), f"features: {what}", progress):
        try:
            images.append(load_image(path, size))
            kept.append(int(target))
        except ImageReadError:
            continue
    return space(np.stack(images)) if images else np.zeros((0, 0), np.float32), np.asarray(kept, dtype=np.int64)


def _capped(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """At most ``cap`` images per class (a seeded sample), so that a large set costs what a small one does."""
    if cap is None:
        return frame
    parts = [rows if len(rows) <= cap else rows.sample(n=cap, random_state=seed)
             for _, rows in frame.groupby("target", sort=True)]
    return pd.concat(parts).sort_values("path").reset_index(drop=True)


def run_domain_shift(real: str | Path, synthetic: str | Path, external: list[str | Path], out: str | Path, *,
                     size: int | None = None, real_per_class: int | None = None, subsample_seed: int = 0,
                     fraction: float = 0.5, max_per_class: int | None = 1000, seed: int = 0,
                     synthetic_preprocess: bool = True, features: str | None = None, device: str = "auto",
                     progress: bool = True) -> dict[str, Any]:
    """Measure the three sets (the real train split, or the ``real_per_class`` sample validate draws; the
    synthetic folder, brought to the real preprocessing as validate does; every image of each external prepared
    set) at ``size`` (default: the prepared size) and write ``OUT/domain_shift.json|csv|md``.

    ``features`` (``classifier:PATH`` or ``hf:ID_OR_PATH``) adds the Fréchet-distance margins in that space."""
    from dermsynth.data.dataset import load_prepared, subsample_per_class
    from dermsynth.data.synthetic_folders import comparable_folder, synthetic_frame
    from dermsynth.errors import DermsynthError
    from dermsynth.utils import ensure_writable_dir, json_safe, write_csv_atomic, write_json_atomic, write_text_atomic

    if not external:
        raise DermsynthError("domain-shift: give at least one --external prepared set")
    if not 0 < fraction <= 1:
        raise DermsynthError(f"domain-shift: --fraction must be in (0, 1] (got {fraction})")
    space = None
    if features is not None:
        from dermsynth.audit.features import named_space

        space = named_space(features, device)  # before any measuring: a wrong path fails at once
    out = ensure_writable_dir(out)
    prepared = load_prepared(real)
    classes, size = prepared.classes, size or prepared.image_size
    train = prepared.split("train")
    if real_per_class is not None:
        train = subsample_per_class(train, real_per_class, subsample_seed, classes)
    train = train.assign(path=[str(p) for p in prepared.paths(train)])
    folder, _ = comparable_folder(synthetic, prepared.summary, synthetic_preprocess,
                                  out / "cache" / "synthetic-preprocessed", progress)
    syn = synthetic_frame(folder, classes)
    sets = {"train": _capped(train, max_per_class, seed), "synthetic": _capped(syn, max_per_class, seed)}
    names: dict[str, str] = {}
    for path in external:
        site = load_prepared(path)
        if site.classes != classes:
            raise DermsynthError(f"{path}: its classes {site.classes} differ from the training set's {classes}")
        name = Path(path).name if Path(path).name not in names.values() else str(path)
        names[str(path)] = name
        meta = site.metadata.assign(path=[str(p) for p in site.paths(site.metadata)])
        sets[f"site:{name}"] = _capped(meta, max_per_class, seed)
    measured = {key: _statistics(frame["path"].tolist(), frame["target"].to_numpy(), size, key, progress)
                for key, frame in sets.items()}
    result = domain_shift(measured["train"], measured["synthetic"],
                          {key.removeprefix("site:"): frame for key, frame in measured.items()
                           if key.startswith("site:")}, classes, fraction)
    result |= {"synthetic": Path(synthetic).name, "image_size": size, "real_per_class": real_per_class,
               "subsample_seed": subsample_seed if real_per_class is not None else None,
               "measured": {key: {classes[t]: int(n) for t, n in frame["target"].value_counts().sort_index().items()}
                            for key, frame in measured.items()}}
    if space is not None:
        embedded = {key: _features(frame["path"].tolist(), frame["target"].to_numpy(), size, space, key, progress)
                    for key, frame in sets.items()}
        result |= {"feature_space": space.description, "feature_shift": feature_shift(
            embedded["train"], embedded["synthetic"], {key.removeprefix("site:"): value for key, value
                                                       in embedded.items() if key.startswith("site:")},
            classes, fraction)}
    rows = pd.DataFrame([row for site in result["sites"].values() for row in site["rows"]])
    write_csv_atomic(out / "domain_shift.csv", rows)
    write_text_atomic(out / "domain_shift.md", shift_markdown(result))
    write_json_atomic(out / "domain_shift.json", json_safe(result))
    return result
