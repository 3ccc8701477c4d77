import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dermsynth.data.images as images_module
from dermsynth.data.config import PrepareConfig, PreprocessConfig
from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import load_rgb
from dermsynth.data.prepare import prepare
from dermsynth.data.schema import CANONICAL_COLUMNS
from dermsynth.errors import DermsynthError

from .conftest import lesion_image, one_line_error

SMALL = PreprocessConfig(image_size=32)


def small_config(**kwargs) -> PrepareConfig:
    kwargs.setdefault("preprocess", SMALL)
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("split", {"val": 0.2, "test": 0.2, "seed": 0})
    return PrepareConfig(**kwargs)


def test_prepare_isic2020_writes_the_canonical_outputs(isic2020_dir, tmp_path):
    out = tmp_path / "prep"
    result = prepare(small_config(dataset="isic2020", root=isic2020_dir), out, progress=False)
    metadata = pd.read_csv(out / "metadata.csv")
    assert list(metadata.columns) == CANONICAL_COLUMNS
    assert len(metadata) == 23 == result.summary["images"]
    for path in metadata["path"]:
        assert Image.open(out / path).size == (32, 32)
    assert metadata.groupby("patient_id")["split"].nunique().max() == 1
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["skipped_by_reason"] == {"duplicate image": 1}
    assert summary["grouping"] == "patient"
    assert summary["targets"] == {"benign": 0, "malignant": 1}
    assert metadata["prompt"].str.startswith("dermoscopy image of a").all()
    assert not metadata["prompt"].str.contains(r"\bnan\b|None|<NA>").any()
    loaded = load_prepared(out)
    assert loaded.classes == ["benign", "malignant"] and len(loaded.split("train")) > 0


def test_prepare_parallel_workers_match_single_process(ham_dir, tmp_path):
    one = prepare(small_config(dataset="ham10000", root=ham_dir), tmp_path / "one", progress=False)
    two = prepare(small_config(dataset="ham10000", root=ham_dir, workers=2), tmp_path / "two", progress=False)
    pd.testing.assert_frame_equal(one.metadata, two.metadata)
    for path in one.metadata["path"]:
        assert np.array_equal(load_rgb(tmp_path / "one" / path), load_rgb(tmp_path / "two" / path))


