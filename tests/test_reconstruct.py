"""`dermsynth reconstruct`: real images through a latent model's autoencoder or a bicubic down-and-up, as a
folder the audit reads without re-preprocessing and validate refuses to train on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dermsynth.data.images import load_image
from dermsynth.data.synthetic_folders import comparable_folder, made_by_dermsynth
from dermsynth.diffusion.scratch.reconstruct import reconstruct
from dermsynth.diffusion.scratch.train import train
from dermsynth.errors import DermsynthError
from tests.test_diffusion_scratch import make_prepared, run_cli
from tests.test_latent import TINY_LATENT

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_prepared(tmp_path_factory.mktemp("reconstruct") / "prep", size=32,
                         per_class={"benign": 8, "malignant": 6})
    summary = json.loads((root / "prepare.json").read_text())
    summary["settings"] = {"preprocess": {"image_size": 32}}
    (root / "prepare.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def latent_model(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("reconstruct-model") / "model"
    train(prepared, out, config=TINY_LATENT, progress=False)
    return out


def test_autoencoder_reconstructions_are_an_auditable_folder(prepared, latent_model, tmp_path):
    out = tmp_path / "rec"
    record = reconstruct(prepared, out, model=latent_model, split="val", progress=False)
    manifest = pd.read_csv(out / "manifest.csv")
    val = pd.read_csv(prepared / "metadata.csv").query("split == 'val'")
    assert sorted(manifest["source_image_id"]) == sorted(val["image_id"])
    assert record["images"] == len(val) == 2 and record["split"] == "val" and record["factor"] == 2
    assert not manifest["synthetic"].any() and "not synthetic" in record["what"]
    # Paths are relative to the folder: no machine path in an artifact.
    assert (out / record["model"]).resolve() == latent_model.resolve()
    assert (out / record["prepared"]).resolve() == prepared.resolve()
    assert made_by_dermsynth(out)  # the audit reads it as is: it comes from the prepared images
    folder, how = comparable_folder(out, {}, True, tmp_path / "cache", progress=False)
    assert folder == out and not how["preprocessed"]
    # The PNG is the decoder's output of that very image, and its PSNR is recorded against the source.
    first = manifest.iloc[0]
    made = np.asarray(Image.open(out / first["path"]).convert("RGB"))
    source = load_image(prepared / val.set_index("image_id").loc[first["source_image_id"], "path"], 32)
    mse = np.mean((made.astype(np.float64) - source) ** 2)
    assert first["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=0.01)
    assert Image.open(out / first["path"]).text["dermsynth"].startswith("reconstructions of real")


def test_bicubic_reference_loses_more_at_a_larger_factor(prepared, tmp_path):
    two = reconstruct(prepared, tmp_path / "x2", bicubic=2, split="train", progress=False)
    eight = reconstruct(prepared, tmp_path / "x8", bicubic=8, split="train", progress=False)
    assert two["images"] == eight["images"] == 10
    assert two["psnr"] > eight["psnr"] and two["ssim"] > eight["ssim"]
    row = pd.read_csv(tmp_path / "x2" / "manifest.csv").iloc[0]
    source = pd.read_csv(prepared / "metadata.csv").set_index("image_id").loc[row["source_image_id"], "path"]
    pixels = torch.from_numpy(np.array(load_image(prepared / source, 32))).permute(2, 0, 1)[None].float() / 127.5 - 1
    small = F.interpolate(pixels, size=16, mode="bicubic", antialias=True, align_corners=False)
    expected = ((F.interpolate(small, size=32, mode="bicubic", align_corners=False).clamp(-1, 1) + 1) * 127.5 + 0.5)
    made = np.asarray(Image.open(tmp_path / "x2" / row["path"]).convert("RGB"))
    assert np.array_equal(made, expected.to(torch.uint8)[0].permute(1, 2, 0).numpy())


def test_max_images_takes_a_seeded_sample(prepared, tmp_path):
    a = reconstruct(prepared, tmp_path / "a", bicubic=2, split="train", max_images=3, progress=False)
    reconstruct(prepared, tmp_path / "b", bicubic=2, split="train", max_images=3, progress=False)
    assert a["images"] == 3
    assert list(pd.read_csv(tmp_path / "a" / "manifest.csv")["image_id"]) == list(
        pd.read_csv(tmp_path / "b" / "manifest.csv")["image_id"])


@pytest.mark.parametrize(("args", "message"), [
    ([], "exactly one of --model"),
    (["--bicubic", "3"], "divides the image size"),
    (["--bicubic", "2", "--split", "holdout"], "--split must be one of"),
    (["--bicubic", "2", "--max-images", "0"], "--max-images must be 1 or more"),
])
def test_bad_options_are_one_line_errors(prepared, tmp_path, capsys, args, message):
    code, _, err = run_cli(["reconstruct", "--data", str(prepared), "--out", str(tmp_path / "rec"), *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "rec").exists()


def test_model_without_or_with_a_corrupt_autoencoder(prepared, latent_model, tmp_path, capsys):
    code, _, err = run_cli(["reconstruct", "--data", str(prepared), "--out", str(tmp_path / "rec"),
                            "--model", str(tmp_path)], capsys)
    assert code == 2 and "no vae/ autoencoder" in err
    broken = tmp_path / "broken"
    (broken / "vae").mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (broken / "vae" / name).write_bytes((latent_model / "vae" / name).read_bytes()[:100])
    code, _, err = run_cli(["reconstruct", "--data", str(prepared), "--out", str(tmp_path / "rec"),
                            "--model", str(broken)], capsys)
    assert code == 2 and "cannot be read" in err and "Traceback" not in err
    assert not (tmp_path / "rec").exists()


def test_finished_folder_is_kept_and_validate_refuses_it(prepared, tmp_path, capsys):
    out = tmp_path / "rec"
    reconstruct(prepared, out, bicubic=2, progress=False)
    with pytest.raises(DermsynthError, match="already holds reconstructions"):
        reconstruct(prepared, out, bicubic=4, progress=False)
    assert json.loads((out / "reconstruct.json").read_text())["factor"] == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DermsynthError, match="not an empty folder"):
        reconstruct(prepared, tmp_path / "mine", bicubic=2, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    code, _, err = run_cli(["validate", "--real", str(prepared), "--synthetic", str(out), "--out",
                            str(tmp_path / "val"), "--model", "cnn", "--epochs", "1"], capsys)
    assert code == 2 and "reconstructions of real images" in err


# --------------------------------------------------------------------------- validate's reconstruct control


def _validate(prepared, tmp_path, name, **settings):
    from dermsynth.evaluate.validate import validate
    from tests.test_validate import TINY_CNN, TINY_TRAIN

    config = {"real": prepared, "model": "cnn", "architecture": TINY_CNN, "train": TINY_TRAIN, "bootstrap": 100,
              "seeds": 1, "regimes": ["real", "reconstruct:0.5"], "device": "cpu", "threads": 1} | settings
    return validate(config, tmp_path / name, progress=False)


def test_reconstruct_control_trains_on_the_run_s_own_reconstructions(prepared, latent_model, tmp_path):
    rec = tmp_path / "rec"
    record = reconstruct(prepared, rec, model=latent_model, split="train", model_sample=True, progress=False)
    train_ids = set(pd.read_csv(prepared / "metadata.csv").query("split == 'train'")["image_id"])
    assert record["autoencoder_sample"]["images"] == len(train_ids) == record["images"]
    result = _validate(prepared, tmp_path, "v", reconstruction=rec, regimes=["real", "reconstruct-add:12"])
    assert len(result.ran) == 2
    run = tmp_path / "v" / "validation" / "reconstruct-add-12" / "0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["made_by"] == "reconstruct" and metrics["train_synthetic"] == 12
    made = pd.read_csv(run / "train_images.csv", dtype={"image_id": str})
    copies = made[made["image_id"].str.startswith("rec:")]
    assert len(copies) == 12 and set(copies["image_id"].str.split(":").str[1]) <= train_ids


def test_reconstruct_control_refuses_an_autoencoder_that_saw_other_real_images(prepared, latent_model, tmp_path):
    rec = tmp_path / "rec"
    reconstruct(prepared, rec, model=latent_model, split="train", model_sample=True, progress=False)
    # The model saw the whole train split; a run on 3 per class would get decoders of images it never holds.
    with pytest.raises(DermsynthError, match="not on exactly this run's 6 real training images"):
        _validate(prepared, tmp_path, "v", reconstruction=rec, real_per_class=3)
    val = tmp_path / "rec-val"
    reconstruct(prepared, val, model=latent_model, split="val", progress=False)
    with pytest.raises(DermsynthError, match="training images only"):
        _validate(prepared, tmp_path, "w", reconstruction=val)
    with pytest.raises(DermsynthError, match="needs `reconstruction:`"):
        _validate(prepared, tmp_path, "x")
    # A bicubic down-and-up learned nothing: any sample may use it.
    bicubic = tmp_path / "bicubic"
    reconstruct(prepared, bicubic, bicubic=2, split="train", progress=False)
    assert len(_validate(prepared, tmp_path, "y", reconstruction=bicubic, real_per_class=3).ran) == 2
    with pytest.raises(DermsynthError, match="--model-sample needs --model and --split train"):
        reconstruct(prepared, tmp_path / "z", bicubic=2, split="train", model_sample=True, progress=False)
