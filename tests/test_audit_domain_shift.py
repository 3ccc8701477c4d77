"""Where the shift goes: distances of external sites from the training images and from the hybrid mix."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth.audit.domain_shift import SHIFT_STATISTICS, Moments, domain_shift, run_domain_shift
from dermsynth.errors import DermsynthError
from tests.test_diffusion_scratch import make_prepared, run_cli

CLASSES = ["benign", "malignant"]


def _frame(rng: np.random.Generator, n: int, shift: dict[str, float]) -> pd.DataFrame:
    data = {name: rng.normal(shift.get(name, 0.0), 1.0, n) for name in SHIFT_STATISTICS}
    return pd.DataFrame(data).assign(target=np.arange(n) % 2)


def test_mix_moments_are_the_mixture_s_and_the_rule_reads_the_direction():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 4000), rng.normal(2, 0.5, 4000)
    mixed = Moments.of(a).mixed(Moments.of(b), 0.5)
    pooled = Moments.of(np.concatenate([a, b]))
    assert mixed.mean == pytest.approx(pooled.mean, abs=1e-9) and mixed.var == pytest.approx(pooled.var, rel=1e-3)

    train = _frame(rng, 400, {})
    site = _frame(rng, 400, {"sharpness": -1.5, "skin_L_mean": 1.0})
    towards = _frame(rng, 400, {"sharpness": -1.5, "skin_L_mean": 1.0})  # pulls training the site's way
    away = _frame(rng, 400, {"sharpness": +1.5, "skin_L_mean": -1.0})
    result = domain_shift(train, towards, {"site": site}, CLASSES)["sites"]["site"]
    assert result["summary"]["margin"] > 0 and "towards" in result["summary"]["prediction"]
    assert set(result["per_class"]["benign"]["towards"]) == {"sharpness", "skin_L_mean"}
    assert result["per_class"]["benign"]["distance_synthetic"] < result["per_class"]["benign"]["distance_mix"]
    opposite = domain_shift(train, away, {"site": site}, CLASSES)["sites"]["site"]
    assert opposite["summary"]["margin"] < 0 and "away" in opposite["summary"]["prediction"]
    assert set(opposite["per_class"]["malignant"]["away"]) == {"sharpness", "skin_L_mean"}
    assert "away from" in opposite["sentence"]
    # A site identical to training: no statistic moves, and the mix cannot bring it nearer.
    same = domain_shift(train, away, {"same": _frame(rng, 400, {})}, CLASSES)["sites"]["same"]
    assert not same["per_class"]["benign"]["towards"] and same["summary"]["margin"] < 0


def _prepared(root, per_class):
    root = make_prepared(root, size=32, per_class=per_class)
    summary = json.loads((root / "prepare.json").read_text())
    (root / "prepare.json").write_text(json.dumps(summary | {"settings": {"preprocess": {"image_size": 32}}}))
    return root


def _blurred_copy(prepared, target, sigma: float, flat: bool = False):
    """The prepared folder's images blurred (a site with another dermatoscope), as a prepared set or SYN/<class>/."""
    if not flat:
        shutil.copytree(prepared, target)
    meta = pd.read_csv(prepared / "metadata.csv")
    for row in meta.itertuples():
        image = np.asarray(Image.open(prepared / row.path).convert("RGB"))
        soft = cv2.GaussianBlur(image, (0, 0), sigma)
        path = target / row.label / f"{row.image_id}.png" if flat else target / row.path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft).save(path)
    return target


def test_domain_shift_from_folders_finds_the_blurrier_site(tmp_path, capsys):
    prepared = _prepared(tmp_path / "prep", {"benign": 12, "malignant": 12})
    site = _blurred_copy(prepared, tmp_path / "site", 1.2)
    soft = _blurred_copy(prepared, tmp_path / "soft", 1.2, flat=True)
    result = run_domain_shift(prepared, soft, [site], tmp_path / "out", synthetic_preprocess=False, progress=False)
    summary = result["sites"]["site"]["summary"]
    assert summary["margin"] > 0 and summary["distance_synthetic"] < summary["distance_train"]
    rows = pd.read_csv(tmp_path / "out" / "domain_shift.csv")
    sharp = rows[(rows["statistic"] == "sharpness") & (rows["class_name"] == "benign")].iloc[0]
    assert sharp["d_site"] < -1 and sharp["moves"] == "towards"
    assert json.loads((tmp_path / "out" / "domain_shift.json").read_text())["measured"]["train"]["benign"] == 10
    assert "| site |" in (tmp_path / "out" / "domain_shift.md").read_text()
    other = _prepared(tmp_path / "other", {"nevus": 4, "melanoma": 4})
    with pytest.raises(DermsynthError, match="classes"):
        run_domain_shift(prepared, soft, [other], tmp_path / "out2", synthetic_preprocess=False, progress=False)
    code, _, err = run_cli(["domain-shift", "--real", str(prepared), "--synthetic", str(soft), "--external",
                            str(site), "--out", str(tmp_path / "out3"), "--fraction", "0"], capsys)
    assert code == 2 and "--fraction must be in (0, 1]" in err and "Traceback" not in err


def _features(rng: np.random.Generator, n: int, centre: float, dims: int = 8) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(centre, 1.0, (n, dims)), np.arange(n) % 2


