"""Every config in configs/ runs to the end, on tiny stand-ins: a tiny Stable Diffusion built from configs, the tiny
scratch presets, and small datasets in each reader's layout (ISIC 2020 with its real ~98/2 class imbalance).

Only sizes and step counts are changed (image sizes, model widths, steps, epochs, seeds, where the data and base
model are, and fp16 to fp32 on a CPU); never a regime, a class list or a method. A shipped config that cannot
finish then fails here. One test per file: the list is read from the folder, so a new config gets its test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dermsynth.config import read_yaml, validate_config
from dermsynth.pipeline import STAGE_KEYS, RunConfig, run_pipeline
from tests.conftest import lesion_image
from tests.standins import ham10000_standin, isic2020_standin, tiny_vit

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))

TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [1], "attention_head_dim": 8,
             "norm_num_groups": 8}
TINY_STEPS = {"batch_size": 8, "max_steps": 4, "max_minutes": None, "sample_every": 4, "samples_per_class": 1,
              "sample_steps": 2, "checkpoint_every": 4, "warmup_steps": 1}
TINY_AUTOENCODER = {"block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 3, "crop_size": 16,
                    "batch_size": 4, "max_steps": 3, "max_minutes": None, "checkpoint_every": 3, "warmup_steps": 1,
                    "eval_images": 2}
TINY_CLASSIFIERS = {"cnn": {"hidden_sizes": [8, 16], "embedding_size": 8, "depths": [1, 1]},
                    "vit": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 32}}
TINY_REAL_PER_CLASS = 4  # the ISIC stand-in's malignant training images
SD_SIZE = 64  # the tiny VAE's 8x8 latents
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, Path]:
    from dermsynth.data.config import PrepareConfig
    from dermsynth.data.prepare import prepare
    from dermsynth.testing.tiny_sd import build_tiny_pipeline

    root = tmp_path_factory.mktemp("standins")
    found = {"isic2020": isic2020_standin(root / "isic2020"), "ham10000": ham10000_standin(root / "ham10000")}
    build_tiny_pipeline(seed=0).save_pretrained(root / "tiny-sd")
    found["tiny-sd"] = root / "tiny-sd"
    for name, dataset in (("prep-ham", "ham10000"), ("prep-isic", "isic2020")):
        prepare(PrepareConfig(dataset=dataset, root=found[dataset], preprocess={"image_size": IMAGE_SIZE}),
                root / name, progress=False)
        found[name] = root / name
    prepare(PrepareConfig(dataset="sample", max_images=80, preprocess={"image_size": IMAGE_SIZE}), root / "prep-uda1",
            progress=False)
    found["prep-uda1"] = root / "prep-uda1"
    found["synthetic"] = _synthetic_folder(root / "synthetic", per_class=1500)
    found["vit"] = tiny_vit(root / "vit", ["benign", "malignant"], image_size=IMAGE_SIZE)
    return found


def _synthetic_folder(root: Path, per_class: int) -> Path:
    """Someone else's synthetic images: class folders of PNGs (more than any shipped regime takes)."""
    for target, label in enumerate(("benign", "malignant")):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = lesion_image(100_000 * (target + 1) + i, (IMAGE_SIZE, IMAGE_SIZE), malignant=bool(target))
            Image.fromarray(image).save(root / label / f"{label}-{i:05d}.png")
    return root


# --------------------------------------------------------------------------- what each kind of file shrinks to


def kind_of(data: dict[str, Any], path: Path) -> str:
    if "regimes" in data or "real" in data:  # before the run check: a validate file's train: is its classifiers'
        return "validate"
    if any(key in data for key in STAGE_KEYS):
        return "run"
    if path.name.startswith("train-"):
        return "train"
    if "method" in data:
        return "finetune"
    raise AssertionError(f"{path.name}: a config of no known kind; teach this test how to run it")


TINY_SUPER_RESOLUTION = {"factor": 2, "block_out_channels": [16, 32], "norm_num_groups": 8, "crop_size": 16,
                         "batch_size": 4, "max_steps": 4, "sample_every": 1000, "sample_steps": 2, "warmup_steps": 1}


