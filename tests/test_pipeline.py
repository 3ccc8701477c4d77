import json

import pytest

from dermsynth.pipeline import RunConfig, run_pipeline
from dermsynth.testing.studies import TINY_STUDY
from tests.test_diffusion_scratch import make_prepared


def test_run_skips_finished_stages_and_reruns_changed_ones(folder_dir, tmp_path, cli):
    config = tmp_path / "study.yaml"
    config.write_text(f"name: t\nprepare:\n  dataset: folder\n  root: {folder_dir}\n  workers: 1\n"
                      "  preprocess:\n    image_size: 24\n")
    out = tmp_path / "run"
    code, stdout, _ = cli("run", config, "--out", out)
    assert code == 0 and "ran prepare" in stdout
    marker = json.loads((out / "prepared" / ".stage.json").read_text())
    assert (out / "config.resolved.yaml").is_file() and (out / "versions.json").is_file()
    code, stdout, _ = cli("run", config, "--out", out)
    assert code == 0 and "up to date: prepare" in stdout
    config.write_text(config.read_text().replace("image_size: 24", "image_size: 20"))
    code, stdout, _ = cli("run", config, "--out", out)
    assert "ran prepare" in stdout
    assert json.loads((out / "prepared" / ".stage.json").read_text())["hash"] != marker["hash"]


def test_interrupted_stage_has_no_marker_and_reruns(folder_dir, tmp_path, monkeypatch):
    import dermsynth.data.prepare as prepare_module

    config = RunConfig(prepare={"dataset": "folder", "root": folder_dir, "workers": 1,
                                "preprocess": {"image_size": 24}})
    original = prepare_module._process_one
    calls = []

    def dying(task):
        calls.append(task)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(task)

    monkeypatch.setattr(prepare_module, "_process_one", dying)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "run")
    assert not (tmp_path / "run" / "prepared" / ".stage.json").exists()
    monkeypatch.setattr(prepare_module, "_process_one", original)
    outcomes = run_pipeline(config, tmp_path / "run")
    assert [o.status for o in outcomes] == ["ran"]


def _error(cli, *args) -> str:
    code, _, stderr = cli(*args)
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1
    return stderr.strip()


def test_bad_run_configs_name_the_key(cli, tmp_path, folder_dir):
    config = tmp_path / "bad.yaml"
    config.write_text("prepare:\n  dataset: sample\n  sede: 3\n")
    assert "prepare.sede: unknown key" in _error(cli, "run", config)
    config.write_text("prepare:\n  dataset: sample\n  workers: many\n")
    assert "prepare.workers:" in _error(cli, "run", config)
    config.write_text(f"prepare:\n  dataset: folder\n  root: {tmp_path / 'missing'}\n")
    assert "prepare.root: folder not found" in _error(cli, "run", config, "--out", tmp_path / "r")
    config.write_text(f"prepare:\n  dataset: folder\n  root: {folder_dir}\n")
    assert "inside the dataset folder" in _error(cli, "run", config, "--out", folder_dir / "run")
    config.write_text("- just\n- a list\n")
    assert "expected a mapping" in _error(cli, "run", config)
    assert "config file not found" in _error(cli, "run", tmp_path / "nope.yaml")
    config.write_text(TINY_STUDY + "domain_shift: {fraction: 0.5}\n")
    assert "domain_shift needs external sites" in _error(cli, "run", config)


def test_too_few_synthetic_images_for_a_regime_fail_before_training(tmp_path, cli):
    config = tmp_path / "short.yaml"
    config.write_text(TINY_STUDY.replace("regimes: [real, hybrid:0.5]", "regimes: [real, synthetic]"))
    out = tmp_path / "run"
    code, _, stderr = cli("run", config, "--out", out)
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    message = stderr.strip()
    assert message.startswith("error: validate: synthetic takes") and "generate (per_class 40) makes 40" in message
    assert "set generate.per_class to at least" in message
    assert not out.exists()  # the plan refused it before prepare started
    # balance fills only the smaller class: the synthetic regime lacks images of the larger one
    config.write_text(TINY_STUDY.replace("regimes: [real, hybrid:0.5]", "regimes: [real, synthetic]")
                      .replace("  per_class: 40\n", "  balance: true\n"))
    code, _, stderr = cli("run", config, "--out", out)
    assert code == 2 and "generate (balance: true fills only the smaller classes)" in stderr.strip().splitlines()[-1]
    # the augmentation controls take copies of real images, none from generate
    from dermsynth.pipeline import check_synthetic_supply, load_run_config

    config.write_text(TINY_STUDY.replace("regimes: [real, hybrid:0.5]", "regimes: [real, augment-add:1000]"))
    (config.parent / "prep.yaml").write_text(TINY_STUDY.split("train:")[0])
    assert cli("run", config.parent / "prep.yaml", "--out", out)[0] == 0
    check_synthetic_supply(load_run_config(config), out / "prepared")


