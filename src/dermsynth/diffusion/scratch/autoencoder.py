"""Stage 1 of the latent family: the autoencoder, and the latents stage 2 trains on.

:func:`train_autoencoder` fits a diffusers ``AutoencoderKL`` to random crops of the training images (L1, 1 - SSIM,
a small KL term and, optionally, an amplitude-spectrum L1 and a patch discriminator's hinge loss) in the
working folder ``MODEL/autoencoder/``, with the harness's budget, checkpoints and resume. It then

- measures reconstruction PSNR/SSIM on val images beside a bicubic down-and-up baseline of the same factor;
- saves ``MODEL/vae/`` (``AutoencoderKL.from_pretrained`` reads it) with ``shift_factor`` and ``scaling_factor``
  set so that the training latents have zero mean and unit variance, Stable Diffusion's convention;
- caches the scaled latents of the training images (``autoencoder/latents.safetensors``).

The decoder is also trained to decode a flipped or transposed latent as the flipped or transposed image, so
stage 2 augments latents with the 8 symmetries of the square, as the pixel model augments images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from dermsynth.diffusion.grid import image_grid
from dermsynth.diffusion.harness import LoopSettings, TrainingHarness, changed_settings
from dermsynth.diffusion.scratch.config import AUTOENCODER_RESUMABLE, AutoencoderConfig, TrainConfig, build_autoencoder
from dermsynth.diffusion.scratch.sampling import VAE_FOLDER
from dermsynth.diffusion.threads import thread_tuner
from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError
from dermsynth.progress import track
from dermsynth.utils import atomic_path, read_json, save_pretrained_atomic, sha256_file, stable_hash, write_json_atomic

WORK_FOLDER = "autoencoder"
RECORD = "autoencoder.json"
LATENTS = "latents.safetensors"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class Autoencoder:
    """A finished stage 1: the autoencoder (scaling set), its weights' hash and its record."""

    vae: AutoencoderKL
    sha256: str
    record: dict[str, Any]


# --------------------------------------------------------------------------- image operations