def tiny_train_settings(settings: dict[str, Any], preset: str) -> dict[str, Any]:
    if preset.endswith(("cascade-128", "cascade-256")):  # a base at half the size, then a 2x stage
        base = settings.get("base") or {}
        return {**settings, "image_size": IMAGE_SIZE,
                "base": {**base, **TINY_STEPS, "model": {**base.get("model", {}), **TINY_UNET, "image_size": 16}},
                "super_resolution": {**(settings.get("super_resolution") or {}), **TINY_SUPER_RESOLUTION}}
    latent = preset.startswith(("cpu-latent", "gpu-latent")) or "autoencoder" in settings
    tiny = {**settings, **TINY_STEPS,
            "model": {**settings.get("model", {}), **TINY_UNET, "image_size": IMAGE_SIZE if latent else 16}}
    if latent:
        tiny["autoencoder"] = {**(settings.get("autoencoder") or {}), **TINY_AUTOENCODER}
    return tiny


def tiny_finetune(settings: dict[str, Any], base: Path) -> dict[str, Any]:
    sample = {**settings.get("sample", {}), "steps": 2}
    return {**settings, "base": str(base), "resolution": SD_SIZE, "max_steps": 2, "num_class_images": 2,
            "precision": "no", "train_batch_size": 1, "gradient_accumulation_steps": 1, "sample": sample,
            "checkpointing_steps": 1000, "lr_warmup_steps": 0}


def tiny_validate(settings: dict[str, Any], standins: dict[str, Path]) -> dict[str, Any]:
    model = settings.get("model", "cnn")
    if settings.get("real_per_class"):
        settings = {**settings, "real_per_class": TINY_REAL_PER_CLASS}
    tiny = {**settings, "image_size": IMAGE_SIZE, "seeds": 1, "bootstrap": 100, "device": "cpu",
            "train": {**settings.get("train", {}), "epochs": 1, "batch_size": 16}}
    if model in TINY_CLASSIFIERS:
        tiny["architecture"] = {**settings.get("architecture", {}), **TINY_CLASSIFIERS[model]}
    else:  # a pretrained checkpoint folder: the tiny ViT stands in for it
        tiny["model"] = str(standins["vit"])
    if "extra_synthetic" in settings:
        tiny["extra_synthetic"] = [str(standins["synthetic"]) for _ in settings["extra_synthetic"]]
    return tiny


def tiny_run(data: dict[str, Any], standins: dict[str, Path]) -> dict[str, Any]:
    tiny = copy.deepcopy(data)
    if tiny.get("real_per_class"):  # a data size: the stand-ins hold ~30 training images per class
        tiny["real_per_class"] = TINY_REAL_PER_CLASS
    prep = tiny.get("prepare")
    if prep is not None:
        if prep.get("dataset", "sample") == "sample":
            prep["max_images"] = 120
        else:
            prep["root"] = str(standins[prep["dataset"]])
        size = SD_SIZE if "finetune" in tiny else IMAGE_SIZE
        prep["preprocess"] = {**prep.get("preprocess", {}), "image_size": size}
    if "train" in tiny:
        stage = tiny["train"]
        stage["settings"] = tiny_train_settings(stage.get("settings", {}), stage.get("preset", "cpu-fast"))
    if "finetune" in tiny:
        tiny["finetune"] = tiny_finetune(tiny["finetune"], standins["tiny-sd"])
    if "generate" in tiny:
        tiny["generate"] = {**tiny["generate"], "steps": 2, "batch_size": 64}
    if "audit" in tiny:
        tiny["audit"] = {**(tiny["audit"] or {}), "image_size": IMAGE_SIZE, "classifier_epochs": 1,
                         "kid_subsets": 2, "positive_controls": 4, "c2st_folds": 2, "c2st_epochs": 1}
    if "validate" in tiny:
        tiny["validate"] = tiny_validate(tiny["validate"], standins)
    return tiny | {"device": "cpu"}


