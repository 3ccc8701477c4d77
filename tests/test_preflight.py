"""The plan before any compute (`dermsynth run --dry-run`) and the refusals that keep a study from failing late:
a prepare without its reader, a run config without a dataset, a fine-tune above the prepared size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import one_line_error
from tests.standins import ham10000_standin, isic2020_standin

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def isic(tmp_path_factory) -> Path:
    return isic2020_standin(tmp_path_factory.mktemp("data") / "ISIC2020")


def test_dry_run_prints_the_plan_of_the_reference_study(isic, tmp_path, cli, monkeypatch):
    from dermsynth.testing.tiny_sd import build_tiny_pipeline

    build_tiny_pipeline(seed=0).save_pretrained(tmp_path / "sd15")
    code, stdout, stderr = cli("run", REPO / "configs" / "isic2020-dreambooth.yaml", "--dry-run",
                               "--set", f"prepare.root={isic}", "--set", f"finetune.base={tmp_path / 'sd15'}",
                               "--set", "validate.real_per_class=4", "--out", tmp_path / "run")
    assert code == 0, stdout + stderr
    assert "reader isic2020" in stdout and "-> 512 px" in stdout
    assert re.search(r"train benign (\d+), malignant (\d{1,2});", stdout)  # the stand-in's ~98/2 imbalance
    assert "dreambooth at 512 px, 1200 steps; the model makes benign, malignant" in stdout
    assert "generate  makes benign 1000, malignant 1000" in stdout
    assert "hybrid:0.5: takes synthetic benign" in stdout and "Nothing above stops the study." in stdout
    assert not (tmp_path / "run").exists()  # nothing computed, nothing written


def test_dry_run_lists_every_problem_and_exits_2(isic, tmp_path, cli):
    code, stdout, _ = cli("run", REPO / "configs" / "isic2020-sd15-lora.yaml", "--dry-run",
                          "--set", f"prepare.root={isic}", "--set", "prepare.preprocess.image_size=256",
                          "--set", "validate.regimes=[real, hybrid:0.5]", "--out", tmp_path / "run")
    assert code == 2
    assert "base models/stable-diffusion-v1-5: no such local folder, so read as a hub id" in stdout
    assert "finetune: trains at 512 px but prepare makes 256 px images" in stdout
    assert "the model makes no 'benign' images" in stdout
    assert "2 problem(s)" in stdout


def test_a_run_without_a_dataset_is_a_one_line_error_and_prepared_names_one(tmp_path, cli):
    config = tmp_path / "study.yaml"
    config.write_text("validate: {regimes: [real]}\n")
    assert "no prepare section" in one_line_error(cli, "run", config, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    prepared = tmp_path / "prep"
    assert cli("prepare", "--root", ham10000_standin(tmp_path / "HAM"), "--image-size", "16", "--out", prepared,
               "--quiet")[0] == 0
    config.write_text(json.dumps({"prepared": str(prepared), "report": False, "validate": {
        "regimes": ["real"], "seeds": 1, "image_size": 16, "bootstrap": 100, "train": {"epochs": 1},
        "architecture": {"hidden_sizes": [8, 16], "embedding_size": 8, "depths": [1, 1]}}}))
    code, _, stderr = cli("run", config, "--out", tmp_path / "run")
    assert code == 0, stderr
    assert (tmp_path / "run" / "prepared").resolve() == prepared.resolve()
    assert (tmp_path / "run" / "validation" / "summary.json").is_file()
    assert not (prepared / ".stage.json").exists()  # nothing written into the user's folder


def test_prepare_root_without_dataset_infers_the_reader_or_refuses(tmp_path, cli):
    code, stdout, stderr = cli("prepare", "--root", ham10000_standin(tmp_path / "HAM"), "--image-size", "16",
                               "--out", tmp_path / "prep", "--quiet")
    assert code == 0 and "dataset: ham10000 (inferred from HAM10000_metadata.csv" in stdout + stderr
    assert json.loads((tmp_path / "prep" / "prepare.json").read_text())["settings"]["dataset"] == "ham10000"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("not a dataset")
    line = one_line_error(cli, "prepare", "--root", tmp_path / "odd", "--out", tmp_path / "p2")
    assert "given without dataset" in line and "--dataset" in line and not (tmp_path / "p2").exists()


def test_finetune_above_the_prepared_size_is_refused_unless_allowed(tmp_path, cli):
    from dermsynth.testing.tiny_sd import build_tiny_pipeline
    from tests.test_diffusion_scratch import make_prepared

    build_tiny_pipeline(seed=0).save_pretrained(tmp_path / "sd")
    prepared = make_prepared(tmp_path / "prep", size=32)
    common = ["finetune", "--method", "lora", "--base", tmp_path / "sd", "--data", prepared, "--resolution", "64",
              "--max-steps", "1", "--quiet"]
    line = one_line_error(cli, *common, "--out", tmp_path / "m")
    assert "holds 32 px images but finetune trains at 64 px" in line and "--allow-upsample" in line
    assert not (tmp_path / "m").exists()
    code, _, stderr = cli(*common, "--allow-upsample", "--out", tmp_path / "m2")
    assert code == 0, stderr


def test_a_train_file_for_another_preset_is_refused(tmp_path, cli):
    line = one_line_error(cli, "train", "--data", tmp_path, "--out", tmp_path / "m", "--preset", "cpu-fast",
                          "--config", REPO / "configs" / "train-gpu.yaml")
    assert "written for preset 'gpu' but --preset is 'cpu-fast'" in line


def test_set_overrides_reach_the_config_and_bad_ones_are_one_line(tmp_path, cli):
    from dermsynth.pipeline import load_run_config

    config = load_run_config(REPO / "configs" / "demo.yaml", ["generate.per_class=7", "validate.seeds=1"])
    assert config.generate.per_class == 7 and config.validate_.seeds == 1
    assert "--set takes KEY=VALUE" in one_line_error(cli, "run", REPO / "configs" / "demo.yaml", "--set", "seeds",
                                                     "--dry-run")


def test_a_real_per_class_above_the_smallest_class_is_refused_before_any_compute(isic, tmp_path, cli):
    code, stdout, _ = cli("run", REPO / "configs" / "isic2020-dreambooth.yaml", "--dry-run",
                          "--set", f"prepare.root={isic}", "--out", tmp_path / "run")
    assert code == 2 and re.search(r"real_per_class 300 but class 'malignant' has \d+ training images", stdout)
