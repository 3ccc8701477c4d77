"""Bad input that dermsynth wrote itself, or explicit options: corrupt checkpoints and weights, zero/NaN values,
an empty run config, too-small images, and artifacts that must name no machine path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth.diffusion.checkpoints import list_checkpoints
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.scratch.train import train
from tests.test_diffusion_scratch import TINY, assert_one_line_error, one_thread, run_cli
from tests.test_generate import model, prepared

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
__all__ = ["model", "one_thread", "prepared"]  # fixtures shared with test_generate (module-scoped: one per module)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--steps", "0"], "--steps: Input should be greater than or equal to 1"),
    (["--steps", "-3"], "--steps: Input should be greater than or equal to 1"),
    (["--guidance", "nan"], "--guidance: takes finite numbers of 0 or more"),
    (["--guidance", "inf"], "--guidance: takes finite numbers of 0 or more"),
    (["--guidance", "-1"], "--guidance: takes finite numbers of 0 or more"),
    (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1"),
])
def test_generate_validates_explicit_values(model, tmp_path, capsys, extra, fragment):
    out = tmp_path / "syn"
    code, _, err = run_cli(["generate", "--model", str(model), "--out", str(out), "--per-class", "1", "--quiet",
                            *extra], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (out / "manifest.csv").exists() and not (out / "generate.json").exists()


@pytest.mark.parametrize("damage", ["truncated-weights", "garbage-weights", "missing-weights", "bad-unet-config"])
def test_generate_refuses_a_damaged_model_in_one_line(model, tmp_path, capsys, damage):
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "truncated-weights":
        truncate(weights)
    elif damage == "garbage-weights":
        weights.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "missing-weights":
        weights.unlink()
    else:
        (copy / "unet" / "config.json").write_text("{ not json", encoding="utf-8")
    out = tmp_path / "syn"
    code, _, err = run_cli(["generate", "--model", str(copy), "--out", str(out), "--per-class", "1", "--quiet",
                            "--steps", "2"], capsys)
    assert_one_line_error(code, err, str(copy))
    assert not (out / "manifest.csv").exists()


@pytest.mark.parametrize("damage", ["truncated-unet", "truncated-ema", "truncated-state", "bad-json", "empty-files"])
def test_resume_skips_a_corrupt_checkpoint_for_the_newest_intact_one(prepared, tmp_path, capsys, damage):
    out = tmp_path / "m"
    settings = {**TINY, "max_steps": 8, "checkpoint_every": 2, "checkpoints_total_limit": 3}
    train(prepared, out, config={**settings, "max_steps": 6}, progress=False)
    newest = list_checkpoints(out)[-1]
    assert newest.name == "step-000006"
    target = {"truncated-unet": "unet.safetensors", "truncated-ema": "ema.safetensors",
              "truncated-state": "training_state.pt", "bad-json": "state.json", "empty-files": None}[damage]
    if damage == "bad-json":
        (newest / target).write_text('{"step": 6, ', encoding="utf-8")
    elif target is None:
        for file in newest.iterdir():
            file.write_bytes(b"")
    else:
        truncate(newest / target)
    capsys.readouterr()
    result = train(prepared, out, config=settings, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "skipped corrupt checkpoint step-000006" in err and "resumed from step-000004" in err, err
    assert result.info["steps"] == 8
    # The same run, uninterrupted from step 4, reaches the same weights: the older checkpoint was used whole.
    reference = tmp_path / "ref"
    train(prepared, reference, config={**settings, "max_steps": 4}, progress=False)
    train(prepared, reference, config=settings, resume=True, progress=False)
    ours = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert ours == (reference / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "name: a study with no stages\n", "report: true\n"])
def test_run_refuses_a_config_that_names_no_stages(tmp_path, capsys, text):
    config = tmp_path / "study.yaml"
    config.write_text(text, encoding="utf-8")
    code, _, err = run_cli(["run", str(config), "--out", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, "names no stages")
    assert not (tmp_path / "run").exists()


def test_generate_records_paths_relative_to_its_folder(model, tmp_path):
    out = tmp_path / "shared" / "syn"
    generate(model, out, per_class=1, seed=0, steps=2, scheduler="ddim", progress=False)
    summary = json.loads((out / "generate.json").read_text(encoding="utf-8"))
    manifest = pd.read_csv(out / "manifest.csv")
    for recorded in [summary["settings"]["model"], *manifest["model"].astype(str)]:
        assert not Path(recorded).is_absolute(), recorded
        assert (out / recorded).resolve() == model.resolve()
    info = json.loads((model / "dermsynth_model.json").read_text(encoding="utf-8"))
    assert not Path(info["data"]["prepared"]).is_absolute()
    blob = (out / "generate.json").read_text(encoding="utf-8") + (out / "manifest.csv").read_text(encoding="utf-8")
    assert str(tmp_path) not in blob


@pytest.mark.parametrize(("side", "skipped"), [(1, True), (20, True), (31, True), (32, False), (48, False)])
def test_prepare_skips_images_below_the_minimum_side(tmp_path, cli_dataset, capsys, side, skipped):
    root = cli_dataset(tmp_path)
    rng = np.random.default_rng(side)
    tiny = np.clip(rng.normal(180, 20, (side, side, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(tiny).save(root / "benign" / "tiny.png")
    out = tmp_path / "prep"
    code, _, err = run_cli(["prepare", "--dataset", "folder", "--root", str(root), "--out", str(out),
                            "--image-size", "32", "--quiet", "--workers", "1"], capsys)
    assert code == 0, err
    summary = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert ("image too small" in summary["skipped_by_reason"]) is skipped, summary["skipped_by_reason"]
    assert ("tiny" in set(pd.read_csv(out / "metadata.csv")["image_id"].astype(str))) is not skipped


@pytest.fixture
def cli_dataset():
    """A class-per-folder dataset of 8 images per class at 64 x 48 px."""
    def make(root: Path) -> Path:
        folder = root / "tree"
        rng = np.random.default_rng(0)
        for label, tone in (("benign", 90), ("malignant", 40)):
            (folder / label).mkdir(parents=True)
            for i in range(8):
                image = np.clip(rng.normal(200, 8, (48, 64, 3)), 0, 255)
                image[14:34, 22:42] = tone
                Image.fromarray(image.astype(np.uint8)).save(folder / label / f"{label}{i}.png")
        return folder
    return make