# --------------------------------------------------------------------------- one test per file


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_runs_to_the_end(path, standins, tmp_path):
    data = read_yaml(path)
    kind = kind_of(data, path)
    if kind == "run":
        config = validate_config(RunConfig, tiny_run(data, standins), source=path.name)
        run_pipeline(config, tmp_path / "run")
        assert (tmp_path / "run" / "report.html").is_file()
        if config.validate_ is not None:
            summary = json.loads((tmp_path / "run" / "validation" / "summary.json").read_text())
            assert not summary["missing_runs"]
            assert {r["regime"] for r in summary["regimes"]} == {
                _canonical(r) for r in config.validate_.regimes}
    elif kind == "train":
        from dermsynth.diffusion.training import family_of, train

        preset = family_of(None, path)[1]
        settings = {k: v for k, v in data.items() if k != "preset"}
        result = train(standins["prep-ham"], tmp_path / "model", config=tiny_train_settings(settings, preset) |
                       {"preset": preset}, progress=False)
        stages = 2 if "cascade" in preset else 1
        assert result.info["preset"] == preset and result.steps == TINY_STEPS["max_steps"] * stages
    elif kind == "finetune":
        from dermsynth.diffusion.sd.config import FinetuneConfig
        from dermsynth.diffusion.sd.finetune import finetune

        prep = tmp_path / "prep"
        _prepare_isic(standins, prep, SD_SIZE)
        cfg = validate_config(FinetuneConfig, tiny_finetune(data, standins["tiny-sd"]), source=path.name)
        result = finetune(cfg, tmp_path / "model", prep, progress=False)
        assert result.steps == 2 and result.info["classes"]
    else:
        from dermsynth.evaluate.config import ValidateConfig
        from dermsynth.evaluate.validate import validate

        settings = tiny_validate(data, standins) | {"real": str(standins["prep-ham"])}
        settings["synthetic"] = [str(standins["synthetic"])]
        if "test" in data:
            settings["test"] = [str(standins["prep-uda1"]) for _ in data["test"]]
        validate(validate_config(ValidateConfig, settings, source=path.name), tmp_path / "v", progress=False)
        summary = json.loads((tmp_path / "v" / "validation" / "summary.json").read_text())
        assert not summary["missing_runs"] and len(summary["regimes"]) == len(data["regimes"])


def _canonical(regime: str) -> str:
    from dermsynth.evaluate.regimes import parse_regime

    return parse_regime(regime).name


def _prepare_isic(standins: dict[str, Path], out: Path, size: int) -> None:
    from dermsynth.data.config import PrepareConfig
    from dermsynth.data.prepare import prepare

    prepare(PrepareConfig(dataset="isic2020", root=standins["isic2020"], preprocess={"image_size": size}), out,
            progress=False)


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_accelerate_config_launches_a_study(path, tmp_path):
    """The file as `accelerate launch --config_file` reads it, on this machine's CPU: two processes."""
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({"name": "launch", "prepare": {"dataset": "sample", "max_images": 40,
                                                               "preprocess": {"image_size": 16}},
                                 "validate": {"regimes": ["real"], "seeds": 2, "image_size": 16, "bootstrap": 100,
                                              "architecture": TINY_CLASSIFIERS["cnn"], "train": {"epochs": 1}}}))
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    command = [accelerate, "launch", "--config_file", str(path), "--cpu", "--num_processes", "2",
               "--num_machines", "1", "--machine_rank", "0", "--main_process_port", "29533",
               "-m", "dermsynth", "run", str(study), "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "validation" / "summary.json").read_text())
    assert not summary["missing_runs"] and summary["regimes"][0]["seeds"] == 2


# --------------------------------------------------------------------------- the check fails when it should


def test_a_regime_needing_a_class_the_generator_cannot_make_fails_before_any_compute(standins, tmp_path):
    """Put the old hybrid:0.5 back into the LoRA study (its model makes malignant images only): refused in one line,
    before prepare or the fine-tune start."""
    data = read_yaml(REPO / "configs" / "isic2020-sd15-lora.yaml")
    data["validate"]["regimes"] = ["real", "hybrid:0.5", "add:1000"]
    config = validate_config(RunConfig, tiny_run(data, standins), source="lora")
    from dermsynth.errors import DermsynthError

    with pytest.raises(DermsynthError, match=r"hybrid:0\.5 takes .* synthetic 'benign' images but generate .* "
                                             r"makes 0; the model makes no 'benign' images"):
        run_pipeline(config, tmp_path / "run")
    assert not (tmp_path / "run" / "prepared").exists() and not (tmp_path / "run" / "model").exists()


def test_every_config_file_is_tested():
    kinds = {path.name: kind_of(read_yaml(path), path) for path in CONFIGS}
    assert set(kinds.values()) <= {"run", "train", "finetune", "validate"}
    assert ACCELERATE, "configs/accelerate/ holds the launch configs"
    assert np.all([p.suffix == ".yaml" for p in (REPO / "configs").rglob("*") if p.is_file()])
