"""`dermsynth tune-guidance`: pick classifier-free guidance per class on the val split, before the test split is
ever looked at.

For each guidance value the model makes the same seeds of every class (so the sets differ by guidance only);
each set is compared with the real val images of its class in the audit's feature space: Fréchet distance, and
precision, recall and coverage (Naeem et al.). The value with the lowest Fréchet distance wins per class, since
FD weighs fidelity and diversity together (precision alone rewards high guidance, recall and coverage low). The
audit then reports the chosen setting on the test split, which the choice never saw.

Output (``out``): ``guidance-<value>/`` (the generated folders, reused by a rerun), ``tune.csv`` (class, value,
fd, precision, recall, coverage, images), ``tune.json`` (the same, the choice, and the `generate` option that applies
it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermsynth.audit.features import FeatureSpace, named_space, trained_classifier_space
from dermsynth.audit.fidelity import fid, prdc
from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import load_image
from dermsynth.diffusion.families import read_model_info
from dermsynth.diffusion.generate import generate
from dermsynth.errors import DermsynthError
from dermsynth.progress import console, track
from dermsynth.utils import ensure_writable_dir, relative_path, write_csv_atomic, write_json_atomic

DEFAULT_VALUES = (1.0, 1.5, 2.0, 3.0)
FEATURE_EPOCHS = 8  # as the audit's default feature network (AuditConfig.classifier_epochs)


def tune_guidance(model: str | Path, data: str | Path, out: str | Path, values: tuple[float, ...] = DEFAULT_VALUES,
                  per_class: int = 100, features: str = "classifier", seed: int = 0, device: str = "auto",
                  progress: bool = True) -> dict[str, Any]:
    """Generate ``per_class`` images per class at each guidance in ``values``, score them against the val split of
    the prepared dataset ``data`` per class, and return (and write) the choice."""
    values = tuple(sorted({float(v) for v in values}))
    if not values or any(not 0 <= v < float("inf") for v in values):
        raise DermsynthError("tune-guidance: --values takes guidance values of 0 or more, e.g. 1,1.5,2,3")
    if per_class < 6:
        raise DermsynthError(f"tune-guidance: --per-class must be 6 or more (got {per_class}): precision and "
                             "coverage use 5 nearest neighbours")
    _check_features(features)
    model, out = Path(model), Path(out)
    info = read_model_info(model)
    prepared = load_prepared(data)
    missing = sorted(set(info["classes"]) - set(prepared.classes))
    if missing:
        raise DermsynthError(f"{data}: has no class {', '.join(missing)} of the model; give the dataset it was "
                             "trained on")
    size = int(info["image_size"])
    val = _real_split(prepared, "val", size, progress)
    if val.empty:
        raise DermsynthError(f"{data}: the val split is empty; guidance is tuned on it, not on the test split")
    counts = val["label"].value_counts()
    short = [label for label in info["classes"] if counts.get(label, 0) < 6]
    if short:
        raise DermsynthError(f"{data}: the val split holds {counts.get(short[0], 0)} images of {short[0]}; tuning "
                             "needs at least 6 per class (the distances use 5 nearest neighbours)")
    ensure_writable_dir(out)
    space = _feature_space(features, prepared, size, out, seed, device, progress)
    real_features = space(np.stack(val["image"].to_list()))
    rows = []
    for value in values:
        folder = out / f"guidance-{value:g}"
        made = generate(model, folder, per_class=per_class, guidance=value, seed=seed, device=device,
                        progress=progress).manifest
        images = np.stack([load_image(folder / path, size) for path in made["path"]])
        fake_features = space(images)
        for label in info["classes"]:
            real = real_features[(val["label"] == label).to_numpy()]
            fake = fake_features[(made["label"] == label).to_numpy()]
            scores = prdc(real, fake)
            rows.append({"class": label, "guidance": value, "fd": round(fid(real, fake), 4),
                         **{k: round(scores[k], 4) for k in ("precision", "recall", "coverage")},
                         "images": len(fake), "real_images": len(real)})
    table = pd.DataFrame(rows)
    chosen = {label: float(group.sort_values(["fd", "guidance"]).iloc[0]["guidance"])
              for label, group in table.groupby("class", sort=False)}
    record = {"model": relative_path(model, out), "prepared": relative_path(prepared.root, out), "split": "val",
              "values": list(values), "per_class": per_class, "seed": seed, "features": space.description,
              "rule": "lowest Fréchet distance to the class's real val images, per class", "chosen": chosen,
              "generate_option": "--guidance " + ",".join(f"{label}={value:g}" for label, value in chosen.items()),
              "scores": rows}
    write_csv_atomic(out / "tune.csv", table)
    write_json_atomic(out / "tune.json", record)
    return record


def _check_features(features: str) -> None:
    """Refuse a bad --features before any image is loaded."""
    if features.startswith("classifier:"):
        path = Path(features.split(":", 1)[1])
        if not (path / "config.json").is_file():
            raise DermsynthError(f"--features: no saved classifier in {path} (an audit folder's feature-classifier*)")
    elif features != "classifier":
        raise DermsynthError(f"--features takes classifier or classifier:PATH (got {features!r})")


def _real_split(prepared: Any, split: str, size: int, progress: bool) -> pd.DataFrame:
    frame = prepared.split(split)
    paths = prepared.paths(frame)
    images = [load_image(path, size) for path in track(paths, len(paths), f"load {split}", progress)]
    return pd.DataFrame({"label": frame["label"].to_numpy(), "image": images})


def _feature_space(features: str, prepared: Any, size: int, out: Path, seed: int, device: str,
                   progress: bool) -> FeatureSpace:
    """The audit's feature CNN trained on the train split (cached in ``out``), or a saved one (classifier:PATH)."""
    from dermsynth.utils import pick_device

    if features.startswith("classifier:"):
        return named_space(features, device)
    train = prepared.split("train")
    val = prepared.split("val")
    if progress:
        console.print("training the feature network on the train split (once; kept in the output folder)")
    load = [load_image(p, size) for p in prepared.paths(train)], [load_image(p, size) for p in prepared.paths(val)]
    return trained_classifier_space(np.stack(load[0]), train["target"].to_numpy(), np.stack(load[1]),
                                    val["target"].to_numpy(), prepared.classes, out / "feature-classifier",
                                    FEATURE_EPOCHS, seed, pick_device(device))
