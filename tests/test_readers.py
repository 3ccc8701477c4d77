import json

import pandas as pd
import pytest

from dermsynth.data.config import PrepareConfig
from dermsynth.data.labels import assign_labels
from dermsynth.data.readers import read_dataset, read_isic2020, sample_root
from dermsynth.data.schema import clean_age, clean_sex, clean_text
from dermsynth.errors import DermsynthError


def test_isic2020_reader_resolves_images_and_drops_one_of_each_duplicate_pair(isic2020_dir):
    result = read_dataset(PrepareConfig(dataset="isic2020", root=isic2020_dir))
    frame = result.frame
    assert len(frame) == 23
    assert "ISIC_1000009" not in set(frame["image_id"]) and "ISIC_1000001" in set(frame["image_id"])
    assert result.skipped == [{"image_id": "ISIC_1000009", "reason": "duplicate image"}]
    assert frame["source_path"].map(lambda p: p.endswith(".jpg")).all()
    assert set(frame["patient_id"]) == {f"IP_{i}" for i in range(8)}
    # "unknown" diagnosis and empty cells stay empty; nothing is invented.
    assert frame.loc[frame["benign_malignant"] == "benign", "diagnosis"].isna().all()
    assert frame["age_approx"].isna().sum() == 5
    assert frame["sex"].isna().sum() == 8


def test_isic2020_kaggle_layout(isic2020_dir):
    kaggle = isic2020_dir.parent / "kaggle"
    (kaggle / "jpeg").mkdir(parents=True)
    (isic2020_dir / "train").rename(kaggle / "jpeg" / "train")
    table = pd.read_csv(isic2020_dir / "ISIC_2020_Training_GroundTruth_v2.csv").drop(columns=["lesion_id"])
    table.to_csv(kaggle / "train.csv", index=False)
    result = read_dataset(PrepareConfig(dataset="isic2020", root=kaggle))
    assert len(result.frame) == 24  # no duplicates list next to train.csv: nothing dropped
    assert result.frame["lesion_id"].isna().all()


def test_isic2020_metadata_only_reader_needs_no_images(isic2020_dir):
    config = PrepareConfig(dataset="isic2020", csv=isic2020_dir / "ISIC_2020_Training_GroundTruth_v2.csv")
    result = read_isic2020(config, require_images=False)
    assert len(result.frame) == 23 and result.frame["source_path"].isna().all()


def test_missing_image_is_a_counted_skip(isic2020_dir):
    (isic2020_dir / "train" / "ISIC_1000005.jpg").unlink()
    result = read_dataset(PrepareConfig(dataset="isic2020", root=isic2020_dir))
    assert {"image_id": "ISIC_1000005", "reason": "missing image"} in result.skipped


def test_csv_missing_required_column_is_a_user_error(isic2020_dir):
    csv = isic2020_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    pd.read_csv(csv).drop(columns=["target", "benign_malignant"]).to_csv(csv, index=False)
    with pytest.raises(DermsynthError, match="missing required column 'target' or 'benign_malignant'"):
        read_dataset(PrepareConfig(dataset="isic2020", root=isic2020_dir))


def test_ham10000_binary_mapping_is_configurable(ham_dir):
    frame = read_dataset(PrepareConfig(dataset="ham10000", root=ham_dir)).frame
    by_dx = frame.groupby("diagnosis")["benign_malignant"].first().to_dict()
    assert by_dx == {"nevus": "benign", "melanoma": "malignant", "benign keratosis": "benign",
                     "basal cell carcinoma": "malignant"}
    only_mel = read_dataset(PrepareConfig(dataset="ham10000", root=ham_dir, malignant_diagnoses=["mel"])).frame
    assert set(only_mel.loc[only_mel["diagnosis"] == "basal cell carcinoma", "benign_malignant"]) == {"benign"}
    assert frame["patient_id"].isna().all() and frame["lesion_id"].nunique() == 15


def test_diagnosis_scheme_uses_folder_safe_names(ham_dir):
    frame = read_dataset(PrepareConfig(dataset="ham10000", root=ham_dir)).frame
    labelled, skipped = assign_labels(frame, "diagnosis")
    assert set(labelled["label"]) == {"nevus", "melanoma", "benign_keratosis", "basal_cell_carcinoma"}
    assert sorted(labelled.groupby("label")["target"].first()) == [0, 1, 2, 3]
    assert skipped == []


def test_binary_targets_put_malignant_as_positive_class(isic2020_dir):
    frame = read_dataset(PrepareConfig(dataset="isic2020", root=isic2020_dir)).frame
    labelled, _ = assign_labels(frame, "binary")
    assert labelled.groupby("label")["target"].first().to_dict() == {"benign": 0, "malignant": 1}


def test_unknown_label_is_skipped_with_its_value(isic2020_dir):
    csv = isic2020_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.loc[3, "benign_malignant"] = "indeterminate"
    table.loc[3, "target"] = "7"
    table.to_csv(csv, index=False)
    frame = read_dataset(PrepareConfig(dataset="isic2020", root=isic2020_dir)).frame
    labelled, skipped = assign_labels(frame, "binary")
    assert skipped == [{"image_id": "ISIC_1000003", "reason": "unknown label 'indeterminate'"}]
    assert len(labelled) == len(frame) - 1


def test_archive_reader_handles_both_record_formats_and_bad_json(archive_dir):
    (archive_dir / "json_meta" / "broken.json").write_text("{not json")
    v2 = {"isic_id": "ISIC_3000011", "metadata": {"clinical": {"benign_malignant": "benign", "diagnosis_1": "Benign",
                                                                "patient_id": "IP_9", "anatom_site_general": "torso"}}}
    (archive_dir / "json_meta" / "ISIC_3000011.json").write_text(json.dumps(v2))
    result = read_dataset(PrepareConfig(dataset="isic-archive", root=archive_dir))
    row = result.frame.set_index("image_id").loc["ISIC_3000011"]
    assert row["patient_id"] == "IP_9" and row["anatom_site"] == "torso"
    assert any(item["reason"] == "unreadable metadata JSON" for item in result.skipped)
    assert len(result.frame) == 12


def test_embedded_sample_is_complete():
    result = read_dataset(PrepareConfig(dataset="sample"))
    assert len(result.frame) == 557
    assert result.frame["benign_malignant"].value_counts().to_dict() == {"benign": 398, "malignant": 159}
    assert (sample_root() / "LICENSE.txt").is_file() and (sample_root() / "ATTRIBUTION.txt").is_file()


def test_folder_reader_labels_from_folder_names_and_notes_empty_classes(folder_dir):
    (folder_dir / "empty_class").mkdir()
    result = read_dataset(PrepareConfig(dataset="folder", root=folder_dir))
    assert result.notes["empty_classes"] == ["empty_class"]
    assert result.frame["raw_label"].value_counts().to_dict() == {"benign": 8, "malignant": 4}


@pytest.mark.parametrize(("value", "expected"), [("Unknown", None), (" Torso ", "torso"), ("", None), (None, None)])
def test_clean_text(value, expected):
    assert clean_text(value) == expected


def test_clean_sex_and_age():
    assert clean_sex("MALE") == "male" and clean_sex("unknown") is None
    assert clean_age("45.0") == 45.0 and clean_age("200") is None and clean_age("x") is None
