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
- The controls ``<method>:f`` and ``<method>-add:n``: as ``hybrid:f`` and ``add:n``, with copies made from the
  run's own real training images in place of synthetic ones (evaluate/controls.py), so that they never see a
  val/test image and keep each source image's patient group. ``method`` says how a copy is made:

  - ``augment``: strong classical augmentation (evaluate/augment.py);
  - ``lowpass``: blurred to the synthetic set's measured sharpness and colour-matched to its CIELAB statistics
    (the generator's image statistics on real content); run once per synthetic folder, as ``hybrid`` is;
  - ``reconstruct``: the image passed through the generator's autoencoder (``reconstruction:``, a folder from
    ``dermsynth reconstruct --split train --model-sample``): real content, the decoder's image statistics;
  - ``mixup``: a same-class mix ``lam * a + (1 - lam) * b`` of two real training images (class-mean control).

For a given seed, which real images are replaced and which synthetic images are drawn come from one
permutation per class, so the sets are nested: hybrid:0.25 replaces a subset of what hybrid:0.5 replaces.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from dermsynth.errors import DermsynthError

Kind = Literal["real", "hybrid", "add", "synthetic", "augment", "augment-add", "lowpass", "lowpass-add",
               "reconstruct", "reconstruct-add", "mixup", "mixup-add"]
ClassMix = Literal["proportional", "balanced"]

# The control methods: copies of the run's own real training images, made on the fly (evaluate/controls.py).
CONTROL_METHODS = ("augment", "lowpass", "reconstruct", "mixup")
# The image-id prefix of a control's copies in train_images.csv (augment's predates the others).
COPY_PREFIX = {"augment": "aug", "lowpass": "lowpass", "reconstruct": "rec", "mixup": "mix"}

# Every regime's written form (parse_regime reads them; the CLI's help and the errors list them from here).
REGIME_FORMS: dict[Kind, str] = {
    "real": "real", "hybrid": "hybrid:<fraction>", "add": "add:<n>", "synthetic": "synthetic",
    **{method: f"{method}:<fraction>" for method in CONTROL_METHODS},  # type: ignore[dict-item]
    **{f"{method}-add": f"{method}-add:<n>" for method in CONTROL_METHODS},  # type: ignore[dict-item]
}


def regimes_help() -> str:
    return ", ".join(REGIME_FORMS.values())


@dataclass(frozen=True)
class Regime:
    kind: Kind
    amount: float = 0.0  # f for hybrid, n for add

    @property
    def name(self) -> str:
        if self.kind == "hybrid" or self.kind in CONTROL_METHODS:
            return f"{self.kind}:{self.amount:g}"
        if self.adds:
            return f"{self.kind}:{int(self.amount)}"
        return self.kind

    @property
    def adds(self) -> bool:
        """Whether the made images come on top of all real ones (else they replace some)."""
        return self.kind == "add" or self.kind.endswith("-add")

    @property
    def method(self) -> str | None:
        """The control method (augment, lowpass, reconstruct, mixup), or None for a real/synthetic regime."""
        method = self.kind.removesuffix("-add")
        return method if method in CONTROL_METHODS else None

    @property
    def slug(self) -> str:
        """Folder-safe name: ``hybrid-0.5``."""
        return self.name.replace(":", "-")

    @property
    def uses_synthetic(self) -> bool:
        return self.kind in ("hybrid", "add", "synthetic") and not (self.kind == "hybrid" and self.amount == 0)

    @property
    def is_control(self) -> bool:
        """Whether it trains on copies made from the run's own real images (and on at least one)."""
        return self.method is not None and self.amount > 0

    @property
    def per_source(self) -> bool:
        """Runs once per synthetic folder: it trains on that folder's images, or (lowpass) on its statistics."""
        return self.uses_synthetic or (self.method == "lowpass" and self.amount > 0)


