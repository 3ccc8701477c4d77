import numpy as np
import pandas as pd
import pytest

from dermsynth.data.splits import check_disjoint, group_keys, grouped_split
from dermsynth.errors import DermsynthError


def patients_frame(n_patients: int = 300, seed: int = 0, malignant_rate: float = 0.02) -> pd.DataFrame:
    """Patients with 1..40 images each; a rare positive class, as in ISIC 2020."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for i in range(int(rng.integers(1, 40))):
            rows.append({"image_id": f"img_{p}_{i}", "patient_id": f"IP_{p}", "lesion_id": f"IL_{p}_{i % 3}",
                         "label": "malignant" if rng.random() < malignant_rate else "benign"})
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_labels_stratified():
    frame = patients_frame()
    frame["split"] = grouped_split(frame, val=0.15, test=0.15, seed=3)
    check_disjoint(frame)
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    overall = (frame["label"] == "malignant").mean()
    for name, fraction in [("train", 0.7), ("val", 0.15), ("test", 0.15)]:
        part = frame[frame["split"] == name]
        assert abs(len(part) / len(frame) - fraction) < 0.03
        assert abs((part["label"] == "malignant").mean() - overall) < 0.02


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    frame = patients_frame(seed=1)
    first = grouped_split(frame, 0.15, 0.15, seed=7)
    assert first.equals(grouped_split(frame, 0.15, 0.15, seed=7))
    assert not first.equals(grouped_split(frame, 0.15, 0.15, seed=8))


def test_grouping_falls_back_to_lesion_then_image():
    frame = pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["P1", None, None],
                          "lesion_id": ["L1", "L2", None]})
    assert list(group_keys(frame)) == ["patient:P1", "lesion:L2", "image:c"]


def test_lesion_groups_never_straddle_splits():
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(200)], "patient_id": None,
                          "lesion_id": [f"L{k // 4}" for k in range(200)],
                          "label": ["malignant" if (k // 4) % 5 == 0 else "benign" for k in range(200)]})
    frame["split"] = grouped_split(frame, 0.2, 0.2, seed=0)
    assert frame.groupby("lesion_id")["split"].nunique().max() == 1


def test_zero_val_fraction_gives_no_val_split():
    frame = patients_frame(n_patients=50)
    split = grouped_split(frame, val=0.0, test=0.2, seed=0)
    assert "val" not in set(split)


def test_leak_is_detected():
    frame = pd.DataFrame({"patient_id": ["P1", "P1"], "lesion_id": [None, None], "split": ["train", "test"]})
    with pytest.raises(DermsynthError, match="more than one split"):
        check_disjoint(frame)


def test_linked_images_share_a_split():
    frame = patients_frame(n_patients=80, seed=2)
    first = frame.groupby("patient_id")["image_id"].first()
    links = list(zip(first.iloc[:40], first.iloc[40:], strict=True))  # join patient pairs (e.g. duplicates)
    frame["split"] = grouped_split(frame, 0.2, 0.2, seed=0, links=links)
    split_of = frame.groupby("patient_id")["split"].first()
    patient_of = dict(zip(frame["image_id"], frame["patient_id"], strict=True))
    assert all(split_of[patient_of[a]] == split_of[patient_of[b]] for a, b in links)