def test_feature_margin_reads_the_direction_and_the_mixture_is_exact():
    from dermsynth.audit.domain_shift import feature_shift, gaussian, mixture

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (3000, 3)), rng.normal(2, 0.5, (3000, 3))
    mean, cov = mixture(gaussian(a), gaussian(b), 0.5)
    pooled_mean, pooled_cov = gaussian(np.concatenate([a, b]))
    assert np.allclose(mean, pooled_mean) and np.allclose(cov, pooled_cov, atol=2e-3)

    train, site = _features(rng, 400, 0.0), _features(rng, 400, 1.5)
    towards = feature_shift(train, _features(rng, 400, 1.5), {"site": site}, CLASSES)["site"]["summary"]
    away = feature_shift(train, _features(rng, 400, -1.5), {"site": site}, CLASSES)["site"]["summary"]
    assert towards["margin"] > 0 and 0 < towards["relative_margin"] < 1 and "gain" in towards["prediction"]
    assert away["margin"] < 0 and "loss" in away["prediction"]
    assert towards["distance_synthetic"] < towards["distance_mix"] < towards["distance_train"]


def test_domain_shift_in_a_classifier_s_feature_space(tmp_path, capsys):
    from dermsynth.classify.classifiers import build_classifier, save_classifier

    prepared = _prepared(tmp_path / "prep", {"benign": 12, "malignant": 12})
    site = _blurred_copy(prepared, tmp_path / "site", 1.2)
    soft = _blurred_copy(prepared, tmp_path / "soft", 1.2, flat=True)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tiny = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}
    save_classifier(build_classifier("cnn", CLASSES, 32, tiny), tmp_path / "clf")
    code, out, err = run_cli(["domain-shift", "--real", str(prepared), "--synthetic", str(soft), "--external",
                              str(site), "--out", str(tmp_path / "out"), "--features", f"classifier:{tmp_path / 'clf'}",
                              "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "domain_shift.json").read_text())
    summary = result["feature_shift"]["site"]["summary"]
    # The synthetic images are the site's images (blurred alike): the mix is nearer the site than training is.
    assert summary["distance_synthetic"] < summary["distance_mix"] < summary["distance_train"]
    assert summary["margin"] > 0 and "gain" in summary["prediction"]
    assert "in feature space" in out and "penultimate features" in result["feature_space"]
    assert "The same in a feature space" in (tmp_path / "out" / "domain_shift.md").read_text()
    code, _, err = run_cli(["domain-shift", "--real", str(prepared), "--synthetic", str(soft), "--external",
                            str(site), "--out", str(tmp_path / "out2"), "--features", "classifier:nowhere"], capsys)
    assert code == 2 and "classifier folder not found" in err and not (tmp_path / "out2").exists()


def _site(margin: float, feature_margin: float) -> tuple[dict, dict]:
    summary = {"distance_train": 0.5, "distance_mix": 0.5 - margin, "distance_synthetic": 0.9, "margin": margin}
    features = {"distance_train": 100.0, "distance_mix": 100.0 - feature_margin, "distance_synthetic": 150.0,
                "margin": feature_margin, "relative_margin": feature_margin / 100}
    return ({"summary": summary, "per_class": {}, "rows": [], "sentence": f"margin {margin:+.2f}"},
            {"summary": features, "per_class": {}})


def _comparison(diff: float, lo: float, hi: float) -> dict:
    return {"regime": "hybrid:0.5", "source": "syn", "baseline": "real", "metric": "auroc", "diff": diff,
            "ci_lo": lo, "ci_hi": hi, "seeds": 3, "seeds_better": 3 if diff > 0 else 0}


def test_report_sets_each_margin_beside_the_change_validate_measured(tmp_path):
    from dermsynth.report.build import build_report
    from dermsynth.report.folder import RunFolder
    from dermsynth.report.sections.domain_shift import domain_shift_section

    run = tmp_path / "run"
    (run / "domain_shift").mkdir(parents=True)
    (run / "validation").mkdir()
    sites = {"up": _site(+0.1, +20), "down": _site(+0.1, -30), "flat": _site(-0.1, -5), "unseen": _site(-0.2, 4)}
    record = {"fraction": 0.5, "synthetic": "syn", "statistics": list(SHIFT_STATISTICS),
              "sites": {name: value[0] for name, value in sites.items()}, "feature_space": "tiny CNN",
              "feature_shift": {name: value[1] for name, value in sites.items()}}
    (run / "domain_shift" / "domain_shift.json").write_text(json.dumps(record))
    summary = {"regimes": [], "comparisons": [], "external": {
        "up": {"comparisons": [_comparison(0.08, 0.02, 0.14)]},
        "down": {"comparisons": [_comparison(-0.07, -0.12, -0.01)]},
        "flat": {"comparisons": [_comparison(0.01, -0.04, 0.05)]}}}
    (run / "validation" / "summary.json").write_text(json.dumps(summary))

    section = domain_shift_section(RunFolder(run))
    rows = {row[0]: row for row in section["table"]["rows"]}
    assert rows["up"][-1] == "gain" and rows["up"][-3] == "gain / gain" and rows["up"][-2].startswith("+8.0 [+2.0")
    assert rows["down"][-1] == "loss" and rows["down"][-3] == "gain / loss"
    assert rows["flat"][-1] == "no clear change" and rows["unseen"][-2:] == ["not run", "not measured"]
    assert rows["down"][4] == "-30 %"
    # Two clear changes, two margins each: right on "up" twice and on "down" once.
    assert "guessed the sign 3 of 4 times" in section["verdict"]
    html, md = build_report(run)
    assert "Where the shift goes" in html.read_text() and "guessed the sign 3 of 4" in md.read_text()
