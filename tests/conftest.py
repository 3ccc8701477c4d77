"""Shared fixtures: small synthetic datasets in every supported layout, made on the fly (no external data)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def lesion_image(seed: int, size: tuple[int, int] = (96, 72), malignant: bool = False) -> np.ndarray:
    """A skin-toned background with a dark, slightly irregular lesion off-centre (HxWx3 uint8)."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    skin = np.array([205, 160, 140]) + rng.normal(0, 6, 3)
    image = np.ones((height, width, 3)) * skin + rng.normal(0, 4, (height, width, 3))
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.12, 0.2), height * rng.uniform(0.12, 0.2)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    colour = np.array([70, 40, 35]) if malignant else np.array([120, 80, 60])
    image[inside] = colour + rng.normal(0, 8, (inside.sum(), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def save_jpeg(path: Path, seed: int, malignant: bool = False, size=(96, 72)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lesion_image(seed, size, malignant)).save(path, quality=92)


@pytest.fixture
def isic2020_dir(tmp_path: Path) -> Path:
    """ISIC 2020 layout: GroundTruth CSV (v2, with lesion ids), duplicates CSV, train/ISIC_*.jpg.

    24 images of 8 patients; 6 malignant; one duplicate pair.
    """
    root = tmp_path / "isic2020"
    rows = []
    for i in range(24):
        malignant = i % 4 == 0
        name = f"ISIC_{1000000 + i}"
        save_jpeg(root / "train" / f"{name}.jpg", seed=i, malignant=malignant)
        rows.append({
            "image_name": name, "patient_id": f"IP_{i % 8}", "lesion_id": f"IL_{i}",
            "sex": ["male", "female", ""][i % 3], "age_approx": str(30 + 5 * (i % 8)) if i % 5 else "",
            "anatom_site_general_challenge": ["torso", "lower extremity", ""][i % 3],
            "diagnosis": "melanoma" if malignant else "unknown",
            "benign_malignant": "malignant" if malignant else "benign", "target": str(int(malignant)),
        })
    pd.DataFrame(rows).to_csv(root / "ISIC_2020_Training_GroundTruth_v2.csv", index=False)
    pd.DataFrame({"image_name_1": ["ISIC_1000001"], "image_name_2": ["ISIC_1000009"]}).to_csv(
        root / "ISIC_2020_Training_Duplicates.csv", index=False
    )
    return root


@pytest.fixture
def ham_dir(tmp_path: Path) -> Path:
    """HAM10000 layout: metadata CSV + images/, 30 images of 15 lesions over four diagnoses."""
    root = tmp_path / "ham"
    dxs = ["nv", "mel", "bkl", "bcc"]
    rows = []
    for i in range(30):
        dx = dxs[(i // 2) % 4]
        image_id = f"ISIC_{2000000 + i}"
        save_jpeg(root / "images" / f"{image_id}.jpg", seed=100 + i, malignant=dx in ("mel", "bcc"))
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                     "age": "45.0", "sex": "female", "localization": "back"})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    for i in range(12):
        label = "malignant" if i % 3 == 0 else "benign"
        save_jpeg(root / label / f"img_{i:03d}.jpg", seed=200 + i, malignant=label == "malignant")
    return root


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    """ISIC Archive layout: json_meta/<name>.json records + images/<name>.jpg."""
    root = tmp_path / "archive"
    (root / "json_meta").mkdir(parents=True)
    for i in range(12):
        name = f"ISIC_{3000000 + i}"
        malignant = i % 3 == 0
        save_jpeg(root / "images" / f"{name}.jpg", seed=300 + i, malignant=malignant)
        record = {"name": name, "meta": {"clinical": {
            "benign_malignant": "malignant" if malignant else "benign",
            "diagnosis": "melanoma" if malignant else "nevus",
            "age_approx": 40 if i % 2 else None, "sex": "male" if i % 2 else None}}}
        (root / "json_meta" / f"{name}.json").write_text(json.dumps(record))
    return root


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from dermsynth.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


def one_line_error(cli, *args: object) -> str:
    """Run the CLI and check that it failed the way user mistakes must: exit 2, one `error:` line, no traceback."""
    code, _, stderr = cli(*args)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]
