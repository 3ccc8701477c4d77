"""Tiny stand-ins for what the shipped configs need on a user's machine: datasets in each reader's layout (ISIC 2020
with its real ~98/2 class imbalance), a tiny Stable Diffusion folder and a tiny pretrained ViT. Made on the fly; no
external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.conftest import lesion_image

# ISIC 2020's shape: 2 % malignant, each of another patient, so that the grouped split gives train, val and test
# some; enough benign images that a regime adding 1,000 images to the minority class stays within the majority.
ISIC_IMAGES = 2000
ISIC_MALIGNANT = 40


def isic2020_standin(root: Path, size: tuple[int, int] = (48, 40)) -> Path:
    """The ISIC 2020 layout (GroundTruth v2 CSV + train/*.jpg): 2,000 images of 1,000 patients, 40 malignant."""
    rows = []
    malignant_at = set(np.linspace(0, ISIC_IMAGES - 1, ISIC_MALIGNANT).astype(int) // 2 * 2)
    for i in range(ISIC_IMAGES):
        malignant = i in malignant_at
        name = f"ISIC_{2000000 + i}"
        path = root / "train" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lesion_image(9000 + i, size, malignant)).save(path, quality=90)
        rows.append({"image_name": name, "patient_id": f"IP_{i // 2:05d}", "lesion_id": f"IL_{i}",
                     "sex": ["male", "female"][i % 2], "age_approx": str(30 + 5 * (i % 9)),
                     "anatom_site_general_challenge": ["torso", "lower extremity", "head/neck"][i % 3],
                     "diagnosis": "melanoma" if malignant else "nevus",
                     "benign_malignant": "malignant" if malignant else "benign", "target": str(int(malignant))})
    pd.DataFrame(rows).to_csv(root / "ISIC_2020_Training_GroundTruth_v2.csv", index=False)
    return root


def ham10000_standin(root: Path, n: int = 80, size: tuple[int, int] = (48, 40)) -> Path:
    """The HAM10000 layout (HAM10000_metadata.csv + images/): two images per lesion, half of them malignant (the
    shipped HAM10000 studies take equal real samples per class, real_per_class, so the stand-in's classes match)."""
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dx = ["mel", "nv", "bcc", "bkl"][(i // 2) % 4]
        image_id = f"ISIC_{3100000 + i}"
        Image.fromarray(lesion_image(7000 + i, size, dx == "mel")).save(root / "images" / f"{image_id}.jpg")
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                     "age": float(25 + 7 * (i % 8)), "sex": ["male", "female"][i % 2],
                     "localization": ["back", "face", "lower extremity"][i % 3]})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def archive_standin(root: Path, n: int = 24, size: tuple[int, int] = (48, 40)) -> Path:
    """The ISIC Archive layout (json_meta/*.json + images/), legacy records."""
    import json

    (root / "json_meta").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for i in range(n):
        name = f"ISIC_{3200000 + i}"
        malignant = i % 3 == 0
        Image.fromarray(lesion_image(6000 + i, size, malignant)).save(root / "images" / f"{name}.jpg")
        record = {"name": name, "meta": {"clinical": {"benign_malignant": "malignant" if malignant else "benign",
                                                      "diagnosis": "melanoma" if malignant else "nevus",
                                                      "age_approx": 50, "sex": "female"}}}
        (root / "json_meta" / f"{name}.json").write_text(json.dumps(record))
    return root


def folder_standin(root: Path, per_class: int = 12, size: tuple[int, int] = (48, 40)) -> Path:
    """A class-per-folder tree: root/benign/*.jpg, root/malignant/*.jpg."""
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = lesion_image(5000 + i + 100 * (label == "malignant"), size, label == "malignant")
            Image.fromarray(image).save(root / label / f"{label}_{i:03d}.jpg")
    return root


def tiny_vit(folder: Path, classes: list[str], image_size: int = 32) -> Path:
    """A pretrained-ViT stand-in: a tiny ViTForImageClassification with its image processor, saved as a folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=len(classes),
                       id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
