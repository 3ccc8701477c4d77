"""Tiny stand-in inputs for the benchmarks' ``--smoke`` modes: they check that a script still runs (seconds, no
external data); their numbers mean nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def lesion(rng: np.random.Generator, width: int, height: int, dark: bool) -> tuple[np.ndarray, np.ndarray]:
    """Skin-toned noise with one elliptical lesion; the image (HxWx3 uint8) and its mask (HxW bool)."""
    yy, xx = np.mgrid[:height, :width]
    image = np.ones((height, width, 3)) * (np.array([205, 160, 140]) + rng.normal(0, 6, 3))
    image += rng.normal(0, 4, image.shape)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.12, 0.25), height * rng.uniform(0.12, 0.25)
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    image[mask] = np.array([70, 40, 35] if dark else [120, 80, 60]) + rng.normal(0, 8, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def ham_like(root: Path, n: int = 40, size: tuple[int, int] = (200, 150)) -> Path:
    """A HAM10000-layout folder: HAM10000_metadata.csv, images/ISIC_*.jpg, masks/ISIC_*_segmentation.png;
    two images per lesion, a quarter melanoma."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        dx = "mel" if (i // 2) % 4 == 0 else "nv"
        image_id = f"ISIC_{3000000 + i}"
        image, mask = lesion(rng, *size, dark=dx == "mel")
        Image.fromarray(image).save(root / "images" / f"{image_id}.jpg", quality=92)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{image_id}_segmentation.png")
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                     "age": 45.0, "sex": "female", "localization": "back"})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def isic2020_csv(path: Path, patients: int = 600, per_patient: int = 5) -> Path:
    """An ISIC 2020 ground-truth CSV (v2 columns) without images; about 2 % of the patients' images malignant."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(patients):
        for k in range(per_patient):
            malignant = rng.random() < 0.02
            rows.append({"image_name": f"ISIC_{4000000 + p * per_patient + k}", "patient_id": f"IP_{p:05d}",
                         "lesion_id": f"IL_{p:05d}_{k}", "sex": "female", "age_approx": 50,
                         "anatom_site_general_challenge": "torso",
                         "diagnosis": "melanoma" if malignant else "nevus",
                         "benign_malignant": "malignant" if malignant else "benign", "target": int(malignant)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def sample_prepared(out: Path, size: int = 32) -> Path:
    """The embedded CC0 sample, prepared at ``size`` px."""
    from dermsynth.data.config import PrepareConfig
    from dermsynth.data.prepare import prepare

    prepare(PrepareConfig(dataset="sample", preprocess={"image_size": size}), out, progress=False)
    return out


def tiny_scratch_model(prepared: Path, out: Path, steps: int = 4) -> Path:
    """A from-scratch model trained for a few steps at the prepared size (its samples are noise)."""
    from dermsynth.diffusion.scratch.train import train

    size = int(np.asarray(Image.open(next((prepared / "images").rglob("*.png")))).shape[0])
    train(prepared, out, config={"model": {"image_size": size, "block_out_channels": [16, 32],
                                           "layers_per_block": 1, "attention_levels": [1], "attention_head_dim": 8,
                                           "norm_num_groups": 8},
                                 "batch_size": 4, "max_steps": steps, "max_minutes": None, "samples_per_class": 1,
                                 "sample_steps": 2, "threads": 1},
          progress=False)
    return out


def tiny_cascade_model(prepared: Path, out: Path, steps: int = 3) -> Path:
    """A cascade (a 2x super-resolution stage over a half-size base) trained for a few steps per stage."""
    from dermsynth.diffusion.cascade.train import train

    size = int(np.asarray(Image.open(next((prepared / "images").rglob("*.png")))).shape[0])
    base = {"model": {"image_size": size // 2, "block_out_channels": [16, 32], "layers_per_block": 1,
                      "attention_levels": [1], "attention_head_dim": 8, "norm_num_groups": 8},
            "batch_size": 4, "max_steps": steps, "samples_per_class": 1, "sample_steps": 2}
    stage = {"factor": 2, "block_out_channels": [16, 32], "norm_num_groups": 8, "crop_size": size // 2,
             "batch_size": 4, "max_steps": steps, "sample_every": 1000, "sample_steps": 2}
    train(prepared, out, "cpu-cascade-128", {"image_size": size, "base": base, "super_resolution": stage,
                                             "threads": 1}, progress=False)
    return out
