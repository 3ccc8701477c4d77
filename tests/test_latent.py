"""The latent family: an autoencoder, then the class-conditional UNet on its latents, saved as a folder plain
diffusers reads; resumable in either stage; bad inputs give one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dermsynth.diffusion.checkpoints import list_checkpoints
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.scratch import autoencoder as latent_module
from dermsynth.diffusion.scratch.config import PRESETS, resolve_train_config
from dermsynth.diffusion.scratch.train import train
from dermsynth.errors import DermsynthError
from tests.test_diffusion_scratch import TINY, make_prepared

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY_LATENT = TINY | {
    "model": TINY["model"] | {"image_size": 32},
    "autoencoder": {"block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 3, "crop_size": 16,
                    "batch_size": 4, "max_steps": 6, "max_minutes": None, "checkpoint_every": 3, "warmup_steps": 1,
                    "log_every": 2},
}
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("latent") / "prep", size=32)


def test_train_save_load_with_plain_diffusers_and_generate(prepared, tmp_path):
    from diffusers import AutoencoderKL, UNet2DModel

    out = tmp_path / "model"
    result = train(prepared, out, config=TINY_LATENT, progress=False)
    info = json.loads((out / "dermsynth_model.json").read_text())
    assert info["family"] == "latent" and info["image_size"] == 32
    assert info["autoencoder"]["steps"] == 6 and info["autoencoder"]["latent_shape"] == [3, 16, 16]
    scores = info["autoencoder"]["reconstruction"]
    assert scores["images"] == 2 and 0 < scores["psnr"] < 60 and 0 < scores["bicubic_psnr"] < 60
    assert (out / "autoencoder" / "reconstructions.png").is_file()

    vae = AutoencoderKL.from_pretrained(out / "vae")
    unet = UNet2DModel.from_pretrained(out / "unet")
    assert unet.config.in_channels == vae.config.latent_channels == 3 and unet.config.sample_size == 16
    # The cached latents are scaled as Stable Diffusion's: zero mean, unit variance over the training images.
    latents = load_file(out / "autoencoder" / "latents.safetensors")["latents"]
    assert latents.shape == (16, 3, 16, 16)
    assert abs(float(latents.mean())) < 1e-4 and abs(float(latents.std()) - 1) < 1e-4
    z = (latent_module.encode_latents(vae, _train_images(prepared), bf16=False) - vae.config.shift_factor)
    assert torch.allclose(z * vae.config.scaling_factor, latents, atol=1e-4)

    made = generate(out, tmp_path / "synthetic", per_class=2, progress=False)
    assert made.summary["settings"]["family"] == "latent" and len(made.manifest) == 4
    for path in (tmp_path / "synthetic" / "images").rglob("*.png"):
        assert Image.open(path).size == (32, 32)
    assert result.steps == 6
    again = train(prepared, out, config=TINY_LATENT, progress=False)
    assert again.skipped


def _train_images(prepared) -> torch.Tensor:
    from dermsynth.data.dataset import load_prepared
    from dermsynth.diffusion.scratch.train import load_training_data

    return load_training_data(load_prepared(prepared), 32, progress=False).images


def test_decoder_learns_turned_latents_as_turned_images():
    """Stage 2 flips and transposes latents: the transform applied to a latent and to its target image agree."""
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    masks = torch.tensor([[True, False, True], [False, True, False]])
    turned = latent_module.dihedral(images, masks)
    assert torch.equal(turned[0], images[0].flip(2).transpose(1, 2))
    assert torch.equal(turned[1], images[1].flip(1))


class Interrupt(Exception):
    pass


# The patch discriminator starts mid-run, so the resumed run restores its weights and optimiser too.
WITH_CRITIC = TINY_LATENT | {"autoencoder": TINY_LATENT["autoencoder"] | {
    "crop_size": 32, "discriminator_weight": 0.5, "discriminator_start": 2}}


@pytest.mark.parametrize("settings", [TINY_LATENT, WITH_CRITIC], ids=["plain", "discriminator"])
def test_resume_in_stage_one_gives_the_uninterrupted_autoencoder(settings, prepared, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(prepared, whole, config=settings, progress=False)

    original = latent_module.AutoencoderTrainer.train_step

    def stop_after_four(self):
        if self.step == 4:
            raise Interrupt
        return original(self)

    monkeypatch.setattr(latent_module.AutoencoderTrainer, "train_step", stop_after_four)
    with pytest.raises(Interrupt):
        train(prepared, cut, config=settings, progress=False)
    monkeypatch.setattr(latent_module.AutoencoderTrainer, "train_step", original)
    assert [p.name for p in list_checkpoints(cut / "autoencoder")] == ["step-000003"]
    critic = list_checkpoints(cut / "autoencoder")[0] / "discriminator.safetensors"
    assert critic.is_file() == (settings is WITH_CRITIC)
    with pytest.raises(DermsynthError, match="unfinished training run"):
        train(prepared, cut, config=settings, progress=False)  # without --resume nothing is overwritten
    train(prepared, cut, config=settings, progress=False, resume=True)
    for weights in (VAE_WEIGHTS, UNET_WEIGHTS):
        _assert_same(whole / weights, cut / weights)


def test_resume_in_stage_two_keeps_the_autoencoder(prepared, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(prepared, whole, config=TINY_LATENT, progress=False)

    def stop_at_four(step: int, loss: float) -> None:
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(prepared, cut, config=TINY_LATENT, progress=False, callback=stop_at_four)
    stage_one = (cut / "autoencoder" / "autoencoder.json").read_text()
    train(prepared, cut, config=TINY_LATENT, progress=False, resume=True)
    assert (cut / "autoencoder" / "autoencoder.json").read_text() == stage_one  # not trained again
    _assert_same(whole / UNET_WEIGHTS, cut / UNET_WEIGHTS)
    # Stage 1 with other settings would make other latents: refused, not silently mixed with stage 2's state.
    changed = TINY_LATENT | {"autoencoder": TINY_LATENT["autoencoder"] | {"kl_weight": 1e-3}}
    with pytest.raises(DermsynthError, match="kl_weight"):
        train(prepared, cut, config=changed | {"max_steps": 8}, progress=False, resume=True)


def test_the_discriminator_changes_the_autoencoder_and_needs_crops_it_can_judge(prepared, tmp_path):
    plain, judged = tmp_path / "plain", tmp_path / "judged"
    crops = TINY_LATENT | {"autoencoder": TINY_LATENT["autoencoder"] | {"crop_size": 32}}
    train(prepared, plain, config=crops, progress=False)
    train(prepared, judged, config=WITH_CRITIC, progress=False)
    a, b = load_file(plain / VAE_WEIGHTS), load_file(judged / VAE_WEIGHTS)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the adversarial term reached the decoder
    real = torch.randn(2, 3, 32, 32)
    critic = latent_module.patch_discriminator()
    assert critic(real).shape == (2, 1, 2, 2)  # one score per patch
    assert float(latent_module.hinge_critic_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0
    small = TINY_LATENT | {"autoencoder": TINY_LATENT["autoencoder"] | {"discriminator_weight": 0.5}}
    with pytest.raises(DermsynthError, match="crop_size of at least 32"):
        resolve_train_config("cpu-fast", small)


def _assert_same(a, b) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_presets_are_valid_and_128_px_comes_from_32_px_latents():
    config = resolve_train_config("cpu-latent-128")
    assert config.model.image_size == 128 and config.unet_size == 32 and config.autoencoder.downsample == 4
    assert resolve_train_config("gpu-latent-256").unet_size == 32
    assert {"cpu-latent-128", "gpu-latent-256"} <= set(PRESETS)
    with pytest.raises(DermsynthError, match="divisible by 16"):
        resolve_train_config("cpu-latent-128", {"model": {"image_size": 120}})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermsynth", *args, "--quiet"], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)


def test_a_preset_larger_than_the_prepared_images_is_a_one_line_error(prepared, tmp_path):
    done = _cli("train", "--data", str(prepared), "--out", str(tmp_path / "m"), "--preset", "cpu-latent-128")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "32 px images" in message and "--image-size 128" in message
    assert not (tmp_path / "m").exists()


def test_a_corrupt_vae_is_a_one_line_error(prepared, tmp_path):
    out = tmp_path / "model"
    train(prepared, out, config=TINY_LATENT, progress=False)
    weights = out / VAE_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = _cli("generate", "--model", str(out), "--out", str(tmp_path / "syn"), "--per-class", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot be read" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(DermsynthError, match="trained autoencoder cannot be read"):
        train(prepared, out, config=TINY_LATENT | {"max_steps": 8}, progress=False, resume=True)


def test_the_spectrum_loss_asks_for_texture_energy_not_position(prepared, tmp_path):
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    shifted = image.roll(shifts=(5, 3), dims=(2, 3))  # same texture, moved: a circular shift keeps amplitudes
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
    assert float(latent_module.spectrum_l1(image, shifted)) < 1e-5
    assert float(latent_module.spectrum_l1(image, blurred)) > 0.05
    plain, spectral = tmp_path / "plain", tmp_path / "spectral"
    train(prepared, plain, config=TINY_LATENT, progress=False)
    train(prepared, spectral, config=TINY_LATENT | {"autoencoder": TINY_LATENT["autoencoder"] | {
        "frequency_weight": 1.0}}, progress=False)
    a, b = load_file(plain / VAE_WEIGHTS), load_file(spectral / VAE_WEIGHTS)
    assert any(not torch.equal(a[k], b[k]) for k in a)