def dihedral(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image flip (width), flip (height) and transposition where ``masks[:, 0|1|2]`` is set."""
    def where(mask: torch.Tensor, transformed: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return torch.where(mask[:, None, None, None], transformed, base)

    images = where(masks[:, 0], images.flip(3), images)
    images = where(masks[:, 1], images.flip(2), images)
    return where(masks[:, 2], images.transpose(2, 3), images)


def random_crops(images: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` square per image (uint8 in, float in [-1, 1] out); None = whole images."""
    pixels = images.float() / 127.5 - 1.0
    if size is None or size >= images.shape[-1]:
        return pixels
    room = images.shape[-1] - size + 1
    corners = torch.randint(0, room, (len(images), 2), generator=generator, device=images.device).tolist()
    return torch.stack([pixels[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(corners)])


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def spectrum_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the 2-D amplitude spectra (orthonormal FFT, so on the pixels' scale by Parseval).
    Amplitudes only: where edges sit is L1's job; this term asks that the fine texture's energy be there."""
    def amplitude(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x.float(), norm="ortho").abs()

    return (amplitude(a) - amplitude(b)).abs().mean()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images in [-1, 1] (torchmetrics, Gaussian window 11, sigma 1.5)."""
    return structural_similarity_index_measure(a.float(), b.float(), data_range=2.0)


def patch_discriminator(channels: int = 64, layers: int = 3) -> torch.nn.Sequential:
    """A PatchGAN critic (pix2pix's design, GroupNorm for batch independence): one real/fake score per ~70 px
    receptive field, so it judges texture, which L1 and SSIM leave blurred."""
    blocks: list[torch.nn.Module] = [torch.nn.Conv2d(3, channels, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
    width = channels
    for level in range(1, layers + 1):
        wider = channels * min(2 ** level, 8)
        stride = 2 if level < layers else 1
        blocks += [torch.nn.Conv2d(width, wider, 4, stride, 1, bias=False), torch.nn.GroupNorm(32, wider),
                   torch.nn.LeakyReLU(0.2)]
        width = wider
    blocks.append(torch.nn.Conv2d(width, 1, 4, 1, 1))
    critic = torch.nn.Sequential(*blocks)
    for module in critic.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, 0.0, 0.02)
    return critic


def hinge_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean())


def adaptive_adversarial_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor,
                                last_layer: torch.Tensor) -> torch.Tensor:
    """How much the adversarial term may count: the ratio of the two losses' gradient norms at the decoder's last
    layer (Esser et al. 2021), so that it sharpens texture without swamping reconstruction."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


# --------------------------------------------------------------------------- the trainer


class AutoencoderTrainer(TrainingHarness):
    """The autoencoder, optimiser and RNG of stage 1; the harness trains it to its own budget."""

    data_description = "the training images, image size, seed or precision"

    def __init__(self, cfg: TrainConfig, images: torch.Tensor, identity: str, work: Path, device: torch.device,
                 bf16: bool, progress: bool):
        ae: AutoencoderConfig = cfg.autoencoder  # type: ignore[assignment]
        loop = LoopSettings(max_steps=ae.max_steps, max_minutes=ae.max_minutes, log_every=ae.log_every,
                            checkpoint_every=ae.checkpoint_every, checkpoints_total_limit=ae.checkpoints_total_limit,
                            resumable=frozenset(AUTOENCODER_RESUMABLE), task="autoencoder")
        threads = thread_tuner(cfg.threads, device)
        super().__init__(work, ae, threads, loop, identity, progress)
        self.ae, self.device, self.bf16 = ae, device, bf16
        torch.manual_seed(cfg.seed)
        self.vae = build_autoencoder(ae, cfg.model.image_size).to(device).train()
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=ae.learning_rate)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.lr_factor(step, ae.warmup_steps, "cosine"))
        self.critic, self.critic_optimizer = None, None
        if ae.discriminator_weight > 0:
            self.critic = patch_discriminator().to(device).train()
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=ae.learning_rate, betas=(0.5, 0.9))
        self.generator = torch.Generator(device).manual_seed(cfg.seed)
        self.images = images.to(device)

    def train_step(self) -> float:
        index = torch.randint(0, len(self.images), (self.ae.batch_size,), generator=self.generator,
                              device=self.device)
        crops = random_crops(self.images[index], self.ae.crop_size, self.generator)
        crops = dihedral(crops, self._masks(len(crops)))
        with _autocast(self.device, self.bf16):
            posterior = self.vae.encode(crops).latent_dist
            latents = posterior.sample(generator=self.generator)
            turn = self._masks(len(crops))  # decode a turned latent as the turned image (stage 2 turns latents)
            reconstruction = self.vae.decode(dihedral(latents, turn)).sample.float()
        target = dihedral(crops, turn)
        reconstruction_loss = F.l1_loss(reconstruction, target) + self.ae.ssim_weight * (
            1 - ssim(reconstruction, target))
        if self.ae.frequency_weight > 0:
            reconstruction_loss = reconstruction_loss + self.ae.frequency_weight * spectrum_l1(reconstruction, target)
        loss = reconstruction_loss + self.ae.kl_weight * posterior.kl().float().mean()
        adversarial = self.critic is not None and self.step >= self.ae.discriminator_start
        if adversarial:
            fooling = -self.critic(reconstruction).mean()
            weight = adaptive_adversarial_weight(reconstruction_loss, fooling, self.vae.decoder.conv_out.weight)
            loss = loss + self.ae.discriminator_weight * weight * fooling
        value = self.optimizer_step(loss, self.vae.parameters(), self.ae.max_grad_norm)
        if adversarial:
            self._critic_step(target, reconstruction.detach())
        return value

    def _critic_step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        self.critic_optimizer.zero_grad(set_to_none=True)  # also drops what the autoencoder's step left here
        hinge_critic_loss(self.critic(real), self.critic(fake)).backward()
        self.critic_optimizer.step()

    def _masks(self, count: int) -> torch.Tensor:
        return torch.rand((count, 3), generator=self.generator, device=self.device) < 0.5

    def write_state(self, folder: Path) -> dict[str, Any]:
        _save_weights(self.vae, folder / "vae.safetensors")
        state = self.loop_state()
        if self.critic is not None:
            _save_weights(self.critic, folder / "discriminator.safetensors")
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        torch.save(state, folder / "training_state.pt")
        return {}

    def read_state(self, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
        weights = load_file(folder / "vae.safetensors", device=str(self.device))
        if set(weights) != set(self.vae.state_dict()):
            raise KeyError("weights do not match the autoencoder")
        training = torch.load(folder / "training_state.pt", map_location=self.device, weights_only=True)
        saved = {"weights": weights, "training": training}
        if self.critic is not None:
            saved["critic"] = load_file(folder / "discriminator.safetensors", device=str(self.device))
            if set(saved["critic"]) != set(self.critic.state_dict()) or "critic_optimizer" not in training:
                raise KeyError("weights do not match the discriminator")
        return saved

    def apply_state(self, saved: dict[str, Any]) -> None:
        training = saved["training"]
        self.vae.load_state_dict(saved["weights"])
        if self.critic is not None:
            self.critic.load_state_dict(saved["critic"])
            self.critic_optimizer.load_state_dict(training["critic_optimizer"])
        self.restore_loop_state(training)


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)


# --------------------------------------------------------------------------- stage 1


def train_autoencoder(cfg: TrainConfig, images: torch.Tensor, data_sha256: str,
                      val_images: Callable[[], torch.Tensor], out: Path, device: torch.device, bf16: bool,
                      resume: bool, progress: bool) -> Autoencoder:
    """Stage 1 in ``out/autoencoder`` (resumed from its newest checkpoint with ``resume``), or the finished one
    that is there when it was trained with the same settings on the same images. ``val_images()`` gives the
    uint8 images reconstruction is measured on (loaded only when stage 1 runs)."""
    ae: AutoencoderConfig = cfg.autoencoder  # type: ignore[assignment]
    work = out / WORK_FOLDER
    identity = stable_hash([data_sha256, cfg.model.image_size, cfg.seed, bf16])
    finished = _finished_autoencoder(out, ae, identity, device)
    if finished is not None:
        return finished
    work.mkdir(parents=True, exist_ok=True)
    trainer = AutoencoderTrainer(cfg, images, identity, work, device, bf16, progress)
    if resume:
        trainer.resume_newest()
    seconds, stopped_by = trainer.train()
    vae = trainer.vae.eval()
    val = val_images()
    scores = reconstruction_scores(vae, val, ae.downsample, bf16)
    _save_reconstructions(vae, val[:8], work / "reconstructions.png", bf16)
    latents = encode_latents(vae, images, bf16, progress)
    shift, scale = float(latents.mean()), float(1.0 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    save_pretrained_atomic(vae, out / VAE_FOLDER)
    sha = sha256_file(out / VAE_FOLDER / VAE_WEIGHTS)
    _write_latents(work / LATENTS, (latents - shift) * scale, sha, data_sha256)
    record = {"config": ae.model_dump(mode="json"), "identity": identity, "steps": trainer.step,
              "seconds": round(seconds, 1), "stopped_by": stopped_by, "final_loss": trainer.smoothed_loss,
              "downsample": ae.downsample, "latent_shape": list(latents.shape[1:]), "shift_factor": shift,
              "scaling_factor": scale, "reconstruction": scores, "vae_sha256": sha,
              "reconstructions_grid": f"{WORK_FOLDER}/reconstructions.png",
              "reproducible": trainer.reproducibility(device)}
    write_json_atomic(work / RECORD, record)
    return Autoencoder(vae, sha, record)


def _finished_autoencoder(out: Path, ae: AutoencoderConfig, identity: str, device: torch.device) -> Autoencoder | None:
    """The stage 1 already in ``out`` when its learned settings and images match; an error when they differ (its
    latents would no longer fit a resumed stage 2); None when stage 1 has not finished."""
    path = out / WORK_FOLDER / RECORD
    if not path.is_file():
        return None
    record = read_json(path, "delete that folder to train afresh")
    differ = changed_settings(ae, record.get("config", {}), frozenset(AUTOENCODER_RESUMABLE))
    if differ or record.get("identity") != identity:
        what = f"setting(s) {', '.join(differ)}" if differ else "its images, image size, seed or precision"
        raise DermsynthError(f"{out}: the trained autoencoder differs from this run in {what}; choose another "
                             "--out (or delete that folder to train afresh)")
    folder = out / VAE_FOLDER
    try:
        vae = AutoencoderKL.from_pretrained(folder).to(device).eval()
        sha = sha256_file(folder / VAE_WEIGHTS)
    except UNREADABLE_ARTIFACT_ERRORS as exc:
        raise DermsynthError(f"{folder}: the trained autoencoder cannot be read ({type(exc).__name__}); delete "
                             f"{out / WORK_FOLDER / RECORD} to retrain stage 1 from its checkpoints") from None
    if sha != record.get("vae_sha256"):
        raise DermsynthError(f"{folder}: its weights are not the ones stage 1 saved; delete "
                             f"{out / WORK_FOLDER / RECORD} to retrain stage 1 from its checkpoints")
    return Autoencoder(vae, sha, record)


# --------------------------------------------------------------------------- latents


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, bf16: bool, progress: bool = False,
                   batch: int = 32) -> torch.Tensor:
    """The encoder's posterior means of uint8 images (N, 3, H, W), unscaled, float32 on the CPU."""
    device = vae.device
    chunks = range(0, len(images), batch)
    out = []
    for start in track(chunks, len(chunks), "encode latents", enabled=progress):
        pixels = images[start:start + batch].to(device).float() / 127.5 - 1.0
        with _autocast(device, bf16):
            out.append(vae.encode(pixels).latent_dist.mean.float().cpu())
    return torch.cat(out)


def _write_latents(path: Path, latents: torch.Tensor, vae_sha256: str, data_sha256: str) -> None:
    with atomic_path(path) as tmp:
        save_file({"latents": latents.contiguous()}, str(tmp),
                  metadata={"vae_sha256": vae_sha256, "data_sha256": data_sha256})


def cached_latents(out: Path, autoencoder: Autoencoder, images: torch.Tensor, data_sha256: str, bf16: bool,
                   progress: bool) -> torch.Tensor:
    """The scaled latents of the training images: from the cache when it belongs to this autoencoder and these
    images, else encoded again (and the cache rewritten)."""
    path = out / WORK_FOLDER / LATENTS
    with contextlib.suppress(*UNREADABLE_ARTIFACT_ERRORS), safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("vae_sha256") == autoencoder.sha256 and meta.get("data_sha256") == data_sha256:
            latents = handle.get_tensor("latents")
            if latents.shape[0] == len(images):
                return latents
    config = autoencoder.vae.config
    latents = (encode_latents(autoencoder.vae, images, bf16, progress) - config.shift_factor) * config.scaling_factor
    _write_latents(path, latents, autoencoder.sha256, data_sha256)
    return latents


# --------------------------------------------------------------------------- reconstruction quality


@torch.no_grad()
def reconstruction_scores(vae: AutoencoderKL, images: torch.Tensor, factor: int, bf16: bool,
                          batch: int = 32) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of the autoencoder's reconstructions of uint8 ``images``, and of a bicubic
    down-and-up by the same factor (what the latent's size alone would keep)."""
    sums = {"psnr": 0.0, "ssim": 0.0, "bicubic_psnr": 0.0, "bicubic_ssim": 0.0}
    for start in range(0, len(images), batch):
        pixels = images[start:start + batch].to(vae.device).float() / 127.5 - 1.0
        reconstruction = autoencode(vae, pixels, bf16).clamp(-1, 1)
        bicubic = bicubic_down_up(pixels, factor).clamp(-1, 1)
        for name, made in (("", reconstruction), ("bicubic_", bicubic)):
            for one_real, one_made in zip(pixels, made, strict=True):  # per image, then averaged
                sums[f"{name}psnr"] += float(peak_signal_noise_ratio(one_made[None], one_real[None], data_range=2.0))
                sums[f"{name}ssim"] += float(ssim(one_made[None], one_real[None]))
    return {key: round(value / len(images), 4) for key, value in sums.items()} | {"images": len(images)}


def bicubic_down_up(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic down by ``factor`` (antialiased) and back up: what a code of that size keeps unlearned."""
    side = pixels.shape[-1]
    small = F.interpolate(pixels, size=side // factor, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=side, mode="bicubic", align_corners=False)


def autoencode(vae: AutoencoderKL, pixels: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Encoder mean, then decoder (unclipped), as samples are decoded."""
    with _autocast(pixels.device, bf16):
        latents = vae.encode(pixels).latent_dist.mean
        return vae.decode(latents).sample.float()


@torch.no_grad()
def _save_reconstructions(vae: AutoencoderKL, images: torch.Tensor, path: Path, bf16: bool) -> None:
    """Two rows: real val images, and their reconstructions."""
    pixels = images.to(vae.device).float() / 127.5 - 1.0
    reconstruction = autoencode(vae, pixels, bf16)
    both = torch.cat([pixels, reconstruction]).permute(0, 2, 3, 1).cpu().numpy() / 2 + 0.5
    with atomic_path(path) as tmp:
        image_grid(both, rows=["real", "reconstruction"]).save(tmp, format="PNG")
