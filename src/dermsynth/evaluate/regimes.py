"""Training-set regimes: how real and synthetic images are mixed.

Let the real training set have N images, N_c in class c.

- ``real``: the N real images (baseline).
- ``hybrid:f`` (0 <= f <= 1): still N images, of which S = round(f * N) (halves round up) are synthetic. S is
  split over the classes in proportion to N_c (largest remainder), and in each class that many real images are
  replaced by synthetic ones, so the class mix is unchanged and the synthetic fraction is exactly S / N.
  ``hybrid:0.5`` is the reference study's 50/50 mix at equal training-set size.
- ``add:n``: the N real images plus n synthetic ones, split over the classes in proportion to N_c
  (``class_mix: proportional``), or given to the smallest classes first until the classes are as equal as
  possible (``class_mix: balanced``).
- ``synthetic``: the same as ``hybrid:1``: N synthetic images with the real class mix, tested on real images.
- ``augment:f`` and ``augment-add:n``: as ``hybrid:f`` and ``add:n``, with strongly augmented copies of the run's
  own real training images (evaluate/augment.py) in place of synthetic ones: the classical-augmentation control.

For a given seed, which real images are replaced and which synthetic images are drawn come from one
permutation per class, so the sets are nested: hybrid:0.25 replaces a subset of what hybrid:0.5 replaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from dermsynth.errors import DermsynthError

Kind = Literal["real", "hybrid", "add", "synthetic", "augment", "augment-add"]
ClassMix = Literal["proportional", "balanced"]


# Every regime's written form (parse_regime reads them; the CLI's help and the errors list them from here).
REGIME_FORMS: dict[Kind, str] = {
    "real": "real", "hybrid": "hybrid:<fraction>", "add": "add:<n>", "synthetic": "synthetic",
    "augment": "augment:<fraction>", "augment-add": "augment-add:<n>",
}


def regimes_help() -> str:
    return ", ".join(REGIME_FORMS.values())


@dataclass(frozen=True)
class Regime:
    kind: Kind
    amount: float = 0.0  # f for hybrid, n for add

    @property
    def name(self) -> str:
        if self.kind in ("hybrid", "augment"):
            return f"{self.kind}:{self.amount:g}"
        if self.kind in ("add", "augment-add"):
            return f"{self.kind}:{int(self.amount)}"
        return self.kind

    @property
    def adds(self) -> bool:
        """Whether the made images come on top of all real ones (else they replace some)."""
        return self.kind in ("add", "augment-add")

    @property
    def slug(self) -> str:
        """Folder-safe name: ``hybrid-0.5``."""
        return self.name.replace(":", "-")

    @property
    def uses_synthetic(self) -> bool:
        return self.kind in ("hybrid", "add", "synthetic") and not (self.kind == "hybrid" and self.amount == 0)

    @property
    def uses_augmented(self) -> bool:
        return self.kind in ("augment", "augment-add") and self.amount > 0


def parse_regime(text: str) -> Regime:
    """``real``, ``hybrid`` (= hybrid:0.5), ``hybrid:<f>``, ``add:<n>``, ``synthetic``, or the augmentation
    controls ``augment`` (= augment:0.5), ``augment:<f>`` and ``augment-add:<n>``."""
    kind, _, value = text.strip().lower().partition(":")
    if kind in ("real", "synthetic") and not value:
        return Regime(kind)
    if kind in ("hybrid", "augment"):
        try:
            fraction = float(value or 0.5)
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            raise DermsynthError(f"regime {text!r}: the {'synthetic' if kind == 'hybrid' else 'augmented'} "
                                 "fraction must be a number in [0, 1]")
        return Regime(kind, fraction)  # type: ignore[arg-type]
    if kind in ("add", "augment-add"):
        if not value.isdigit() or int(value) < 1:
            raise DermsynthError(f"regime {text!r}: {kind}:<n> needs a positive whole number of images")
        return Regime(kind, int(value))  # type: ignore[arg-type]
    raise DermsynthError(f"unknown regime {text!r}: use one of {regimes_help()}")


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder; ties to the first class)."""
    weight_sum = sum(weights)
    if total == 0 or weight_sum == 0:
        return [0] * len(weights)
    quotas = [total * w / weight_sum for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def fill_smallest(total: int, sizes: list[int]) -> list[int]:
    """Give ``total`` extra items to the smallest classes first (water-filling); ties to the first class."""
    added = [0] * len(sizes)
    for _ in range(total):
        current = [s + a for s, a in zip(sizes, added, strict=True)]
        added[current.index(min(current))] += 1
    return added


def synthetic_counts(regime: Regime, real_counts: list[int], class_mix: ClassMix = "proportional") -> list[int]:
    """Synthetic images per class for ``regime`` given the real class sizes."""
    if regime.kind == "real":
        return [0] * len(real_counts)
    if regime.adds:
        total = int(regime.amount)
        return fill_smallest(total, real_counts) if class_mix == "balanced" else apportion(total, real_counts)
    fraction = 1.0 if regime.kind == "synthetic" else regime.amount
    return apportion(round_half_up(fraction * sum(real_counts)), real_counts)


def compose(regime: Regime, real: pd.DataFrame, pool: pd.DataFrame | None, classes: list[str], seed: int,
            class_mix: ClassMix = "proportional") -> pd.DataFrame:
    """The training table of ``regime``: rows of ``real`` and of the synthetic ``pool`` (same columns)."""
    real_counts = [int((real["target"] == c).sum()) for c in range(len(classes))]
    wanted = synthetic_counts(regime, real_counts, class_mix)
    if sum(wanted) and pool is None:
        raise DermsynthError(f"regime {regime.name} needs a synthetic folder (--synthetic)")
    made, have = ("augmented", "there are") if regime.uses_augmented else ("synthetic", "the synthetic folder has")
    rng = np.random.default_rng(seed)
    parts = []
    for c, name in enumerate(classes):
        real_c = real[real["target"] == c]
        real_order = rng.permutation(len(real_c))
        keep = real_c if regime.adds else real_c.iloc[np.sort(real_order[wanted[c]:])]
        parts.append(keep)
        if pool is None:
            continue
        pool_c = pool[pool["target"] == c]
        pool_order = rng.permutation(len(pool_c))
        if wanted[c] > len(pool_c):
            raise DermsynthError(f"regime {regime.name} needs {wanted[c]} {made} {name!r} images, "
                                 f"but {have} {len(pool_c)}")
        parts.append(pool_c.iloc[np.sort(pool_order[: wanted[c]])])
    return pd.concat(parts).reset_index(drop=True)


def augmented_pool(regime: Regime, real: pd.DataFrame, classes: list[str], seed: int,
                   class_mix: ClassMix = "proportional") -> pd.DataFrame:
    """Rows for enough augmented copies of ``real`` that :func:`compose` can draw ``regime``'s count in every
    class. ``path`` is the key the copy is kept under in memory (``augment:<seed>:<image id>:<k>``);
    ``source_path`` is the real image it is made from; ``group`` stays the source's patient/lesion."""
    real_counts = [int((real["target"] == c).sum()) for c in range(len(classes))]
    wanted = synthetic_counts(regime, real_counts, class_mix)
    copies = max((math.ceil(w / n) for w, n in zip(wanted, real_counts, strict=True) if n), default=0)
    rows = [{"image_id": f"aug:{row.image_id}:{k}", "path": f"augment:{seed}:{row.image_id}:{k}",
             "target": row.target, "group": row.group, "synthetic": True, "source_path": row.path}
            for k in range(copies) for row in real.itertuples()]
    return pd.DataFrame(rows, columns=[*real.columns, "source_path"])


def augmentation_control(regime: Regime) -> str | None:
    """The augmentation regime a synthetic one is judged against: the same count of made images, by a generator
    or by cheap augmentation (hybrid:f -> augment:f, add:n -> augment-add:n, synthetic -> augment:1)."""
    if regime.kind == "hybrid" and regime.uses_synthetic:
        return Regime("augment", regime.amount).name
    if regime.kind == "synthetic":
        return Regime("augment", 1.0).name
    if regime.kind == "add":
        return Regime("augment-add", regime.amount).name
    return None
