"""External test sets: every image tested on by every run, content duplicates of training images removed and
listed, metrics with intervals and paired differences per external set."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from dermsynth.errors import DermsynthError
from dermsynth.evaluate.validate import validate
from tests.conftest import lesion_image
from tests.test_validate import config, prep  # noqa: F401 (module fixture)

PLANTED = 3  # external images that are copies of internal training images (one of them flipped)


def make_external(prep, root):  # noqa: F811
    """Another clinic's set: new images throughout, except PLANTED copies of the internal train split."""
    shutil.copytree(prep, root)
    meta = pd.read_csv(root / "metadata.csv", dtype=str)
    planted = meta.index[meta["split"] == "train"][:PLANTED]
    for i, row in meta.iterrows():
        path = root / row["path"]
        if i in planted:
            if i == planted[0]:
                Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
            continue
        Image.fromarray(lesion_image(5000 + i, (16, 16), row["label"] == "malignant")).save(path)
    return root, meta.loc[planted, "image_id"].tolist()


def test_external_sets_are_scored_by_every_run_without_duplicates_of_training_images(prep, tmp_path):  # noqa: F811
    external, planted = make_external(prep, tmp_path / "clinic-b")
    result = validate(config(prep, regimes=["real", "augment:0.5"], seeds=2, test=[external]), tmp_path / "v",
                      progress=False)
    root = tmp_path / "v" / "validation"
    info = json.loads((root / "validate.json").read_text())
    removed = info["external"]["clinic-b"]["removed_duplicates"]
    assert sorted(r["image_id"] for r in removed) == sorted(f"clinic-b:{i}" for i in planted)
    n_external = len(pd.read_csv(external / "metadata.csv")) - PLANTED
    truth = pd.read_csv(root / "truth_clinic-b.csv", dtype={"image": str})
    assert len(truth) == n_external == info["external"]["clinic-b"]["images"]
    for run in ("real/0", "augment-0.5/1"):
        predictions = pd.read_csv(root / run / "predictions_clinic-b.csv", dtype={"image": str})
        assert sorted(predictions["image"]) == sorted(truth["image"])
        metrics = json.loads((root / run / "metrics.json").read_text())
        assert set(metrics["external"]["clinic-b"]["test"]) >= {"auroc", "accuracy"}
    # The reported external metrics are those scikit-learn computes from the saved predictions.
    from sklearn.metrics import roc_auc_score

    scored = predictions.merge(truth, on="image", suffixes=("", "_truth"))
    assert metrics["external"]["clinic-b"]["test"]["auroc"] == pytest.approx(
        roc_auc_score(scored["malignant_truth"], scored["malignant"]), abs=1e-6)
    summary = pd.read_csv(root / "summary.csv")
    assert set(zip(summary["test_set"], summary["regime"], strict=True)) == {
        ("test", "real"), ("test", "augment:0.5"), ("clinic-b", "real"), ("clinic-b", "augment:0.5")}
    comparisons = pd.read_csv(root / "comparisons.csv")
    assert set(comparisons["test_set"]) == {"test", "clinic-b"}
    assert "External test set clinic-b" in (root / "summary.md").read_text()
    from dermsynth.report.build import build_report

    html, markdown = build_report(tmp_path / "v")
    assert "External test sets" in html.read_text() and f"{PLANTED} removed" in html.read_text()
    assert "External test set clinic-b" in markdown.read_text()
    # Finished runs already hold the external predictions: a rerun trains nothing.
    again = validate(config(prep, regimes=["real", "augment:0.5"], seeds=2, test=[external]), tmp_path / "v",
                     progress=False)
    assert not again.ran and len(result.ran) == 4


def test_an_external_set_that_is_the_training_data_or_has_other_classes_is_refused(prep, tmp_path):  # noqa: F811
    with pytest.raises(DermsynthError, match="is the real dataset itself"):
        validate(config(prep, test=[prep]), tmp_path / "v", progress=False)
    other = tmp_path / "three-classes"
    shutil.copytree(prep, other)
    summary = json.loads((other / "prepare.json").read_text())
    summary["classes"] = ["benign", "malignant", "indeterminate"]
    (other / "prepare.json").write_text(json.dumps(summary))
    meta = pd.read_csv(other / "metadata.csv", dtype=str)
    meta.loc[0, "image_id"] = "changed"  # not a byte copy of the real metadata
    meta.to_csv(other / "metadata.csv", index=False)
    with pytest.raises(DermsynthError, match=r"classes .* differ"):
        validate(config(prep, test=[other]), tmp_path / "v", progress=False)


def test_an_external_set_without_the_subgroup_fields_is_summarised_with_a_note(prep, tmp_path):  # noqa: F811
    """A class-folder tree has empty sex/age/site columns: its subgroups are 'no such field', never a crash."""
    external, _ = make_external(prep, tmp_path / "folder-set")
    meta = pd.read_csv(external / "metadata.csv", dtype=str)
    meta[["sex", "age_approx", "anatom_site"]] = ""
    meta.to_csv(external / "metadata.csv", index=False)
    validate(config(prep, regimes=["real", "augment:0.5"], seeds=2, test=[external],
                    subgroups=["sex", "age_band", "anatom_site"], subgroup_min_images=4, subgroup_min_per_class=1),
             tmp_path / "v", progress=False)
    root = tmp_path / "v" / "validation"
    info = json.loads((root / "validate.json").read_text())
    assert info["external"]["folder-set"]["absent_subgroups"] == ["sex", "age_band", "anatom_site"]
    text = (root / "summary.md").read_text()
    assert "no field sex, age_band, anatom_site in this set's metadata" in text
    summary = pd.read_csv(root / "summary.csv")
    assert set(summary["test_set"]) == {"test", "folder-set"}
    rows = pd.read_csv(root / "subgroups.csv")
    assert set(rows["test_set"]) == {"test"}  # the internal split still has its subgroups
