"""The cascade family: a base pixel model, then a conditional super-resolution stage; saved as a folder whose stages
plain diffusers reads; resumable in either stage; `--max-steps` bounds the whole run; the super-resolution ceiling
folder is audited, never trained on; bad inputs give one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dermsynth.diffusion.cascade.config import PRESETS, resolve_cascade_config
from dermsynth.diffusion.cascade.train import gaussian_blur, random_crops
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.training import train
from dermsynth.errors import DermsynthError
from tests.test_diffusion_scratch import TINY, make_prepared

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY_CASCADE = {
    "preset": "cpu-cascade-128",
    "image_size": 32,
    "base": TINY | {"model": TINY["model"] | {"image_size": 16}, "max_steps": 4},
    "super_resolution": {"factor": 2, "block_out_channels": [16, 32], "norm_num_groups": 8, "crop_size": 16,
                         "batch_size": 4, "max_steps": 6, "checkpoint_every": 3, "warmup_steps": 1, "log_every": 2,
                         "sample_every": 100, "sample_steps": 2, "lr_schedule": "constant"},
}
SR_WEIGHTS = "super_resolution/unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_prepared(tmp_path_factory.mktemp("cascade") / "prep", size=32)
    summary = json.loads((root / "prepare.json").read_text())
    (root / "prepare.json").write_text(json.dumps(summary | {"settings": {"preprocess": {"image_size": 32}}}))
    return root


@pytest.fixture(scope="module")
def cascade(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade-model") / "model"
    train(prepared, out, config=TINY_CASCADE, progress=False)
    return out


def test_every_stage_reads_back_with_plain_diffusers(cascade):
    from diffusers import EDMDPMSolverMultistepScheduler, UNet2DModel

    info = json.loads((cascade / "dermsynth_model.json").read_text())
    assert info["family"] == "cascade" and info["image_size"] == 32 and info["preset"] == "cpu-cascade-128"
    assert info["base_model"]["steps"] == 4 and info["super_resolution"]["steps"] == 6 and info["steps"] == 10
    base = UNet2DModel.from_pretrained(cascade / "base" / "unet")
    sr = UNet2DModel.from_pretrained(cascade, subfolder="super_resolution/unet")
    assert base.config.sample_size == 16 and base.config.in_channels == 3
    assert sr.config.in_channels == 7 and sr.config.out_channels == 3
    EDMDPMSolverMultistepScheduler.from_pretrained(cascade / "super_resolution" / "scheduler")
    # The super-resolution UNet is convolutional: it runs at the base's size times the factor, whatever it trained on.
    out = sr(torch.zeros(1, 7, 32, 32), torch.tensor([0.0]), class_labels=torch.tensor([0])).sample
    assert out.shape == (1, 3, 32, 32)
    assert (cascade / "samples" / "final.png").is_file() and (cascade / "base" / "dermsynth_model.json").is_file()


def test_generate_makes_full_size_images_that_depend_on_seed_and_class_only(cascade, tmp_path):
    made = generate(cascade, tmp_path / "syn", per_class=3, progress=False, batch_size=2)
    assert made.summary["settings"]["family"] == "cascade" and len(made.manifest) == 6
    paths = sorted((tmp_path / "syn" / "images").rglob("*.png"))
    assert all(Image.open(path).size == (32, 32) for path in paths)
    again = generate(cascade, tmp_path / "syn-batch5", per_class=3, progress=False, batch_size=5)
    other = sorted((tmp_path / "syn-batch5" / "images").rglob("*.png"))
    for a, b in zip(paths, other, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert again.summary["counts"] == made.summary["counts"]


def test_the_same_command_gives_the_same_cascade_and_a_finished_one_is_skipped(prepared, cascade, tmp_path):
    out = tmp_path / "again"
    train(prepared, out, config=TINY_CASCADE, progress=False)
    assert (out / SR_WEIGHTS).read_bytes() == (cascade / SR_WEIGHTS).read_bytes()
    assert train(prepared, out, config=TINY_CASCADE, progress=False).skipped


@pytest.mark.parametrize("stop_at", [2, 4 + 4], ids=["in-the-base", "in-super-resolution"])
def test_resume_continues_either_stage_exactly(prepared, cascade, tmp_path, stop_at):
    """Killed in stage 1 or stage 2, a --resume run ends with the weights of an uninterrupted one."""
    cut = tmp_path / "cut"
    calls = []

    def stop(step: int, loss: float) -> None:
        calls.append(step)
        if len(calls) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(prepared, cut, config=TINY_CASCADE, progress=False, callback=stop)
    with pytest.raises(DermsynthError, match="--resume"):
        train(prepared, cut, config=TINY_CASCADE, progress=False)
    train(prepared, cut, config=TINY_CASCADE, progress=False, resume=True)
    for weights in ("base/unet/diffusion_pytorch_model.safetensors", SR_WEIGHTS):
        assert (cut / weights).read_bytes() == (cascade / weights).read_bytes(), weights


def test_max_steps_bounds_the_whole_run_in_the_ratio_of_the_stages(prepared, tmp_path):
    steps = []
    out = tmp_path / "short"
    result = train(prepared, out, config=TINY_CASCADE, max_steps=5, progress=False,
                   callback=lambda step, loss: steps.append(step))
    info = result.info
    # 4 + 6 steps in the config: the base gets 2 of 5, the super-resolution stage 3.
    assert (info["base_model"]["steps"], info["super_resolution"]["steps"]) == (2, 3) and steps == [1, 2, 1, 2, 3]
    cfg = resolve_cascade_config("cpu-cascade-128", None, max_steps=1)
    assert cfg.base.max_steps == 1 and cfg.super_resolution.max_steps == 1


def test_presets_describe_their_stages():
    for name, preset in PRESETS.items():
        cfg = resolve_cascade_config(name)
        assert cfg.base.model.image_size * cfg.super_resolution.factor == preset["image_size"]
        assert cfg.base.autoencoder is None


def test_crops_lie_on_the_low_resolution_grid_and_blur_keeps_a_flat_image_flat():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).reshape(2, 3, 8, 8)
    crops = random_crops(images, 4, 2, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 4, 4)
    for crop, image in zip(crops, images, strict=True):
        pixels = ((crop + 1) * 127.5).round().to(torch.uint8)
        found = [(y, x) for y in range(5) for x in range(5) if torch.equal(image[:, y:y + 4, x:x + 4], pixels)]
        assert found and all(y % 2 == 0 and x % 2 == 0 for y, x in found)
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.0, 1.5])), flat, atol=1e-6)
    noisy = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(gaussian_blur(noisy, torch.tensor([1.0])).std()) < 0.6 * float(noisy.std())


def test_one_line_errors(prepared, cascade, tmp_path):
    big = TINY_CASCADE | {"image_size": 64, "base": TINY_CASCADE["base"] | {
        "model": TINY["model"] | {"image_size": 32}}}
    with pytest.raises(DermsynthError, match="prepare again with --image-size 64"):
        train(prepared, tmp_path / "big", config=big, progress=False)
    with pytest.raises(DermsynthError, match=r"base\.model\.image_size must be"):
        resolve_cascade_config("cpu-cascade-128", TINY_CASCADE | {"image_size": 64})
    with pytest.raises(DermsynthError, match="not a pixel preset"):
        resolve_cascade_config("cpu-cascade-128", {"base": {"preset": "cpu-latent-128"}})

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cascade, broken)
    (broken / SR_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(DermsynthError, match="cannot be read") as caught:
        generate(broken, tmp_path / "syn", per_class=1, progress=False)
    assert "\n" not in str(caught.value)


def test_the_super_resolution_ceiling_is_audited_but_refused_by_validate(prepared, cascade, tmp_path, cli):
    from dermsynth.diffusion.scratch.reconstruct import reconstruct

    out = tmp_path / "ceiling"
    record = reconstruct(prepared, out, model=cascade, split="test", progress=False)
    assert record["through"].startswith("the super-resolution stage of a cascade (2x)")
    assert record["factor"] == 2 and record["images"] == len(list((out / "images").rglob("*.png")))
    first = {p.name: np.asarray(Image.open(p)) for p in (out / "images").rglob("*.png")}
    assert all(image.shape == (32, 32, 3) for image in first.values())
    again = tmp_path / "again"
    reconstruct(prepared, again, model=cascade, split="test", progress=False, batch_size=1)
    for path in (again / "images").rglob("*.png"):  # each image has its own seed: batches do not matter
        assert np.array_equal(np.asarray(Image.open(path)), first[path.name])
    code, _, err = cli("validate", "--real", prepared, "--synthetic", out, "--out", tmp_path / "val", "--model",
                       "cnn", "--epochs", "1")
    assert code == 2 and "reconstructions of real images" in err and "Traceback" not in err
    # The reconstruct control of validate: the stage's upscaling of the run's own training sample only.
    sample = reconstruct(prepared, tmp_path / "own", model=cascade, split="train", model_sample=True, progress=False)
    assert sample["autoencoder_sample"]["images"] == sample["images"]


def test_a_pixel_model_has_no_ceiling_to_measure(prepared, cascade, tmp_path, cli):
    code, _, err = cli("reconstruct", "--data", prepared, "--out", tmp_path / "rec", "--model", cascade / "base")
    assert code == 2 and "a scratch model has no reconstruction" in err and "cascade" in err
    assert not (tmp_path / "rec").exists()


def test_the_cli_trains_a_cascade_preset(prepared, tmp_path, cli, monkeypatch):
    import yaml

    monkeypatch.setenv("COLUMNS", "240")
    config = tmp_path / "cascade.yaml"
    config.write_text(yaml.safe_dump(TINY_CASCADE))
    code, out, err = cli("train", "--data", prepared, "--out", tmp_path / "m", "--config", config, "--max-steps",
                         "3", "--quiet")
    assert code == 0, err
    info = json.loads((tmp_path / "m" / "dermsynth_model.json").read_text())
    assert info["family"] == "cascade" and info["steps"] == 3
    code, out, _ = cli("train", "--help")
    assert "cpu-cascade-128 (128 px, cascade: 32 px base" in " ".join(out.replace("│", " ").split())


def test_the_report_shows_both_stages(cascade, tmp_path):
    import shutil

    from dermsynth.report.folder import MODEL, RunFolder
    from dermsynth.report.sections.training import training_section

    shutil.copytree(cascade, tmp_path / "run" / MODEL)
    section = training_section(RunFolder(tmp_path / "run"))
    assert section["title"].startswith("Cascaded diffusion model")
    facts = str(section["facts"])
    assert "16 px pixel model, 4 steps" in facts and "2x, 6 steps" in facts
    assert section["curve"] is not None and len(section["samples"]) >= 2


def test_sampling_can_start_from_the_upsampled_base_image(cascade):
    """start_sigma: the low frequencies come from the base image from the first step; at a tiny level the stage
    barely changes the upsampled image, from pure noise it makes a new one."""
    from dermsynth.diffusion.cascade.sampling import SuperResolutionPipeline, upsample

    stage = SuperResolutionPipeline.from_pretrained(cascade / "super_resolution", factor=2)
    low = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    target = ((upsample(low, 32) + 1) / 2).permute(0, 2, 3, 1).numpy()
    near = stage.upscale(low, [0, 1], [1, 2], augmentation=0.0, num_inference_steps=3, start_sigma=0.01)
    far = stage.upscale(low, [0, 1], [1, 2], augmentation=0.0, num_inference_steps=3)
    assert near.shape == far.shape == (2, 32, 32, 3)
    assert np.abs(near - target).mean() < 0.02 < np.abs(far - target).mean()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_yaml_files_match_the_presets(preset):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"train-{preset}.yaml"
    assert resolve_cascade_config(None, path) == resolve_cascade_config(preset)
    with pytest.raises(DermsynthError, match="written for preset"):
        resolve_cascade_config("gpu-cascade-256" if preset != "gpu-cascade-256" else "cpu-cascade-128", path)