@pytest.mark.slow
@pytest.mark.parametrize("args", [("prepare", "--no-such-option"), ("no-such-command",), ("run",)])
def test_usage_errors_exit_2_without_traceback(cli, args):
    code, _, stderr = cli(*args)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "Error" in stderr and "Usage:" in stderr


COMMANDS = ["prepare", "info", "train", "generate", "finetune", "audit", "validate", "run", "demo", "report",
            "reconstruct", "domain-shift", "reader-study", "tune-guidance"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_keeps_its_defaults(cli, command, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "240")  # one line per option
    code, stdout, _ = cli(command, "--help")
    assert code == 0 and "Usage:" in stdout
    # Rich markup swallows "[default: x]" in help strings and leaves "text ." behind.
    assert not re.search(r"[\w)] \.(\s|│)", stdout), stdout
    if command == "prepare":
        assert "(default: 256)" in stdout and "(default: off)" in stdout


def test_whole_study_end_to_end_on_tiny_settings(tmp_path, cli):
    config = tmp_path / "tiny.yaml"
    site = make_prepared(tmp_path / "site", size=32)  # another "clinic": plain discs on light skin
    config.write_text(TINY_STUDY + "reader_study: {n: 8, size: 32, practice: 2}\n"
                      f"domain_shift: {{external: [{site}], max_per_class: 30}}\n")
    out = tmp_path / "run"
    code, stdout, stderr = cli("run", config, "--out", out)
    assert code == 0, stderr
    assert "ran prepare, train, generate, audit, validate, domain_shift, reader_study" in stdout
    shift = json.loads((out / "domain_shift" / "domain_shift.json").read_text())
    assert list(shift["sites"]) == ["site"] and shift["synthetic"] == "synthetic"
    assert "Where the shift goes" in (out / "report.html").read_text()
    study = json.loads((out / "reader_study" / "key" / "study.json").read_text())
    assert study["images"] == 8 and (out / "reader_study" / "reader" / "index.html").is_file()
    assert "Not scored yet" in (out / "report.html").read_text()
    assert (out / "model" / "dermsynth_model.json").is_file()
    manifest = (out / "synthetic" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 80
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert audit["counts"]["synthetic"] == 80
    summary = (out / "validation" / "summary.csv").read_text()
    assert summary.startswith("regime") and "hybrid:0.5" in summary
    for stage in ("prepared", "model", "synthetic", "audit", "validation", "domain_shift", "reader_study"):
        assert (out / stage / ".stage.json").is_file(), stage
    code, stdout, _ = cli("run", config, "--out", out)
    assert code == 0 and "ran nothing" in stdout


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_study_with_reconstruct_controls_reconstructs_its_own_sample(tmp_path, cli):
    import yaml

    from tests.test_latent import TINY_LATENT

    study = yaml.safe_load(TINY_STUDY)
    study = {"prepare": study["prepare"], "real_per_class": 20, "train": {"settings": TINY_LATENT},
             "validate": study["validate"] | {"regimes": ["real", "reconstruct-add:30"], "seeds": 1}}
    config = tmp_path / "controls.yaml"
    config.write_text(yaml.safe_dump(study))
    out = tmp_path / "run"
    code, _, stderr = cli("run", config, "--out", out)
    assert code == 0, stderr
    record = json.loads((out / "reconstruction" / "reconstruct.json").read_text())
    assert record["split"] == "train" and record["images"] == 40 == record["autoencoder_sample"]["images"]
    metrics = json.loads((out / "validation" / "reconstruct-add-30" / "0" / "metrics.json").read_text())
    assert metrics["made_by"] == "reconstruct" and metrics["train_synthetic"] == 30
    study["train"] = None
    del study["train"]
    config.write_text(yaml.safe_dump(study | {"prepared": str(out / "prepared")} | {"prepare": None}))
    code, _, stderr = cli("run", config, "--out", tmp_path / "other")
    assert code == 2 and "the reconstruct controls need a train section" in stderr


def test_shipped_study_configs_are_valid():
    from pathlib import Path

    from dermsynth.pipeline import demo_config, load_run_config

    studies = [p for p in Path(__file__).parents[1].joinpath("configs").glob("*.yaml")
               if p.read_text().lstrip("# \n").find("prepare:") >= 0 and "\nprepare:" in p.read_text()]
    assert len(studies) >= 3
    for path in studies:
        load_run_config(path)
    assert demo_config().prepare.dataset == "sample"


def test_study_with_stable_diffusion_finetune_and_settings_change(tmp_path, cli, monkeypatch):
    from dermsynth.testing.tiny_sd import build_tiny_pipeline

    base = tmp_path / "tiny-sd"
    build_tiny_pipeline(seed=0).save_pretrained(base)
    config = tmp_path / "sd.yaml"
    study = f"""
prepare: {{dataset: sample, max_images: 40, preprocess: {{image_size: 64}}}}
finetune:
  method: lora
  base: {base}
  resolution: 64
  instance_labels: [malignant]
  num_class_images: 2           # made by the base model
  train_batch_size: 2
  max_steps: 3
  precision: "no"
  validation_prompts: [dermoscopy image of a skin lesion]
  validation_steps: 3
  validation_inference_steps: 2
  sample: {{steps: 2}}
generate: {{per_class: 2, steps: 2}}
"""
    config.write_text(study)
    out = tmp_path / "run"
    code, stdout, stderr = cli("run", config, "--out", out)
    assert code == 0, stderr
    assert "ran prepare, finetune, generate" in stdout
    info = json.loads((out / "model" / "dermsynth_model.json").read_text())
    assert info["family"] == "stable-diffusion-lora"
    assert len((out / "synthetic" / "manifest.csv").read_text().splitlines()) == 1 + 2 * len(info["classes"])
    assert info["dreambooth"]["generated_class_images"] == 2 and len(info["base_sha256"]) == 64
    # The report describes the fine-tune: method, prompts, class images, validation images, base model hash.
    html = (out / "report.html").read_text()
    for text in ("Stable Diffusion fine-tuned (DreamBooth with LoRA)", "LoRA adapter (rank 8, alpha 8)",
                 "Prior-preservation class images", "Validation images during fine-tuning", "finetune: done",
                 info["dreambooth"]["instance_prompt"], info["base_sha256"]):
        assert text in html, text
    monkeypatch.chdir(tmp_path)  # the same report from a relative run folder
    from dermsynth.report import build_report

    build_report("run")
    html = (out / "report.html").read_text()
    assert "Validation images during fine-tuning" in html and "Prior-preservation class images" in html
    # Another training budget: the old model folder is replaced, not resumed or refused.
    config.write_text(study.replace("max_steps: 3", "max_steps: 4"))
    code, stdout, stderr = cli("run", config, "--out", out)
    assert code == 0, stderr
    assert "ran finetune, generate" in stdout and "up to date: prepare" in stdout
    assert json.loads((out / "model" / "dermsynth_model.json").read_text())["steps"] == 4


def test_package_version_matches_pyproject():
    import tomllib
    from pathlib import Path

    import dermsynth

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert dermsynth.__version__ == pyproject["project"]["version"]


def test_run_level_real_per_class_reaches_train_and_validate():
    """Set once, at the top: the generator then trains on the classifiers' own real sample."""
    from dermsynth.pipeline import RunConfig

    config = RunConfig.model_validate({"real_per_class": 50, "subsample_seed": 3, "prepare": {},
                                       "train": {"settings": {}}, "generate": {"per_class": 10},
                                       "validate": {"regimes": ["real"]}})
    assert config.train.settings["real_per_class"] == 50 and config.train.settings["subsample_seed"] == 3
    assert (config.validate_.real_per_class, config.validate_.subsample_seed) == (50, 3)
    with pytest.raises(ValueError, match=r"validate\.real_per_class differs"):
        RunConfig.model_validate({"real_per_class": 50, "prepare": {}, "train": {}, "generate": {"per_class": 10},
                                  "validate": {"real_per_class": 40, "regimes": ["real"]}})


# The stage markers `dermsynth demo` wrote with the previous release (read from its run folder's .stage.json files).
PREVIOUS_RELEASE_DEMO_MARKERS = {"prepare": "4e367b13efa30940", "train": "6f766819a4c66a82",
                                 "generate": "ace290095036aee0", "audit": "444830258a26146c",
                                 "validate": "b26dfce9ab935021"}


def test_a_demo_run_folder_of_the_previous_release_stays_up_to_date(tmp_path):
    from dermsynth.pipeline import build_stages, demo_config, stage_digest

    digests: dict[str, str] = {}
    for stage in build_stages(demo_config(), tmp_path):
        digests[stage.name] = stage_digest(stage, digests)
    assert digests == PREVIOUS_RELEASE_DEMO_MARKERS
