"""The validate stage end to end on tiny data and tiny models: outputs, leaks, mixing, resume, bad input, CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermsynth.config import validate_config
from dermsynth.data.config import PrepareConfig, PreprocessConfig
from dermsynth.data.prepare import prepare
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.datasets import check_no_leak
from dermsynth.evaluate.regimes import apportion, compose, parse_regime, round_half_up, synthetic_counts
from dermsynth.evaluate.validate import validate

from .conftest import lesion_image, one_line_error, save_jpeg

TINY_CNN = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}
TINY_TRAIN = {"epochs": 2, "batch_size": 16, "precision": "no"}
CLASSES = ["benign", "malignant"]


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Path:
    return make_prep(tmp_path_factory.mktemp("ham-val"))


def make_prep(base: Path) -> Path:
    """A prepared HAM10000-style set at 16 px: 64 images of 32 lesions, half malignant, split by lesion."""
    root = base / "ham"
    rows = []
    for i in range(64):
        dx = ["nv", "mel", "bkl", "bcc"][(i // 2) % 4]
        image_id = f"ISIC_{4000000 + i}"
        save_jpeg(root / "images" / f"{image_id}.jpg", seed=700 + i, malignant=dx in ("mel", "bcc"), size=(40, 32))
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                     "age": "50.0", "sex": "male", "localization": "back"})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    out = base / "prep"
    config = PrepareConfig(dataset="ham10000", root=root, preprocess=PreprocessConfig(image_size=16), workers=1,
                           split={"val": 0.25, "test": 0.25, "seed": 0})
    prepare(config, out, progress=False)
    return out


def make_synthetic(root: Path, per_class: int = 40, classes=CLASSES, size: int = 24, nested: bool = True) -> Path:
    """SYN/images/<class>/*.png (as `generate` writes them) at a size unlike the real images."""
    base = root / "images" if nested else root
    for label in classes:
        for i in range(per_class):
            path = base / label / f"{label}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lesion_image(9000 + 100 * len(label) + i, (size, size), label == "malignant")).save(path)
    return root


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "syn")


def config(prep: Path, *synthetic: Path, **settings) -> dict:
    base = {"real": prep, "synthetic": list(synthetic), "model": "cnn", "architecture": TINY_CNN,
            "train": TINY_TRAIN, "bootstrap": 100, "seeds": 1, "regimes": ["real"], "device": "cpu",
            "threads": 1}
    return base | settings


def copy_prep(prep: Path, tmp_path: Path) -> Path:
    target = tmp_path / "prep-copy"
    shutil.copytree(prep, target)
    return target


# --------------------------------------------------------------------------- end to end


def test_validate_writes_runs_summary_and_scorable_predictions(prep, syn, tmp_path):
    result = validate(config(prep, syn, regimes=["real", "hybrid:0.5", "synthetic"], seeds=2), tmp_path / "v",
                      progress=False)
    root = tmp_path / "v" / "validation"
    assert len(result.ran) == 6 and not result.skipped
    truth = pd.read_csv(root / "test_truth.csv", dtype={"image": str})
    for regime in ("real", "hybrid-0.5", "synthetic"):
        for seed in ("0", "1"):
            run = root / regime / seed
            predictions = pd.read_csv(run / "predictions.csv", dtype={"image": str})
            assert list(predictions.columns) == ["image", *CLASSES]
            assert sorted(predictions["image"]) == sorted(truth["image"])  # real test images only, each once
            assert np.allclose(predictions[CLASSES].sum(axis=1), 1, atol=1e-5)
            history = pd.read_csv(run / "history.csv")
            assert {"train_loss", "val_auroc", "test_accuracy", "test_auroc"} <= set(history.columns)
            metrics = json.loads((run / "metrics.json").read_text())
            assert set(metrics["test"]) >= {"accuracy", "balanced_accuracy", "auroc", "pauc_sens80", "sensitivity",
                                            "specificity", "f1"}
            assert metrics["test_image_ci"]["auroc"][0] <= metrics["test_image_ci"]["auroc"][1]
            assert 0 <= metrics["threshold"] <= 1
    hybrid = json.loads((root / "hybrid-0.5" / "0" / "metrics.json").read_text())
    n_real = json.loads((root / "real" / "0" / "metrics.json").read_text())["train_images"]
    assert hybrid["train_images"] == n_real and hybrid["train_synthetic"] == round_half_up(0.5 * n_real)
    summary = pd.read_csv(root / "summary.csv")
    assert set(summary["regime"]) == {"real", "hybrid:0.5", "synthetic"} and (summary["seeds"] == 2).all()
    comparisons = pd.read_csv(root / "comparisons.csv")
    assert set(comparisons["regime"]) == {"hybrid:0.5", "synthetic"}
    assert "| real |" in (root / "summary.md").read_text()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # its CSV reader uses DataFrame.applymap
def test_predictions_score_with_isic_challenge_scoring(prep, tmp_path):
    classification = pytest.importorskip("isic_challenge_scoring.classification")
    validate(config(prep), tmp_path / "v", progress=False)
    root = tmp_path / "v" / "validation"
    with open(root / "test_truth.csv") as truth, open(root / "real" / "0" / "predictions.csv") as predictions:
        score = classification.ClassificationScore.from_stream(truth, predictions,
                                                               classification.ClassificationMetric.AUC)
    ours = json.loads((root / "real" / "0" / "metrics.json").read_text())["test"]
    assert abs(score.per_category.loc["malignant", "auc"] - ours["auroc"]) < 1e-6


def test_same_seed_same_metrics(prep, syn, tmp_path):
    settings = config(prep, syn, regimes=["hybrid:0.5"])
    first = validate(settings, tmp_path / "a", progress=False).summary
    second = validate(settings, tmp_path / "b", progress=False).summary
    pd.testing.assert_frame_equal(first, second)
    a, b = (json.loads((tmp_path / x / "validation" / "hybrid-0.5" / "0" / "metrics.json").read_text())["test"]
            for x in ("a", "b"))
    assert a == b


def test_resume_skips_finished_runs_and_restarts_partial_ones(prep, tmp_path):
    settings = config(prep, seeds=2)
    first = validate(settings, tmp_path / "v", progress=False)
    assert len(first.ran) == 2
    again = validate(settings, tmp_path / "v", progress=False)
    assert again.ran == [] and len(again.skipped) == 2
    partial = tmp_path / "v" / "validation" / "real" / "1"
    (partial / "metrics.json").unlink()
    (partial / "leftover.tmp").write_text("from a killed run")
    resumed = validate(settings, tmp_path / "v", progress=False)
    assert resumed.ran == ["real seed 1"] and resumed.skipped == ["real seed 0"]
    assert not (partial / "leftover.tmp").exists() and (partial / "metrics.json").exists()
    changed = validate(config(prep, seeds=2, train=TINY_TRAIN | {"learning_rate": 1e-4}), tmp_path / "v",
                       progress=False)
    assert len(changed.ran) == 2  # other settings: not the same runs


# --------------------------------------------------------------------------- guarantees


def test_patient_leak_between_splits_raises(prep, tmp_path):
    leaky = copy_prep(prep, tmp_path)
    metadata = pd.read_csv(leaky / "metadata.csv", dtype=str)
    train_lesion = metadata.loc[metadata["split"] == "train", "lesion_id"].iloc[0]
    metadata.loc[metadata.index[metadata["split"] == "test"][0], "lesion_id"] = train_lesion
    metadata.to_csv(leaky / "metadata.csv", index=False)
    with pytest.raises(DermsynthError, match="patient leak: train and test share 1"):
        validate(config(leaky), tmp_path / "v", progress=False)


def test_synthetic_images_never_enter_val_or_test(prep, tmp_path):
    frame = pd.DataFrame({"image_id": ["a", "b"], "path": ["a", "b"], "target": [0, 1], "group": ["g1", "g2"],
                          "synthetic": [False, True]})
    with pytest.raises(DermsynthError, match="synthetic images in the val split"):
        check_no_leak({"train": frame.iloc[:1], "val": frame})
    copies = make_synthetic(tmp_path / "copies", per_class=2)
    test_image = pd.read_csv(prep / "metadata.csv").query("split == 'test'")["path"].iloc[0]
    shutil.copy(prep / test_image, copies / "images" / "benign" / "copy_of_test.png")
    with pytest.raises(DermsynthError, match="pixel copy of held-out image"):
        validate(config(prep, copies, regimes=["real", "hybrid:0.5"]), tmp_path / "v", progress=False)


@pytest.mark.parametrize("n_real", [37, 40])
def test_mixing_ratio_is_exact_and_nested(n_real):
    real = pd.DataFrame({"image_id": [f"r{i}" for i in range(n_real)], "path": "", "group": "",
                         "target": [int(i % 4 == 0) for i in range(n_real)], "synthetic": False})
    pool = pd.DataFrame({"image_id": [f"s{i}" for i in range(80)], "path": "", "group": "syn",
                         "target": [i % 2 for i in range(80)], "synthetic": True})
    previous_synthetic: set[str] = set()
    for fraction in (0.0, 0.1, 0.25, 0.5, 0.77, 1.0):
        train = compose(parse_regime(f"hybrid:{fraction}"), real, pool, CLASSES, seed=3)
        assert len(train) == n_real
        assert train["synthetic"].sum() == round_half_up(fraction * n_real)
        assert train.groupby("target").size().tolist() == real.groupby("target").size().tolist()
        synthetic_ids = set(train.loc[train["synthetic"], "image_id"])
        assert previous_synthetic <= synthetic_ids  # a bigger fraction extends the smaller one's draw
        previous_synthetic = synthetic_ids
    assert compose(parse_regime("synthetic"), real, pool, CLASSES, 3)["synthetic"].all()
    added = compose(parse_regime("add:12"), real, pool, CLASSES, 3)
    assert len(added) == n_real + 12 and set(real["image_id"]) <= set(added["image_id"])
    balanced = compose(parse_regime("add:12"), real, pool, CLASSES, 3, class_mix="balanced")
    real_counts = real.groupby("target").size().tolist()
    assert balanced.loc[balanced["synthetic"]].groupby("target").size().reindex([0, 1], fill_value=0).tolist() == \
        synthetic_counts(parse_regime("add:12"), real_counts, "balanced")
    assert synthetic_counts(parse_regime("add:12"), [30, 10], "balanced") == [0, 12]
    assert apportion(7, [3, 1, 1]) == [4, 2, 1] and sum(apportion(10, [1, 1, 1])) == 10


def test_bad_regimes_are_clear_errors(prep, tmp_path):
    for text in ("hybrid:1.5", "hybrid:-0.1", "hybrid:half", "add:0", "add:-3", "mixed", "real:1"):
        with pytest.raises(DermsynthError):
            parse_regime(text)
    with pytest.raises(DermsynthError, match=r"regimes: .*fraction must be a number in \[0, 1\]"):
        validate_config(ValidateConfig, {"real": "x", "regimes": ["real", "hybrid:2"]})
    with pytest.raises(DermsynthError, match="architecture: unknown"):
        validate(config(prep, architecture={"hiden_sizes": [8]}), tmp_path, progress=False)


def test_synthetic_folder_problems(prep, tmp_path):
    regimes = ["real", "hybrid:0.5"]
    extra = make_synthetic(tmp_path / "extra", per_class=3, classes=["benign", "nevus"])
    with pytest.raises(DermsynthError, match="class folder 'nevus' is not a class of the real data"):
        validate(config(prep, extra, regimes=regimes), tmp_path / "v", progress=False)
    empty = tmp_path / "empty"
    (empty / "benign").mkdir(parents=True)
    with pytest.raises(DermsynthError, match="no PNG/JPEG images"):
        validate(config(prep, empty, regimes=regimes), tmp_path / "v", progress=False)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DermsynthError, match="no class sub-folders"):
        validate(config(prep, tmp_path / "flat", regimes=regimes), tmp_path / "v", progress=False)
    with pytest.raises(DermsynthError, match="synthetic folder not found"):
        validate(config(prep, tmp_path / "missing", regimes=regimes), tmp_path / "v", progress=False)
    with pytest.raises(DermsynthError, match="needs at least one --synthetic"):
        validate(config(prep, regimes=regimes), tmp_path / "v", progress=False)
    few = make_synthetic(tmp_path / "few", per_class=2)
    with pytest.raises(DermsynthError, match=r"needs \d+ synthetic 'benign' images, but the synthetic folder has 2"):
        validate(config(prep, few, regimes=regimes), tmp_path / "v", progress=False)


def test_unreadable_synthetic_images_are_skipped_with_a_warning(prep, tmp_path):
    folder = make_synthetic(tmp_path / "syn", per_class=30, nested=False)  # flat SYN/<class>/ layout, no manifest
    (folder / "benign" / "broken.png").write_bytes(b"not a png")
    (folder / "malignant" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        result = validate(config(prep, folder, regimes=["hybrid:0.5"]), tmp_path / "v", progress=False)
    assert len(result.ran) == 1
    broken = tmp_path / "all-broken"
    (broken / "benign").mkdir(parents=True)
    (broken / "benign" / "x.png").write_bytes(b"junk")
    with pytest.raises(DermsynthError, match="none of its images could be read"), pytest.warns(UserWarning):
        validate(config(prep, broken, regimes=["hybrid:0.5"]), tmp_path / "v2", progress=False)


def test_single_class_test_split_gives_marked_nan_metrics(prep, tmp_path):
    single = copy_prep(prep, tmp_path)
    metadata = pd.read_csv(single / "metadata.csv", dtype=str)
    metadata = metadata[~((metadata["split"] == "test") & (metadata["label"] == "malignant"))]
    metadata.to_csv(single / "metadata.csv", index=False)
    with pytest.warns(UserWarning, match="test split holds a single class"):
        validate(config(single), tmp_path / "v", progress=False)
    metrics = json.loads((tmp_path / "v" / "validation" / "real" / "0" / "metrics.json").read_text())
    assert metrics["test"]["auroc"] is None and "auroc" in metrics["undefined"]
    assert metrics["test"]["accuracy"] is not None and not math.isnan(metrics["test"]["accuracy"])


def test_limited_data_subsample(prep, syn, tmp_path):
    result = validate(config(prep, syn, regimes=["real", "add:6"], real_per_class=4), tmp_path / "v",
                      progress=False)
    counts = result.summary.set_index("regime")[["train_images", "train_synthetic"]]
    assert counts.loc["real"].tolist() == [8, 0] and counts.loc["add:6"].tolist() == [14, 6]
    with pytest.raises(DermsynthError, match="real_per_class=500, but class 'benign' has only"):
        validate(config(prep, real_per_class=500), tmp_path / "v", progress=False)


# --------------------------------------------------------------------------- CLI and configs



def test_cli_user_mistakes_are_one_line_errors(cli, prep, syn, tmp_path):
    out = tmp_path / "o"
    assert "prepared dataset not found" in one_line_error(cli, "validate", "--real", tmp_path / "nope", "--out", out)
    assert "hybrid:2" in one_line_error(cli, "validate", "--real", prep, "--out", out, "--regimes", "real,hybrid:2")
    assert "model must be cnn, vit" in one_line_error(cli, "validate", "--real", prep, "--out", out, "--model",
                                                       "no-such-model", "--regimes", "real")
    bad = make_synthetic(tmp_path / "bad", per_class=1, classes=["melanoma"])
    assert "not a class of the real data" in one_line_error(cli, "validate", "--real", prep, "--out", out,
                                                             "--synthetic", bad)
    yaml_file = tmp_path / "v.yaml"
    yaml_file.write_text("real: x\nseeds: 0\n")
    assert "seeds" in one_line_error(cli, "validate", "--real", prep, "--out", out, "--config", yaml_file)
    assert "--real PREPARED_FOLDER" in one_line_error(cli, "validate", "--out", out)



def test_cli_runs_from_a_yaml_config(cli, prep, syn, tmp_path):
    yaml_file = tmp_path / "v.yaml"
    yaml_file.write_text(yaml.safe_dump({"real": str(prep), "architecture": TINY_CNN, "train": TINY_TRAIN,
                                         "bootstrap": 100, "threads": 1}))
    # the real data from the YAML (as in configs/validate-*.yaml), no --real
    code, stdout, stderr = cli("validate", "--synthetic", syn, "--out", tmp_path / "o", "--config",
                               yaml_file, "--regimes", "real,hybrid:0.25", "--seeds", "1", "--quiet")
    assert code == 0, stderr
    assert "hybrid:0.25" in stdout and "2 run(s) trained" in stdout


def test_shipped_configs_are_valid():
    configs = sorted((Path(__file__).parents[1] / "configs").glob("validate-*.yaml"))
    assert configs
    for path in configs:
        validate_config(ValidateConfig, yaml.safe_load(path.read_text()), source=path.name)


def test_import_and_help_do_not_import_torch():
    code = ("import sys, dermsynth; from dermsynth.cli import app; from typer.testing import CliRunner; "
            "out = CliRunner().invoke(app, ['--help']).output; assert 'validate' in out; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_validate_fine_tunes_a_pretrained_checkpoint_folder(prep, tmp_path):
    from dermsynth.classify.classifiers import build_classifier, save_classifier

    tiny_vit = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                "patch_size": 4}
    folder = save_classifier(build_classifier("vit", ["a", "b", "c"], 16, tiny_vit), tmp_path / "vit")
    result = validate(config(prep, model=str(folder), architecture={}, train={"epochs": 1, "learning_rate": 1e-3},
                             save_checkpoint=True), tmp_path / "v", progress=False)
    run = tmp_path / "v" / "validation" / "real" / "0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["settings"]["weight_decay"] == 0.01 and metrics["settings"]["batch_size"] == 32  # reference study
    assert (run / "checkpoint" / "model.safetensors").is_file() and len(result.ran) == 1
