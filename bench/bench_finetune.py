"""Step time of DreamBooth-LoRA fine-tuning: our training step against the same step written the usual way.

    HF_HUB_OFFLINE=1 python bench/bench_finetune.py [--size 64] [--batch 4] [--rounds 30] [--threads 1]

A: ``dermsynth.diffusion.sd.finetune.FinetuneTrainer.train_step`` (prior preservation, LoRA on the UNet).
B: the step as diffusers' ``train_dreambooth_lora.py`` example organises it: prompts tokenized and run through
   the frozen text encoder every step, instance and class images in one batch, the prediction split in two for
   the prior loss, ``torch.optim.AdamW`` with its default settings, gradient clipping, LR scheduler step.
Both use the same tiny Stable Diffusion (random weights, UNet ~1.4 M parameters, 8x VAE), the same LoRA rank,
the same fixed batch of ``--batch`` instance + ``--batch`` class images, fp32. B gets its images decoded
beforehand; A runs its own data path (VAE latents of each image encoded once and cached, text embeddings of the
two prompts cached: both exact, since the VAE and text encoder are frozen). They alternate within one process,
so load from other processes hits both alike; medians are reported, and the ratio B / A (above 1: ours is
faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dermsynth.data.images import load_training_square
from dermsynth.diffusion.sd.config import FinetuneConfig
from dermsynth.diffusion.sd.data import to_pixels
from dermsynth.diffusion.sd.finetune import FinetuneTrainer
from dermsynth.diffusion.sd.models import load_pipeline
from dermsynth.testing.tiny_sd import build_tiny_pipeline

INSTANCE, CLASS = "dermoscopy image of a sks lesion", "dermoscopy image of a skin lesion"


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def ours(base: Path, root: Path, size: int, batch: int, rank: int):
    cfg = FinetuneConfig(method="lora", base=str(base), resolution=size, instance_dir=root / "instance",
                         class_dir=root / "class", instance_prompt=INSTANCE, class_prompt=CLASS,
                         num_class_images=batch, train_batch_size=batch, max_steps=10_000, random_flip=False,
                         lora={"rank": rank}, learning_rate=1e-4)
    trainer = FinetuneTrainer(cfg, None, root / "out", False, None)
    trainer._complete_class_images()
    trainer._setup_models()
    trainer._setup_optimisation()
    fixed = trainer._micro_batch(0)
    trainer._micro_batch = lambda micro_step: fixed  # same batch every step, as in B
    return trainer.train_step, fixed


def reference(base: Path, fixed, rank: int, size: int):
    """The usual DreamBooth-LoRA step, written out."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    pipe = load_pipeline(base)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer, num_warmup_steps=0, num_training_steps=10_000)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    examples = fixed[0]
    pixels = to_pixels([load_training_square(e.path, size) for e in examples], None)  # decoded once, outside the step
    prompts = [e.prompt for e in examples]
    unet.train()

    def step() -> float:
        input_ids = tokenizer(prompts, truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                              return_tensors="pt").input_ids
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(input_ids, return_dict=False)[0]
        prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        prediction, prediction_prior = torch.chunk(prediction, 2, dim=0)
        target, target_prior = torch.chunk(noise, 2, dim=0)
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        loss = loss + 1.0 * F.mse_loss(prediction_prior.float(), target_prior.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return step


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side (64 px = 8x8 latents)")
    parser.add_argument("--batch", type=int, default=4, help="instance images per step (as many class images)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="32 px, 1+1 images, 2 rounds: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.rounds = 32, 1, 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_pipeline(seed=0).save_pretrained(root / "base")
        write_images(root / "instance", args.batch, args.size, 0)
        write_images(root / "class", args.batch, args.size, 1)
        step_a, fixed = ours(root / "base", root, args.size, args.batch, args.rank)
        step_b = reference(root / "base", fixed, args.rank, args.size)
        for _ in range(3):  # warm-up
            step_a(), step_b()
        times_a, times_b = [], []
        for _ in range(args.rounds):
            times_a.append(timed(step_a))
            times_b.append(timed(step_b))
    a, b = statistics.median(times_a), statistics.median(times_b)
    print(f"DreamBooth-LoRA step, {args.size} px, {args.batch}+{args.batch} images, rank {args.rank}, fp32, "
          f"{args.threads} thread(s), {args.rounds} alternating rounds (medians):")
    print(f"  A  dermsynth FinetuneTrainer.train_step   {a * 1000:7.1f} ms")
    print(f"  B  usual DreamBooth-LoRA step      {b * 1000:7.1f} ms")
    print(f"  B / A = {b / a:.2f}")


if __name__ == "__main__":
    main()
