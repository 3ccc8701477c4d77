"""Subgroup metrics: age bands, groups too small to report, the worst group and whether a regime widens the gap."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermsynth.evaluate.stats import RunPredictions
from dermsynth.evaluate.subgroups import GroupRule, gap_rows, subgroup_labels, subgroup_rows

CLASSES = ["benign", "malignant"]


def test_labels_band_ages_keep_unknowns_unknown_and_skip_single_valued_attributes():
    test = pd.DataFrame({"sex": ["male", "female", None, "male"], "age_approx": [25, 30, 69, np.nan],
                         "anatom_site": ["back"] * 4, "source": ["ham10000"] * 4})
    labels = subgroup_labels(test)
    assert set(labels) == {"sex", "age_band"}  # one site and one source: nothing to compare
    assert labels["age_band"].tolist()[:3] == ["<30", "30-49", "50-69"] and pd.isna(labels["age_band"][3])
    assert pd.isna(labels["sex"][2])


def _runs(n: int, noisy: np.ndarray, seeds: int = 3) -> list[RunPredictions]:
    """Runs whose malignancy score is right everywhere except where ``noisy``, where it is a coin."""
    targets = np.arange(n) % 2
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        score = np.where(noisy, rng.random(n), 0.2 + 0.6 * targets)
        runs.append(RunPredictions(seed, targets, np.stack([1 - score, score], axis=1), 0.5))
    return runs


def test_too_small_groups_get_no_numbers_and_a_worse_group_widens_the_gap():
    n = 200
    sex = pd.Series(np.where(np.arange(n) < 100, "female", "male"), dtype=object)
    site = pd.Series(np.where(np.arange(n) < 190, "trunk", "scalp"), dtype=object)  # 10 images on the scalp
    labels = {"sex": sex, "anatom_site": site}
    real = _runs(n, np.zeros(n, bool))
    hurt = _runs(n, (sex == "male").to_numpy())  # this regime is a coin-flip on men only
    rule = GroupRule(min_images=30, min_per_class=10)
    rows = [row for name, runs in (("real", real), ("hybrid:0.5", hurt))
            for row in subgroup_rows(name, "", runs, labels, CLASSES, rule, n_boot=100, confidence=0.95)]
    scalp = [r for r in rows if r["group"] == "scalp"]
    assert all(r["status"] == "too small" and "auroc_mean" not in r for r in scalp)
    men = next(r for r in rows if r["regime"] == "hybrid:0.5" and r["group"] == "male")
    assert men["status"] == "ok" and 0.3 < men["auroc_mean"] < 0.7 and men["auroc_ci_lo"] < men["auroc_mean"]
    gaps = gap_rows({("real", ""): real, ("hybrid:0.5", ""): hurt}, labels, rows, confidence=0.95)
    assert {(g["regime"], g["attribute"]) for g in gaps} == {("real", "sex"), ("hybrid:0.5", "sex")}  # site: 1 ok
    worse = next(g for g in gaps if g["regime"] == "hybrid:0.5")
    assert worse["worst_group"] == "male" and worse["gap"] > 0.3
    assert worse["gap_change_seed_ci_lo"] > 0 and worse["reading"] == "widens the gap"


def test_validate_writes_subgroup_tables(tmp_path):
    import shutil

    from dermsynth.evaluate.validate import validate
    from tests.test_validate import config, make_prep

    (tmp_path / "base").mkdir()
    source = make_prep(tmp_path / "base")
    target = tmp_path / "prep-sexes"
    shutil.copytree(source, target)
    meta = pd.read_csv(target / "metadata.csv", dtype=str)
    meta["sex"] = np.where(np.arange(len(meta)) % 2, "female", "male")
    meta.to_csv(target / "metadata.csv", index=False)
    validate(config(target, regimes=["real", "augment:0.5"], seeds=2, subgroup_min_images=4,
                    subgroup_min_per_class=1), tmp_path / "v", progress=False)
    root = tmp_path / "v" / "validation"
    rows = pd.read_csv(root / "subgroups.csv")
    assert set(rows["group"]) == {"female", "male"} and set(rows["regime"]) == {"real", "augment:0.5"}
    gaps = pd.read_csv(root / "subgroup_gaps.csv")
    assert set(gaps["regime"]) <= {"real", "augment:0.5"} and (gaps["attribute"] == "sex").all()
    assert "Subgroups of the test split" in (root / "summary.md").read_text()
    from dermsynth.report.build import build_report

    html, markdown = build_report(tmp_path / "v")
    assert "worst group (AUROC %)" in html.read_text() and "worst group (AUROC %)" in markdown.read_text()



def test_a_subgroup_field_that_does_not_exist_is_a_one_line_error():
    import pytest

    from dermsynth.errors import DermsynthError

    test = pd.DataFrame({"sex": ["male", "female"], "age_approx": [40, 60]})
    assert set(subgroup_labels(test, ["sex", "age_band"])) == {"sex", "age_band"}
    with pytest.raises(DermsynthError, match="no field 'skin_type' in the metadata of the test split"):
        subgroup_labels(test, ["sex", "skin_type"])
