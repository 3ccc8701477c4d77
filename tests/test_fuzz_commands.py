"""Bad input for every command: damaged artifacts that dermsynth wrote itself (markers, manifests, caches, tables,
model and checkpoint files) and out-of-range options. Each case ends in exit 0 (the damage is repaired or skipped,
and said) or exit 2 with one `error:` line; never a traceback, and never a finished-looking output after a failure.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from dermsynth.data.config import PrepareConfig
from dermsynth.data.prepare import prepare
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.scratch.train import train
from tests.test_diffusion_scratch import TINY

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

AUDIT = {"classifier_epochs": 1, "positive_controls": 4, "kid_subsets": 3, "c2st_folds": 2, "c2st_epochs": 1}
VALIDATE = {"regimes": ["real"], "seeds": 1, "train": {"epochs": 1}, "bootstrap": 100, "image_size": 16,
            "architecture": {"hidden_sizes": [8, 16], "embedding_size": 8, "depths": [1, 1]}}
FINETUNE = {"resolution": 64, "allow_upsample": True,  # the workspace is prepared at 32 px
            "instance_prompt": "dermoscopy image of a sks lesion",
            "class_prompt": "dermoscopy image of a skin lesion", "num_class_images": 2, "max_steps": 3,
            "checkpointing_steps": 1, "checkpoints_total_limit": 3, "sample": {"steps": 2, "scheduler": "ddim"},
            "threads": 1}


@dataclass
class Workspace:
    """Finished stage outputs, made once per module; each case damages a copy in its own folder."""

    root: Path

    @property
    def prep(self) -> Path:
        return self.root / "prep"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def syn(self) -> Path:
        return self.root / "syn"

    def copy(self, name: str, to: Path) -> Path:
        shutil.copytree(self.root / name, to)
        return to


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    root = tmp_path_factory.mktemp("fuzz")
    prepare(PrepareConfig(dataset="sample", max_images=60, workers=1, preprocess={"image_size": 32}),
            root / "prep", progress=False)
    train(root / "prep", root / "model", config=TINY, progress=False)
    generate(root / "model", root / "syn", per_class=6, steps=2, scheduler="ddim", progress=False)
    for name, settings in (("audit.yaml", AUDIT), ("validate.yaml", VALIDATE), ("finetune.yaml", FINETUNE)):
        (root / name).write_text(json.dumps(settings))  # JSON is YAML
    from dermsynth.cli import main

    for args in (["audit", "--real", root / "prep", "--synthetic", root / "syn", "--out", root / "audit",
                  "--config", root / "audit.yaml", "--image-size", "16", "--quiet"],
                 ["validate", "--real", root / "prep", "--out", root / "val", "--config", root / "validate.yaml",
                  "--quiet"]):
        with pytest.raises(SystemExit) as done:
            main([str(a) for a in args])
        assert done.value.code == 0
    from dermsynth.testing.tiny_sd import build_tiny_pipeline

    build_tiny_pipeline(seed=0).save_pretrained(root / "tiny-sd")
    yield Workspace(root)
    torch.set_num_threads(threads)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def set_cell(folder: Path, column: str, row: int, value: Callable[[pd.DataFrame], str] | str) -> None:
    """Hand-edit one cell of a prepared folder's metadata.csv (``value`` may be computed from the table)."""
    frame = pd.read_csv(folder / "metadata.csv", dtype=str)
    frame.loc[row, column] = value(frame) if callable(value) else value
    frame.to_csv(folder / "metadata.csv", index=False)


# --------------------------------------------------------------------------- the cases
# Each case prepares its damage under tmp and returns (argv, expected exit code, text the output must contain,
# paths that must not exist afterwards).

Case = tuple[list[object], int, str, list[Path]]


