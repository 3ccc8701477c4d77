"""One config vocabulary: old field names and values are read for one release, each with one notice line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dermsynth.classify.config import ClassifierTrainConfig as ClassifierConfig
from dermsynth.config import validate_config
from dermsynth.diffusion.scratch.config import RESUMABLE_FIELDS, resolve_train_config
from dermsynth.diffusion.sd.config import FinetuneConfig
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig

from .conftest import one_line_error


def notice(old: str, new: str) -> str:
    return f"deprecated: '{old}' is now '{new}' (the old name is read until the next release)"


FP32 = "deprecated: precision 'fp32' is now 'no' (the old value is read until the next release)"


def err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("old", "new", "value"), [
    ("grad_clip", "max_grad_norm", 0.5), ("min_snr_gamma", "snr_gamma", 3.0), ("mixed_precision", "precision", "no"),
])
def test_scratch_old_names_read_with_one_notice(capsys, old, new, value):
    current = resolve_train_config("gpu", {new: value})
    assert err_lines(capsys) == []
    legacy = resolve_train_config("gpu", {old: value})  # the gpu preset sets snr_gamma: the old name must not clash
    assert err_lines(capsys) == [notice(old, new)]
    assert legacy == current and getattr(legacy, new) == value


@pytest.mark.parametrize(("old", "new", "value"), [
    ("max_train_steps", "max_steps", 7), ("mixed_precision", "precision", "bf16"),
])
def test_finetune_old_names_read_with_one_notice(capsys, old, new, value):
    legacy = validate_config(FinetuneConfig, {"method": "lora", old: value})
    assert err_lines(capsys) == [notice(old, new)]
    assert legacy == validate_config(FinetuneConfig, {"method": "lora", new: value})
    assert err_lines(capsys) == []


def test_classifier_old_names_and_fp32_read_with_one_notice_each(capsys):
    train = {"lr": 1e-3, "grad_clip": 2.0, "precision": "fp32"}
    legacy = validate_config(ValidateConfig, {"real": "p", "train": train})
    assert err_lines(capsys) == [notice("lr", "learning_rate"), notice("grad_clip", "max_grad_norm"), FP32]
    current = ClassifierConfig(learning_rate=1e-3, max_grad_norm=2.0, precision="no")
    assert legacy.train == current


@pytest.mark.parametrize(("model", "data"), [
    (FinetuneConfig, {"max_train_steps": 3, "max_steps": 4}),
    (ValidateConfig, {"real": "p", "train": {"lr": 1e-3, "learning_rate": 1e-3}}),
])
def test_both_spellings_are_one_line_error(capsys, model, data):
    with pytest.raises(DermsynthError) as info:
        validate_config(model, data, source="x.yaml")
    message = str(info.value)
    assert "\n" not in message and "is the old name of" in message and message.startswith("x.yaml: ")
    assert err_lines(capsys) == []


def test_both_spellings_in_a_train_yaml_are_refused():
    with pytest.raises(DermsynthError, match="grad_clip is the old name of max_grad_norm: give only max_grad_norm"):
        resolve_train_config("cpu-fast", {"grad_clip": 0.5, "max_grad_norm": 0.5})


def test_cli_finetune_yaml_old_names_and_options(cli, tmp_path):
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text("max_train_steps: 5\nmixed_precision: fp32\n")
    args = ["finetune", "--method", "lora", "--base", tmp_path / "none", "--out", tmp_path / "f", "--config", yaml_file]
    # The option overrides the old name in the YAML (no "both spellings" error); the base is then missing.
    code, _, stderr = cli(*args, "--max-steps", "3", "--precision", "no")
    lines = stderr.strip().splitlines()
    assert code == 2 and lines[:-1] == [notice("max_train_steps", "max_steps"), notice("mixed_precision", "precision"),
                                        FP32]
    assert lines[-1].startswith("error: base model not found")
    yaml_file.write_text("max_steps: 5\nmax_train_steps: 5\n")
    assert "max_train_steps is the old name of max_steps" in one_line_error(cli, *args)
    yaml_file.write_text("max_steps: 5\n")
    assert "--mixed-precision is the old name of --precision" in one_line_error(
        cli, *args, "--precision", "no", "--mixed-precision", "no")


def test_cli_validate_old_learning_rate_option(cli, tmp_path):
    code, _, stderr = cli("validate", "--out", tmp_path / "v", "--lr", "1e-3")
    assert code == 2 and stderr.strip().splitlines() == [
        "deprecated: --lr is now --learning-rate (the old name is read until the next release)",
        "error: no real data: give --real PREPARED_FOLDER (or `real:` in --config)"]
    assert "--lr is the old name of --learning-rate" in one_line_error(
        cli, "validate", "--out", tmp_path / "v", "--lr", "1e-3", "--learning-rate", "1e-3")


def test_precision_values_each_stage_runs():
    # fp16 needs loss scaling, which only the fine-tuning stage (accelerate) has.
    with pytest.raises(DermsynthError, match=r"^config: precision: Input should be 'auto', 'no' or 'bf16'$"):
        resolve_train_config("cpu-fast", {"precision": "fp16"})
    with pytest.raises(DermsynthError, match=r"^config: train\.precision: Input should be 'auto', 'no' or 'bf16'$"):
        validate_config(ValidateConfig, {"real": "p", "train": {"precision": "fp16"}})
    assert validate_config(FinetuneConfig, {"precision": "auto"}).precision == "auto"


def test_pipeline_train_settings_take_the_current_names_once(capsys):
    from dermsynth.pipeline import RunConfig

    cfg = validate_config(RunConfig, {"prepare": {}, "train": {"preset": "cpu-fast", "settings": {"grad_clip": 0.5}}})
    assert cfg.train.settings == {"max_grad_norm": 0.5}  # the stage hash and the run see the current name
    assert err_lines(capsys) == [notice("grad_clip", "max_grad_norm")]


def test_saved_configs_of_the_previous_release_resume_without_notices(capsys):
    from dermsynth.diffusion.harness import TrainingHarness
    from dermsynth.diffusion.sd.finetune import RESUMABLE

    current = resolve_train_config("cpu-fast", {"max_grad_norm": 0.5, "max_steps": 40})
    saved = current.model_dump(mode="json")
    saved["grad_clip"] = saved.pop("max_grad_norm")
    saved["mixed_precision"] = saved.pop("precision")
    saved["max_steps"] = 20  # a budget: may change on resume
    harness = SimpleNamespace(config=current, loop=SimpleNamespace(resumable=frozenset(RESUMABLE_FIELDS)))
    assert TrainingHarness.changed_settings(harness, saved) == []
    saved["grad_clip"] = 0.25
    assert TrainingHarness.changed_settings(harness, saved) == ["max_grad_norm"]

    finetune = validate_config(FinetuneConfig, {"method": "lora", "max_steps": 9, "precision": "bf16"})
    saved = finetune.model_dump(mode="json")
    saved["max_train_steps"], saved["mixed_precision"] = saved.pop("max_steps"), saved.pop("precision")
    harness = SimpleNamespace(config=finetune, loop=SimpleNamespace(resumable=frozenset(RESUMABLE)))
    assert TrainingHarness.changed_settings(harness, saved) == []
    assert err_lines(capsys) == []


def test_stage_config_reads_old_names_once_and_options_win(tmp_path, capsys):
    from dermsynth.config import stage_config

    path = tmp_path / "val.yaml"
    path.write_text("real: prep\nseeds: 2\ntrain:\n  lr: 0.001\n  epochs: 3\n")
    cfg = stage_config(ValidateConfig, path, {"seeds": 5, "train.epochs": None, "train.batch_size": 16})
    assert err_lines(capsys) == [notice("lr", "learning_rate")]
    assert cfg.seeds == 5 and cfg.train.learning_rate == 1e-3 and cfg.train.epochs == 3 and cfg.train.batch_size == 16
    # An option under the current name wins over the YAML's old one: one value, no "both spellings" error.
    assert stage_config(ValidateConfig, path, {"train.learning_rate": 0.01}).train.learning_rate == 0.01
    with pytest.raises(DermsynthError, match="give --real"):
        stage_config(ValidateConfig, None, {"seeds": 2}, required={"real": "no real data: give --real"})
    with pytest.raises(DermsynthError, match=r"^options: "):
        stage_config(ValidateConfig, None, {"real": "p", "seeds": 0})


def test_one_precision_resolver_for_every_stage():
    from dermsynth.precision import resolve_precision

    assert resolve_precision("auto", "cuda", auto="fp16-on-cuda") == "fp16"
    assert resolve_precision("auto", "cpu", auto="fp16-on-cuda") == "no"
    assert resolve_precision("auto", "mps", auto="bf16") == "no"  # bf16 autocast on CUDA and CPUs only
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("no", "cuda:1") == "no"
    with pytest.raises(DermsynthError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(DermsynthError, match="use one of auto, no, bf16, fp16"):
        resolve_precision("fp32", "cpu")