def test_rerun_reuses_processed_images_and_new_settings_reprocess(ham_dir, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    prepare(small_config(dataset="ham10000", root=ham_dir), out, progress=False)
    calls = []
    import dermsynth.data.prepare as prepare_module

    original = prepare_module._process_one
    monkeypatch.setattr(prepare_module, "_process_one", lambda task: calls.append(task) or original(task))
    prepare(small_config(dataset="ham10000", root=ham_dir), out, progress=False)
    assert calls == []
    prepare(small_config(dataset="ham10000", root=ham_dir, preprocess=PreprocessConfig(image_size=24)), out,
            progress=False)
    assert len(calls) == 30
    assert Image.open(next((out / "images").rglob("*.png"))).size == (24, 24)


def test_interrupted_prepare_leaves_no_metadata_and_resumes(ham_dir, tmp_path, monkeypatch):
    import dermsynth.data.prepare as prepare_module

    out = tmp_path / "prep"
    original = prepare_module._process_one
    done: list[str] = []

    def dying(task):
        if len(done) == 12:
            raise KeyboardInterrupt
        done.append(task[0])
        return original(task)

    monkeypatch.setattr(prepare_module, "_process_one", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(small_config(dataset="ham10000", root=ham_dir), out, progress=False)
    assert not (out / "metadata.csv").exists() and not (out / "prepare.json").exists()
    assert not list(out.rglob("*.tmp*"))

    redone: list[str] = []
    monkeypatch.setattr(prepare_module, "_process_one", lambda task: redone.append(task[0]) or original(task))
    result = prepare(small_config(dataset="ham10000", root=ham_dir), out, progress=False)
    assert len(redone) == 30 - 12 and not set(redone) & set(done)
    assert len(result.metadata) == 30


def _write_odd_images(root: Path) -> None:
    benign, malignant = root / "benign", root / "malignant"
    rgb = lesion_image(1)
    Image.fromarray(rgb).convert("CMYK").save(benign / "cmyk.jpg")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(benign / "rgba.png")
    gray16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(malignant / "gray16.png")
    cv2.imwrite(str(malignant / "rgb16.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    Image.fromarray(rgb[..., 0]).save(benign / "gray8.png")
    good = (benign / "img_001.jpg").read_bytes()
    (benign / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (malignant / "garbage.jpg").write_bytes(b"this is not an image")


def test_odd_images_are_converted_and_corrupt_ones_counted(folder_dir, tmp_path):
    _write_odd_images(folder_dir)
    out = tmp_path / "prep"
    result = prepare(small_config(dataset="folder", root=folder_dir), out, progress=False)
    ids = set(result.metadata["image_id"])
    assert {"cmyk", "rgba", "gray16", "rgb16", "gray8"} <= ids
    assert result.summary["skipped_by_reason"] == {"image truncated": 1, "image unreadable": 1}
    skipped_ids = {item["image_id"] for item in result.summary["skipped"]}
    assert skipped_ids == {"truncated", "garbage"}
    gray16 = load_rgb(out / result.metadata.set_index("image_id").loc["gray16", "path"])
    assert gray16.dtype == np.uint8 and gray16.shape == (32, 32, 3) and gray16.max() > 100


def test_oversized_image_is_a_counted_skip(folder_dir, tmp_path, monkeypatch):
    Image.fromarray(lesion_image(5, size=(120, 120))).save(folder_dir / "benign" / "huge.jpg")
    monkeypatch.setattr(images_module.Image, "MAX_IMAGE_PIXELS", 10_000)  # fixtures are 96x72 = 6,912 px
    result = prepare(small_config(dataset="folder", root=folder_dir), tmp_path / "prep", progress=False)
    assert result.summary["skipped"] == [{"image_id": "huge", "reason": "image too large"}]
    assert len(result.metadata) == 12


def test_empty_class_folder_is_recorded(folder_dir, tmp_path):
    (folder_dir / "nevus").mkdir()
    result = prepare(small_config(dataset="folder", root=folder_dir), tmp_path / "prep", progress=False)
    assert result.summary["notes"]["empty_classes"] == ["nevus"]
    assert result.summary["classes"] == ["benign", "malignant"]


def test_max_images_keeps_the_label_mix(isic2020_dir, tmp_path):
    result = prepare(small_config(dataset="isic2020", root=isic2020_dir, max_images=12), tmp_path / "p",
                     progress=False)
    assert len(result.metadata) == 12
    assert set(result.metadata["label"]) == {"benign", "malignant"}


# --------------------------------------------------------------------------- CLI


def test_cli_prepare_sample_and_info(cli, tmp_path):
    out = tmp_path / "prep"
    code, stdout, _ = cli("prepare", "--dataset", "sample", "--out", out, "--image-size", 32, "--max-images", 60,
                          "--quiet")
    assert code == 0, stdout
    assert (out / "metadata.csv").is_file() and (out / "prepare.json").is_file()
    assert len(list((out / "images").rglob("*.png"))) == 60
    code, stdout, _ = cli("info", out)
    assert code == 0 and "benign" in stdout and "grouping: image" in stdout



def test_cli_missing_root_folder(cli, tmp_path):
    missing = tmp_path / "nope"
    line = one_line_error(cli, "prepare", "--dataset", "ham10000", "--root", missing, "--out", tmp_path / "o")
    assert "folder not found" in line
    assert not (tmp_path / "o" / "metadata.csv").exists()


def test_cli_csv_missing_column(cli, isic2020_dir, tmp_path):
    csv = isic2020_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    pd.read_csv(csv).drop(columns=["image_name"]).to_csv(csv, index=False)
    line = one_line_error(cli, "prepare", "--dataset", "isic2020", "--root", isic2020_dir, "--out", tmp_path / "o")
    assert "missing required column 'image_name'" in line
    assert not (tmp_path / "o" / "metadata.csv").exists()


def test_cli_unwritable_output(cli, folder_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = one_line_error(cli, "prepare", "--dataset", "folder", "--root", folder_dir, "--out", blocker / "sub")
    assert "cannot write to output folder" in line


def test_cli_output_inside_input(cli, folder_dir):
    line = one_line_error(cli, "prepare", "--dataset", "folder", "--root", folder_dir, "--out", folder_dir / "p")
    assert "inside the dataset folder" in line


def test_cli_bad_config_names_the_key(cli, tmp_path):
    config = tmp_path / "prep.yaml"
    config.write_text("dataset: sample\npreprocess:\n  image_sise: 64\n")
    line = one_line_error(cli, "prepare", "--config", config, "--out", tmp_path / "o")
    assert "preprocess.image_sise: unknown key" in line
    config.write_text("dataset: sample\nsplit:\n  val: 0.6\n  test: 0.5\n")
    assert "val + test must be below 1" in one_line_error(cli, "prepare", "--config", config, "--out", tmp_path / "o")


def test_cli_unknown_dataset_kind(cli, tmp_path):
    line = one_line_error(cli, "prepare", "--dataset", "imagenet", "--out", tmp_path / "o")
    assert "dataset" in line


def test_cli_single_class_dataset(cli, folder_dir, tmp_path):
    import shutil

    shutil.rmtree(folder_dir / "malignant")
    assert "two classes" in one_line_error(cli, "prepare", "--dataset", "folder", "--root", folder_dir,
                                            "--out", tmp_path / "o")


def test_load_prepared_on_a_wrong_folder(tmp_path):
    with pytest.raises(DermsynthError, match="not a complete prepared dataset"):
        load_prepared(tmp_path)


def test_duplicate_images_under_new_ids_stay_in_one_split(folder_dir, tmp_path):
    source = folder_dir / "benign" / "img_001.jpg"
    for k in range(6):  # the same image re-uploaded under other names, one of them mirrored
        image = Image.open(source)
        copy = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k == 3 else image
        copy.save(folder_dir / "benign" / f"dup{k}.png")
    result = prepare(small_config(dataset="folder", root=folder_dir, preprocess=PreprocessConfig(image_size=48)),
                     tmp_path / "p", progress=False)
    pairs = {frozenset((p["image_id_1"], p["image_id_2"])) for p in result.summary["content_duplicates"]}
    assert frozenset(("img_001", "dup3")) in pairs and frozenset(("dup0", "dup5")) in pairs
    splits = result.metadata.set_index("image_id")["split"]
    assert splits[["img_001", *[f"dup{k}" for k in range(6)]]].nunique() == 1
    assert all(p["similarity"] > 0.95 for p in result.summary["content_duplicates"])
    assert len(pairs) == 21  # the 7 copies pair up with each other and with nothing else