def parse_regime(text: str) -> Regime:
    """``real``, ``hybrid`` (= hybrid:0.5), ``hybrid:<f>``, ``add:<n>``, ``synthetic``, or a control
    ``<method>`` (= <method>:0.5), ``<method>:<f>`` or ``<method>-add:<n>`` for a method of CONTROL_METHODS."""
    kind, _, value = text.strip().lower().partition(":")
    if kind in ("real", "synthetic") and not value:
        return Regime(kind)
    if kind == "hybrid" or kind in CONTROL_METHODS:
        try:
            fraction = float(value or 0.5)
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            raise DermsynthError(f"regime {text!r}: the {'synthetic' if kind == 'hybrid' else 'made'} "
                                 "fraction must be a number in [0, 1]")
        return Regime(kind, fraction)  # type: ignore[arg-type]
    if kind == "add" or kind.removesuffix("-add") in CONTROL_METHODS:
        if not value.isdigit() or int(value) < 1:
            raise DermsynthError(f"regime {text!r}: {kind}:<n> needs a positive whole number of images")
        return Regime(kind, int(value))  # type: ignore[arg-type]
    raise DermsynthError(f"unknown regime {text!r}: use one of {regimes_help()}")


def copy_seed(seed: int, image_id: str, copy: int) -> int:
    """A stable 63-bit seed for copy ``copy`` of ``image_id`` in a run of ``seed`` (every control's copies)."""
    digest = hashlib.sha256(f"{seed}|{image_id}|{copy}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
    made, have = (f"{regime.method} copies of", "there are") if regime.is_control else \
        ("synthetic", "the synthetic folder has")
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


def control_pool(regime: Regime, real: pd.DataFrame, classes: list[str], seed: int,
                 class_mix: ClassMix = "proportional", tag: str = "") -> pd.DataFrame:
    """Rows for enough copies of ``real`` (made by ``regime.method``) that :func:`compose` can draw ``regime``'s
    count in every class. ``path`` is the key the copy is kept under in memory; ``source_path`` is the real image
    it is made from (``partner_path`` the second one, for mixup: another image of the same class in ``real``);
    ``copy`` is k for the k-th copy of an image and ``copy_seed`` its seed; ``group`` stays the source's
    patient/lesion. ``tag`` (the synthetic folder whose statistics a lowpass copy takes) keeps keys apart."""
    method = regime.method
    if method is None:
        raise ValueError(f"{regime.name} makes no copies")
    real_counts = [int((real["target"] == c).sum()) for c in range(len(classes))]
    wanted = synthetic_counts(regime, real_counts, class_mix)
    copies = max((math.ceil(w / n) for w, n in zip(wanted, real_counts, strict=True) if n), default=0)
    by_class = {c: real.loc[real["target"] == c, "path"].tolist() for c in range(len(classes))}
    rows = []
    for k in range(copies):
        for row in real.itertuples():
            made_seed = copy_seed(seed, row.image_id, k)
            rows.append({"image_id": f"{COPY_PREFIX[method]}:{row.image_id}:{k}",
                         "path": f"{method}:{tag}:{seed}:{row.image_id}:{k}", "target": row.target,
                         "group": row.group, "synthetic": True, "method": method, "source_path": row.path,
                         "partner_path": _partner(by_class[row.target], row.path, made_seed) if method == "mixup"
                         else None, "copy": k, "copy_seed": made_seed})
    extra = ["method", "source_path", "partner_path", "copy", "copy_seed"]
    return pd.DataFrame(rows, columns=[*real.columns, *extra])


def _partner(paths: list[str], path: str, seed: int) -> str:
    """Another image of the same class, chosen by ``seed`` (the image itself when it is its class's only one)."""
    others = [p for p in paths if p != path]
    return others[seed % len(others)] if others else path


def controls_for(regime: Regime) -> list[str]:
    """The control regimes a synthetic one is judged against: the same count of made images, made from the run's
    own real images (hybrid:f -> <method>:f, add:n -> <method>-add:n, synthetic -> <method>:1)."""
    if regime.kind == "hybrid" and regime.uses_synthetic:
        return [Regime(m, regime.amount).name for m in CONTROL_METHODS]  # type: ignore[arg-type]
    if regime.kind == "synthetic":
        return [Regime(m, 1.0).name for m in CONTROL_METHODS]  # type: ignore[arg-type]
    if regime.kind == "add":
        return [Regime(f"{m}-add", regime.amount).name for m in CONTROL_METHODS]  # type: ignore[arg-type]
    return []
