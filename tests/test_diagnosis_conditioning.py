"""`--label-scheme diagnosis`: one class embedding per diagnosis, images still made per label, each drawing a
diagnosis of its label in the training proportions; the manifest records both."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import torch

from dermsynth.diffusion.families import Conditioning
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.training import train
from dermsynth.errors import DermsynthError
from tests.test_cascade import TINY_CASCADE
from tests.test_diffusion_scratch import TINY, make_prepared

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Two diagnoses per label; the training split holds 7 and 3 of the benign ones, 4 and 2 of the malignant ones.
DIAGNOSES = {"benign": ["nevus"] * 7 + ["keratosis"] * 5, "malignant": ["melanoma"] * 4 + ["carcinoma"] * 4}


def with_diagnoses(root):
    metadata = pd.read_csv(root / "metadata.csv")
    metadata["diagnosis"] = metadata["diagnosis"].astype(object)
    for label, names in DIAGNOSES.items():
        rows = metadata.index[metadata["label"] == label]
        metadata.loc[rows, "diagnosis"] = names[:len(rows)]
    metadata.to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return with_diagnoses(make_prepared(tmp_path_factory.mktemp("dx") / "prep", size=32))


def test_a_pixel_model_embeds_diagnoses_and_generate_records_them(prepared, tmp_path):
    from diffusers import UNet2DModel

    out = tmp_path / "model"
    train(prepared, out, config=TINY, label_scheme="diagnosis", progress=False)
    info = json.loads((out / "dermsynth_model.json").read_text())
    conditioning = info["conditioning"]
    assert info["classes"] == ["benign", "malignant"] and conditioning["scheme"] == "diagnosis"
    assert conditioning["classes"] == ["keratosis", "nevus", "carcinoma", "melanoma"]
    train_split = pd.read_csv(prepared / "metadata.csv").query("split == 'train'")
    assert conditioning["counts"] == train_split["diagnosis"].value_counts().to_dict()
    assert UNet2DModel.from_pretrained(out / "unet").config.num_class_embeds == 5  # 4 diagnoses + null

    made = generate(out, tmp_path / "syn", per_class=8, progress=False)
    manifest = made.manifest
    assert set(manifest.columns) >= {"label", "diagnosis"}
    for _, row in manifest.iterrows():
        assert conditioning["label_of"][row["diagnosis"]] == row["label"]
    assert pd.read_csv(tmp_path / "syn" / "manifest.csv")["diagnosis"].notna().all()
    # A resumed folder reads the diagnosis back from each PNG.
    (tmp_path / "syn" / "manifest.csv").unlink()
    again = generate(out, tmp_path / "syn", per_class=8, progress=False).manifest
    assert again["diagnosis"].tolist() == manifest["diagnosis"].tolist()


def test_diagnoses_are_drawn_by_seed_in_the_training_proportions():
    rule = Conditioning("diagnosis", ("keratosis", "nevus", "melanoma"),
                        {"keratosis": "benign", "nevus": "benign", "melanoma": "malignant"},
                        {"keratosis": 100, "nevus": 300, "melanoma": 50})
    drawn = Counter(rule.diagnosis("benign", seed) for seed in range(4000))
    assert set(drawn) == {"keratosis", "nevus"} and abs(drawn["nevus"] / 4000 - 0.75) < 0.03
    assert {rule.diagnosis("malignant", seed) for seed in range(50)} == {"melanoma"}
    assert [rule.diagnosis("benign", s) for s in range(20)] == [rule.diagnosis("benign", s) for s in range(20)]
    assert rule.targets(["benign", "malignant"], [3, 3], ["benign", "malignant"])[1] == 2
    assert Conditioning().targets(["malignant"], [0], ["benign", "malignant"]) == [1]


def test_batches_balance_labels_and_keep_the_diagnosis_mix_within_each():
    from dermsynth.diffusion.scratch.train import TrainingData, label_balance_weights

    # 2 keratoses, 6 nevi (benign), 2 melanomas (malignant): one class per diagnosis.
    targets = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 2, 2])
    conditioning = {"scheme": "diagnosis", "classes": ["keratosis", "nevus", "melanoma"],
                    "label_of": {"keratosis": "benign", "nevus": "benign", "melanoma": "malignant"},
                    "labels": ["benign", "malignant"]}
    data = TrainingData(images=torch.zeros(10, 3, 4, 4), targets=targets, classes=conditioning["classes"],
                        summary={"conditioning": conditioning}, image_ids=[str(i) for i in range(10)])
    weights = label_balance_weights(targets, data)
    share = torch.bincount(targets, weights=weights) / weights.sum()
    assert torch.allclose(share, torch.tensor([0.125, 0.375, 0.5]))  # benign 1/2 split 2:6, malignant 1/2
    binary = TrainingData(images=data.images, targets=torch.tensor([0] * 8 + [1] * 2), classes=["b", "m"],
                          summary={}, image_ids=data.image_ids)
    weights = label_balance_weights(binary.targets, binary)
    assert torch.allclose(torch.bincount(binary.targets, weights=weights) / weights.sum(), torch.tensor([0.5, 0.5]))


def test_a_cascade_conditions_both_stages_on_diagnoses(prepared, tmp_path):
    from diffusers import UNet2DModel

    out = tmp_path / "cascade"
    train(prepared, out, config=TINY_CASCADE, label_scheme="diagnosis", progress=False)
    info = json.loads((out / "dermsynth_model.json").read_text())
    assert info["conditioning"]["scheme"] == "diagnosis" and info["classes"] == ["benign", "malignant"]
    for stage in ("base/unet", "super_resolution/unet"):
        assert UNet2DModel.from_pretrained(out / stage).config.num_class_embeds == 5
    made = generate(out, tmp_path / "syn", per_class=3, progress=False)
    assert made.manifest["diagnosis"].isin(info["conditioning"]["classes"]).all()
    assert torch.tensor(made.manifest["label"].eq("malignant").to_numpy()).sum() == 3


def test_one_line_errors(tmp_path, cli):
    bare = make_prepared(tmp_path / "bare", size=32)  # no diagnoses in its metadata
    with pytest.raises(DermsynthError, match="needs a diagnosis for every training image"):
        train(bare, tmp_path / "m", config=TINY, label_scheme="diagnosis", progress=False)
    shared = with_diagnoses(make_prepared(tmp_path / "shared", size=32))
    metadata = pd.read_csv(shared / "metadata.csv")
    metadata.loc[metadata["label"] == "malignant", "diagnosis"] = "nevus"
    metadata.to_csv(shared / "metadata.csv", index=False)
    with pytest.raises(DermsynthError, match="occurs under more than one label"):
        train(shared, tmp_path / "m2", config=TINY, label_scheme="diagnosis", progress=False)
    code, _, err = cli("train", "--data", bare, "--out", tmp_path / "m3", "--label-scheme", "lesion")
    assert code == 2 and "label_scheme" in err and "Traceback" not in err
