"""`dermsynth tune-guidance`: guidance chosen per class on the val split, applied by `generate --guidance`."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.scratch.train import train
from dermsynth.tune import tune_guidance
from tests.test_diffusion_scratch import TINY, make_prepared

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    prepared = make_prepared(root / "prep", per_class={"benign": 18, "malignant": 18}, size=16)
    metadata = pd.read_csv(prepared / "metadata.csv")
    numbers = metadata["image_id"].str[-3:].astype(int)
    metadata.loc[(numbers >= 2) & (numbers < 10), "split"] = "val"  # 9 val images per class, 8 train
    metadata.to_csv(prepared / "metadata.csv", index=False)
    train(prepared, root / "model", config=TINY, progress=False)
    return prepared, root / "model"


def test_guidance_is_chosen_per_class_by_the_lowest_distance_on_val(model, tmp_path, cli):
    prepared, folder = model
    code, out, err = cli("tune-guidance", "--model", folder, "--data", prepared, "--out", tmp_path / "t",
                         "--values", "3,0", "--per-class", "6", "--quiet")
    assert code == 0, err
    record = json.loads((tmp_path / "t" / "tune.json").read_text())
    table = pd.read_csv(tmp_path / "t" / "tune.csv")
    assert record["values"] == [0.0, 3.0] and record["split"] == "val" and len(table) == 4
    for label, value in record["chosen"].items():
        rows = table[table["class"] == label]
        assert value == rows.sort_values("fd").iloc[0]["guidance"]
    assert record["generate_option"] in out
    # The sets differ by guidance only: the same seeds at every value.
    seeds = [pd.read_csv(tmp_path / "t" / f"guidance-{v}" / "manifest.csv")["seed"].tolist() for v in ("0", "3")]
    assert seeds[0] == seeds[1]
    # A rerun reuses the generated sets and the feature network, and chooses the same.
    again = tune_guidance(folder, prepared, tmp_path / "t", (0, 3), per_class=6, progress=False)
    assert again["chosen"] == record["chosen"] and again["scores"] == record["scores"]
    assert table["fd"].notna().all() and table["real_images"].eq(9).all()


def test_generate_applies_one_guidance_per_class(model, tmp_path):
    folder = model[1]
    made = generate(folder, tmp_path / "g", per_class=3, guidance={"malignant": 0.0}, progress=False)
    by_class = made.manifest.groupby("label")["guidance_scale"].unique().to_dict()
    recorded = json.loads((folder / "dermsynth_model.json").read_text())["sampling"]["guidance_scale"]
    assert list(by_class["malignant"]) == [0.0] and list(by_class["benign"]) == [recorded]
    assert made.summary["settings"]["guidance_scale"] == {"benign": recorded, "malignant": 0.0}
    # Same seeds, same class: the malignant images equal those of a run at guidance 0 for every class.
    plain = generate(folder, tmp_path / "g0", per_class=3, guidance=0.0, progress=False).manifest
    first = made.manifest.query("label == 'malignant'")["path"].tolist()
    second = plain.query("label == 'malignant'")["path"].tolist()
    for a, b in zip(first, second, strict=True):
        assert (tmp_path / "g" / a).read_bytes() != b"" and _pixels(tmp_path / "g" / a) == _pixels(tmp_path / "g0" / b)


def _pixels(path):
    from PIL import Image

    return Image.open(path).tobytes()


def test_a_saved_feature_classifier_works_with_the_default_device(model, tmp_path, cli):
    from dermsynth.classify.classifiers import build_classifier, save_classifier

    prepared, folder = model
    tiny = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}
    save_classifier(build_classifier("cnn", ["benign", "malignant"], 16, tiny), tmp_path / "clf")
    code, out, err = cli("tune-guidance", "--model", folder, "--data", prepared, "--out", tmp_path / "t",
                         "--values", "0,3", "--per-class", "6", "--features", f"classifier:{tmp_path / 'clf'}",
                         "--quiet")  # --device left at auto
    assert code == 0, err
    record = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert set(record["chosen"]) == {"benign", "malignant"} and "--guidance" in out