def info_prepare_json_not_json(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    (prep / "prepare.json").write_text('{"classes": ["benign", ')
    return ["info", prep], 2, "prepare.json is damaged", []


def info_prepare_json_a_list(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    (prep / "prepare.json").write_text("[1, 2]")
    return ["info", prep], 2, "not a dict", []


def info_prepare_json_without_classes(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    (prep / "prepare.json").write_text('{"images": 3}')
    return ["info", prep], 2, "no list of two or more class names", []


def info_metadata_binary(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    (prep / "metadata.csv").write_bytes(b"\x89PNG\x00\xff\xfe" * 50)
    return ["info", prep], 2, "metadata.csv is damaged", []


def info_metadata_cut_mid_row(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    truncate(prep / "metadata.csv", 0.5)
    return ["info", prep], 2, "metadata.csv is damaged (line", []


def info_metadata_empty(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    (prep / "metadata.csv").write_bytes(b"")
    return ["info", prep], 2, "metadata.csv is damaged", []


def info_metadata_path_outside(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    set_cell(prep, "path", 3, "../../etc/passwd")
    return ["info", prep], 2, "path leaves the folder", []


def info_metadata_label_swapped(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    set_cell(prep, "label", 0, lambda f: "malignant" if f.loc[0, "target"] == "0" else "benign")
    return ["info", prep], 2, "label does not match its target", []


def info_metadata_unknown_split(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    set_cell(prep, "split", 1, "holdout")
    return ["info", prep], 2, "split is not one of", []


def prepare_rerun_with_damaged_markers(ws, tmp) -> Case:
    prep = ws.copy("prep", tmp / "p")
    for marker in prep.rglob(".settings.json"):
        marker.write_text("[not a marker")
    for journal in prep.rglob("*.jsonl"):
        journal.write_text('{"image_id": 1}\n[]\ngarbage\n')
    return (["prepare", "--dataset", "sample", "--max-images", "60", "--image-size", "32", "--workers", "1",
             "--out", prep, "--quiet"], 0, "", [])


def train_zero_steps(ws, tmp) -> Case:
    return ["train", "--data", ws.prep, "--out", tmp / "m", "--max-steps", "0"], 2, "max_steps", [tmp / "m"]


def train_nan_minutes(ws, tmp) -> Case:
    return ["train", "--data", ws.prep, "--out", tmp / "m", "--max-minutes", "nan"], 2, "max_minutes", [tmp / "m"]


def train_over_a_damaged_model_json(ws, tmp) -> Case:
    model = ws.copy("model", tmp / "m")
    (model / "dermsynth_model.json").write_text('{"family": "scr')
    return ["train", "--data", ws.prep, "--out", model, "--quiet"], 2, "dermsynth_model.json is damaged", []


def train_resume_with_every_checkpoint_damaged(ws, tmp) -> Case:
    model = ws.copy("model", tmp / "m")
    (model / "dermsynth_model.json").unlink()  # as if killed before the end
    for checkpoint in (model / "checkpoints").iterdir():
        truncate(checkpoint / "unet.safetensors", 0.3)
    config = tmp / "tiny.yaml"
    config.write_text(json.dumps(TINY))
    return (["train", "--data", ws.prep, "--out", model, "--config", config, "--resume", "--quiet"], 2,
            "no intact checkpoint", [model / "dermsynth_model.json"])


def generate_zero_per_class(ws, tmp) -> Case:
    return ["generate", "--model", ws.model, "--out", tmp / "s", "--per-class", "0"], 2, "--per-class", [tmp / "s"]


def generate_nan_strength(ws, tmp) -> Case:
    return (["generate", "--model", ws.model, "--out", tmp / "s", "--per-class", "1", "--strength", "nan"], 2,
            "--strength", [tmp / "s" / "manifest.csv"])


def generate_damaged_model_json(ws, tmp) -> Case:
    model = ws.copy("model", tmp / "m")
    (model / "dermsynth_model.json").write_text("{")
    return (["generate", "--model", model, "--out", tmp / "s", "--per-class", "1"], 2, "dermsynth_model.json",
            [tmp / "s" / "manifest.csv"])


def generate_damaged_scheduler_config(ws, tmp) -> Case:
    model = ws.copy("model", tmp / "m")
    (model / "scheduler" / "scheduler_config.json").write_text("[")
    return (["generate", "--model", model, "--out", tmp / "s", "--per-class", "1", "--quiet"], 2,
            "cannot be read", [tmp / "s" / "manifest.csv"])


def _resume_generate(ws, syn: Path) -> list[object]:
    return ["generate", "--model", ws.model, "--out", syn, "--per-class", "6", "--steps", "2", "--scheduler", "ddim",
            "--quiet"]


def generate_resume_damaged_generate_json(ws, tmp) -> Case:
    syn = ws.copy("syn", tmp / "s")
    (syn / "generate.json").write_text('{"status": ')
    return _resume_generate(ws, syn), 2, "generate.json is damaged", []


def generate_resume_damaged_rejected_csv(ws, tmp) -> Case:
    syn = ws.copy("syn", tmp / "s")
    (syn / "rejected.csv").write_bytes(b"\x00\x01\x02")
    return _resume_generate(ws, syn), 2, "rejected.csv", []


def generate_resume_damaged_manifest(ws, tmp) -> Case:
    syn = ws.copy("syn", tmp / "s")
    (syn / "manifest.csv").write_bytes(b"image_id,la")  # rebuilt from the images' own records
    return _resume_generate(ws, syn), 0, "", []


def generate_resume_damaged_image(ws, tmp) -> Case:
    syn = ws.copy("syn", tmp / "s")
    truncate(sorted((syn / "images").glob("*/*.png"))[0], 0.4)
    return _resume_generate(ws, syn), 0, "damaged image(s)", []


def finetune_zero_steps(ws, tmp) -> Case:
    return (["finetune", "--method", "lora", "--base", ws.root / "tiny-sd", "--data", ws.prep, "--out", tmp / "f",
             "--max-steps", "0"], 2, "max_steps", [tmp / "f"])


def finetune_bad_resolution(ws, tmp) -> Case:
    return (["finetune", "--method", "lora", "--base", ws.root / "tiny-sd", "--data", ws.prep, "--out", tmp / "f",
             "--resolution", "60"], 2, "multiple of 8", [tmp / "f"])


def finetune_missing_base(ws, tmp) -> Case:
    return (["finetune", "--method", "lora", "--base", tmp / "no-such-model", "--data", ws.prep, "--out", tmp / "f"],
            2, "no-such-model", [tmp / "f" / "dermsynth_model.json"])


def _interrupted_finetune(ws, tmp) -> tuple[list[object], Path]:
    args = ["finetune", "--method", "lora", "--base", ws.root / "tiny-sd", "--data", ws.prep, "--out", tmp / "f",
            "--config", ws.root / "finetune.yaml", "--quiet"]
    from dermsynth.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert done.value.code == 0
    (tmp / "f" / "dermsynth_model.json").unlink()  # as if killed after its last checkpoint
    return args, tmp / "f" / "checkpoints"


def finetune_resume_latest_skips_a_damaged_checkpoint(ws, tmp) -> Case:
    args, checkpoints = _interrupted_finetune(ws, tmp)
    truncate(checkpoints / "step-000003" / "weights.safetensors", 0.5)
    return [*args, "--resume", "latest"], 0, "skipped corrupt checkpoint step-000003", []


def finetune_resume_named_damaged_checkpoint(ws, tmp) -> Case:
    args, checkpoints = _interrupted_finetune(ws, tmp)
    (checkpoints / "step-000002" / "training_state.pt").write_bytes(b"PK\x03\x04 broken")
    return ([*args, "--resume", checkpoints / "step-000002"], 2, "damaged checkpoint",
            [tmp / "f" / "dermsynth_model.json"])


def _audit(ws, out: Path, synthetic: Path | None = None) -> list[object]:
    return ["audit", "--real", ws.prep, "--synthetic", synthetic or ws.syn, "--out", out, "--config",
            ws.root / "audit.yaml", "--image-size", "16", "--quiet"]


def audit_zero_max_images(ws, tmp) -> Case:
    return [*_audit(ws, tmp / "a"), "--max-images", "0"], 2, "max_images", [tmp / "a" / "audit.json"]


def audit_missing_synthetic(ws, tmp) -> Case:
    return _audit(ws, tmp / "a", tmp / "nothing-here"), 2, "synthetic folder not found", [tmp / "a" / "audit.json"]


def audit_skips_a_damaged_synthetic_image(ws, tmp) -> Case:
    syn = ws.copy("syn", tmp / "s")
    sorted((syn / "images").glob("*/*.png"))[0].write_bytes(b"not a png")
    return _audit(ws, tmp / "a", syn), 0, "", []


def audit_rerun_with_damaged_feature_cache(ws, tmp) -> Case:
    from dermsynth.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in _audit(ws, tmp / "a")])
    assert done.value.code == 0
    cached = sorted((tmp / "a" / "cache").glob("*.npy"))
    assert cached
    for path in cached:
        truncate(path, 0.5)
    return _audit(ws, tmp / "a"), 0, "feature cache", []


def _validate(ws, out: Path) -> list[object]:
    return ["validate", "--real", ws.prep, "--out", out, "--config", ws.root / "validate.yaml", "--quiet"]


def validate_zero_seeds(ws, tmp) -> Case:
    return [*_validate(ws, tmp / "v"), "--seeds", "0"], 2, "seeds", [tmp / "v" / "validation"]


def validate_fraction_out_of_range(ws, tmp) -> Case:
    return [*_validate(ws, tmp / "v"), "--regimes", "hybrid:1.5"], 2, "fraction", [tmp / "v" / "validation"]


def validate_nan_learning_rate(ws, tmp) -> Case:
    return [*_validate(ws, tmp / "v"), "--learning-rate", "nan"], 2, "train.learning_rate", [tmp / "v" / "validation"]


def _damaged_run_file(ws, tmp, name: str, data: bytes) -> Case:
    val = ws.copy("val", tmp / "v")
    for path in (val / "validation").rglob(name):
        path.write_bytes(data)
    return _validate(ws, val), 0, "1 run(s) trained", []


def validate_rerun_with_damaged_metrics(ws, tmp) -> Case:
    return _damaged_run_file(ws, tmp, "metrics.json", b'{"settings_hash": ')


def validate_rerun_with_damaged_predictions(ws, tmp) -> Case:
    return _damaged_run_file(ws, tmp, "predictions.csv", b"\x00\x00")


def _report_run(ws, tmp) -> Path:
    run = tmp / "run"
    for name, folder in (("prep", "prepared"), ("audit", "audit")):
        ws.copy(name, run / folder)
    return run


def report_with_damaged_audit_json(ws, tmp) -> Case:
    run = _report_run(ws, tmp)
    truncate(run / "audit" / "audit.json", 0.5)
    return ["report", run], 2, "audit.json", [run / "report.html"]


def report_with_hand_edited_audit_json(ws, tmp) -> Case:
    run = _report_run(ws, tmp)
    (run / "audit" / "audit.json").write_text('{"fidelity": {"overall": 5}, "counts": []}')
    return ["report", run], 2, "damaged or hand-edited", [run / "report.html"]


def report_with_damaged_prepare_json(ws, tmp) -> Case:
    run = _report_run(ws, tmp)
    (run / "prepared" / "prepare.json").write_text('{"classes": 3}')
    return ["report", run], 2, "prepared/", [run / "report.html"]


def report_with_damaged_stage_marker(ws, tmp) -> Case:
    run = _report_run(ws, tmp)
    (run / "audit" / ".stage.json").write_bytes(b"\xff\xfe[")
    return ["report", run], 0, "report.html", []


PREPARE_ONLY = "prepare: {dataset: sample, max_images: 40, workers: 1, preprocess: {image_size: 32}}\n"


def run_with_damaged_stage_marker(ws, tmp) -> Case:
    config = tmp / "study.yaml"
    config.write_text(PREPARE_ONLY)
    from dermsynth.cli import main

    with pytest.raises(SystemExit) as done:
        main(["run", str(config), "--out", str(tmp / "run")])
    assert done.value.code == 0
    (tmp / "run" / "prepared" / ".stage.json").write_text("[]")  # valid JSON, not a marker
    return ["run", config, "--out", tmp / "run"], 0, "ran prepare", []


def run_config_not_a_mapping(ws, tmp) -> Case:
    config = tmp / "study.yaml"
    config.write_text("- prepare\n- train\n")
    return ["run", config, "--out", tmp / "run"], 2, "study.yaml", [tmp / "run"]


def run_config_unknown_stage_setting(ws, tmp) -> Case:
    config = tmp / "study.yaml"
    config.write_text(PREPARE_ONLY + "train: {settings: {max_stepz: 3}}\n")
    return ["run", config, "--out", tmp / "run"], 2, "max_stepz", [tmp / "run" / "model"]


def demo_out_is_a_file(ws, tmp) -> Case:
    (tmp / "taken").write_text("a file, not a folder")
    return ["demo", "--out", tmp / "taken"], 2, "taken", []


def reconstruct_a_pixel_model(ws, tmp) -> Case:
    args = ["reconstruct", "--data", ws.prep, "--model", ws.model, "--out", tmp / "r", "--quiet"]
    return args, 2, "latent", [tmp / "r"]


def reconstruct_zero_bicubic_factor(ws, tmp) -> Case:
    args = ["reconstruct", "--data", ws.prep, "--bicubic", "0", "--out", tmp / "r", "--quiet"]
    return args, 2, "bicubic", [tmp / "r"]


def reconstruct_unknown_split(ws, tmp) -> Case:
    args = ["reconstruct", "--data", ws.prep, "--bicubic", "2", "--split", "tset", "--out", tmp / "r", "--quiet"]
    return args, 2, "tset", [tmp / "r"]


def _domain_shift(ws, out: Path, *external: Path) -> list[object]:
    sites = [a for site in (external or (ws.prep,)) for a in ("--external", site)]
    return ["domain-shift", "--real", ws.prep, "--synthetic", ws.syn, *sites, "--out", out, "--image-size", "16",
            "--quiet"]


def domain_shift_missing_external_site(ws, tmp) -> Case:
    return _domain_shift(ws, tmp / "d", tmp / "no-such-site"), 2, "no-such-site", [tmp / "d" / "domain_shift.json"]


def domain_shift_fraction_out_of_range(ws, tmp) -> Case:
    return [*_domain_shift(ws, tmp / "d"), "--fraction", "1.5"], 2, "fraction", [tmp / "d" / "domain_shift.json"]


def domain_shift_unknown_feature_space(ws, tmp) -> Case:
    args = [*_domain_shift(ws, tmp / "d"), "--features", "inception"]
    return args, 2, "unknown feature space", [tmp / "d" / "domain_shift.json"]


def domain_shift_external_metadata_damaged(ws, tmp) -> Case:
    site = ws.copy("prep", tmp / "site")
    truncate(site / "metadata.csv", 0.0)
    return _domain_shift(ws, tmp / "d", site), 2, "metadata.csv", [tmp / "d" / "domain_shift.json"]


def _study(ws, out: Path) -> list[object]:
    return ["reader-study", "build", "--real", ws.prep, "--synthetic", ws.syn, "--out", out, "--n", "4",
            "--practice", "0", "--quiet"]


def reader_study_build_fraction_out_of_range(ws, tmp) -> Case:
    return [*_study(ws, tmp / "s"), "--synthetic-fraction", "1.5"], 2, "synthetic", [tmp / "s"]


def reader_study_score_empty_answers(ws, tmp) -> Case:
    from dermsynth.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in _study(ws, tmp / "s")])
    assert done.value.code == 0
    (tmp / "empty.json").write_text("")
    return ["reader-study", "score", tmp / "s", tmp / "empty.json"], 2, "empty.json", [tmp / "s" / "score"]


def reader_study_score_a_tampered_key(ws, tmp) -> Case:
    from dermsynth.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in _study(ws, tmp / "s")])
    assert done.value.code == 0
    key = next((tmp / "s" / "key").glob("*.csv"))
    key.write_text(key.read_text().replace("synthetic", "real"))
    (tmp / "a.json").write_text("{}")
    return ["reader-study", "score", tmp / "s", tmp / "a.json"], 2, "key", [tmp / "s" / "score"]


def _tune(ws, out: Path) -> list[object]:
    return ["tune-guidance", "--model", ws.model, "--data", ws.prep, "--out", out, "--per-class", "6", "--quiet"]


def tune_guidance_values_not_numbers(ws, tmp) -> Case:
    return [*_tune(ws, tmp / "t"), "--values", "1,high"], 2, "--values", [tmp / "t" / "tune.json"]


def tune_guidance_too_few_images(ws, tmp) -> Case:
    return [*_tune(ws, tmp / "t"), "--per-class", "2"], 2, "--per-class", [tmp / "t" / "tune.json"]


def tune_guidance_no_saved_features(ws, tmp) -> Case:
    args = [*_tune(ws, tmp / "t"), "--features", f"classifier:{tmp / 'none'}"]
    return args, 2, "no saved classifier", [tmp / "t" / "tune.json"]


def generate_guidance_for_a_class_the_model_lacks(ws, tmp) -> Case:
    args = ["generate", "--model", ws.model, "--out", tmp / "g", "--per-class", "1", "--guidance", "melanoma=2",
            "--quiet"]
    return args, 2, "melanoma", [tmp / "g" / "manifest.csv"]


def generate_guidance_not_a_number(ws, tmp) -> Case:
    args = ["generate", "--model", ws.model, "--out", tmp / "g", "--per-class", "1", "--guidance", "strong",
            "--quiet"]
    return args, 2, "--guidance", [tmp / "g" / "manifest.csv"]


def command_of(case_name: str) -> str | None:
    """The command a case exercises: the longest command whose name (with _ for -) starts the case's name."""
    from tests.test_pipeline import COMMANDS

    fitting = [c for c in COMMANDS if case_name.startswith(c.replace("-", "_") + "_")]
    return max(fitting, key=len) if fitting else None


CASES = [case for name, case in sorted(globals().items()) if callable(case) and "_" in name
         and getattr(case, "__module__", None) == __name__ and command_of(name)]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_exits_cleanly(ws, tmp_path, cli, case):
    args, code, fragment, absent = case(ws, tmp_path)
    exit_code, out, err = cli(*args)
    assert "Traceback" not in err
    assert exit_code == code, err[-2000:]
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], err[-2000:]
        assert all(not line.startswith("error: ") for line in lines[:-1])
    else:
        assert fragment in out + err, (out + err)[-2000:]
    for path in absent:
        assert not path.exists(), f"{path} was written by a failed command"


def test_every_command_is_fuzzed():
    from tests.test_pipeline import COMMANDS

    assert {command_of(c.__name__) for c in CASES} == set(COMMANDS)
    assert len(CASES) >= 40
