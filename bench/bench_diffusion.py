"""Speed of from-scratch diffusion on this machine: matmul peak, training A/B, FLOP efficiency, samplers.

    HF_HUB_OFFLINE=1 python bench/bench_diffusion.py [--model MODEL] [--rounds 5] [--json out.json]

* matmul peak: best GFLOP/s of a large square torch.matmul, fp32 and bf16.
* training: steps/s of our loop (dermsynth ScratchTrainer.train_step: bf16 autocast where supported, v-prediction,
  flips, label dropout, grad clipping, EMA) against a plain loop as diffusers' train_unconditional example runs
  it (fp32, no autocast, DDPMScheduler.add_noise + MSE on the noise, AdamW, grad clipping, no EMA), on the same
  UNet (the cpu-fast preset) and batch. The two alternate in rounds within one process, so load from other
  processes hits both alike; medians are reported. Also: our loop on 1 thread vs all threads. On a machine
  busy with other work, pass --threads 1: two threads then wait on each other and time mostly the contention.
* FLOP efficiency: UNet FLOPs of one forward + backward (torch.utils.flop_counter) x steps/s, against the peak.
* sampling (with --model): images/s of DDIM-50 and DPM-Solver++-20 (fp32 and bf16) for the same seeds, and how
  far apart their images are (mean absolute difference in 8-bit levels, PSNR).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dermsynth.diffusion.grid import to_uint8
from dermsynth.diffusion.scratch.config import build_unet, resolve_train_config
from dermsynth.diffusion.scratch.sampling import PixelDiffusionPipeline
from dermsynth.diffusion.scratch.train import ScratchTrainer, TrainingData


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_trainer(cfg, images: int = 512) -> ScratchTrainer:
    generator = torch.Generator().manual_seed(0)
    size = cfg.model.image_size
    data = TrainingData(
        images=torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=generator),
        targets=torch.randint(0, 2, (images,), generator=generator),
        classes=["benign", "malignant"], summary={"sha256": "bench"}, image_ids=[str(i) for i in range(images)],
    )
    return ScratchTrainer(cfg, data, Path("/nonexistent"))


class PlainLoop:
    """diffusers' train_unconditional recipe (fp32, epsilon target, add_noise + MSE), with class labels."""

    def __init__(self, cfg, images: torch.Tensor, labels: torch.Tensor):
        from diffusers import DDPMScheduler

        torch.manual_seed(0)
        self.unet = build_unet(cfg.model, 2).train()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
        self.images, self.labels, self.batch = images, labels, cfg.batch_size

    def train_step(self) -> float:
        index = torch.randint(0, len(self.images), (self.batch,))
        clean = self.images[index].float() / 127.5 - 1
        noise = torch.randn(clean.shape)
        timesteps = torch.randint(0, 1000, (self.batch,))
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(self.unet(noisy, timesteps, class_labels=self.labels[index]).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


def steps_per_second(loop, steps: int) -> float:
    return steps / _timed(lambda: [loop.train_step() for _ in range(steps)])


def unet_train_flops(cfg) -> int:
    unet = build_unet(cfg.model, 2).train()
    size, batch = cfg.model.image_size, cfg.batch_size
    x = torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        unet(x, torch.randint(0, 1000, (batch,)), class_labels=torch.zeros(batch, dtype=torch.long)).sample.sum() \
            .backward()
    return counter.get_total_flops()


def bench_training(rounds: int, steps: int, overrides: dict | None = None) -> dict:
    cfg = resolve_train_config("cpu-fast", overrides or None)
    ours = make_trainer(cfg)
    plain = PlainLoop(cfg, ours.images, ours.targets)
    threads = torch.get_num_threads()
    for loop in (ours, plain):
        steps_per_second(loop, 3)  # warm-up: oneDNN primitive creation
    rates: dict[str, list[float]] = {"ours": [], "plain": []} | ({"ours_1_thread": []} if threads > 1 else {})
    for _ in range(rounds):
        rates["ours"].append(steps_per_second(ours, steps))
        rates["plain"].append(steps_per_second(plain, steps))
        if threads > 1:
            torch.set_num_threads(1)
            rates["ours_1_thread"].append(steps_per_second(ours, steps))
            torch.set_num_threads(threads)
    median = {name: statistics.median(values) for name, values in rates.items()}
    flops = unet_train_flops(cfg)
    return {
        "unet_parameters": sum(p.numel() for p in ours.unet.parameters()),
        "batch_size": cfg.batch_size, "image_size": cfg.model.image_size, "threads": threads,
        "ours_bf16": ours.bf16, "steps_per_round": steps, "rounds": rounds,
        "steps_per_second": rates, "median_steps_per_second": median,
        "speedup_ours_vs_plain": median["ours"] / median["plain"],
        "unet_gflop_per_step": flops / 1e9,
        "achieved_gflops": {"ours": flops * median["ours"] / 1e9, "plain": flops * median["plain"] / 1e9},
    }


def bench_sampling(model: Path, count: int, rounds: int) -> dict:
    pipelines = {
        "fp32": PixelDiffusionPipeline.from_pretrained(model),
        "bf16": PixelDiffusionPipeline.from_pretrained(model, bf16=True),
    }
    info = json.loads((model / "dermsynth_model.json").read_text())
    guidance = info["sampling"]["guidance_scale"]
    labels = [i % len(info["classes"]) for i in range(count)]
    seeds = list(range(count))
    runs = {"ddim-50 fp32": ("fp32", "ddim", 50), "dpm++-20 fp32": ("fp32", "dpm++", 20),
            "dpm++-20 bf16": ("bf16", "dpm++", 20), "ddim-50 bf16": ("bf16", "ddim", 50)}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    images: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, (precision, scheduler, steps) in runs.items():
            start = time.perf_counter()
            out = pipelines[precision](labels, seeds, num_inference_steps=steps, guidance_scale=guidance,
                                       scheduler=scheduler)
            rates[name].append(count / (time.perf_counter() - start))
            images[name] = to_uint8(out).astype(np.float64)
    reference = images["ddim-50 fp32"]
    closeness = {name: _closeness(reference, images[name]) for name in runs if name != "ddim-50 fp32"}
    closeness["dpm++-20 bf16 vs dpm++-20 fp32"] = _closeness(images["dpm++-20 fp32"], images["dpm++-20 bf16"])
    return {"model": str(model), "images": count, "guidance_scale": guidance,
            "images_per_second": {name: statistics.median(values) for name, values in rates.items()},
            "vs_ddim_50_fp32": closeness}


def _closeness(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    mse = float(((a - b) ** 2).mean())
    return {"mean_abs_diff_levels": float(np.abs(a - b).mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a trained model folder, for the sampling benchmark")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--images", type=int, default=64, help="images per sampling run")
    parser.add_argument("--threads", type=int, help="fix torch's thread count (default: torch's choice)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--recipe", help="a variant of bench/recipes.yaml instead of the cpu-fast preset")
    parser.add_argument("--smoke", action="store_true", help="one tiny round: checks that the script runs")
    args = parser.parse_args()
    overrides = {}
    if args.recipe:
        import yaml

        overrides = yaml.safe_load(Path(__file__).with_name("recipes.yaml").read_text())[args.recipe]
    if args.smoke:
        args.rounds, args.steps = 1, 1
        overrides = overrides | {"model": {"block_out_channels": [16, 32], "attention_levels": [1],
                                           "attention_head_dim": 16, "layers_per_block": 1}, "batch_size": 4}
    if args.threads:
        torch.set_num_threads(args.threads)

    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_average_before": os.getloadavg()}
    report["matmul_gflops"] = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print("matmul peak GFLOP/s:", {k: round(v) for k, v in report["matmul_gflops"].items()}, flush=True)
    training = bench_training(args.rounds, args.steps, overrides)
    training["recipe"] = args.recipe or "cpu-fast preset"
    peak = report["matmul_gflops"]
    training["fraction_of_peak"] = {
        "ours": training["achieved_gflops"]["ours"] / peak["bf16" if training["ours_bf16"] else "fp32"],
        "plain": training["achieved_gflops"]["plain"] / peak["fp32"],
    }
    report["training"] = training
    print("training:", json.dumps({k: training[k] for k in (
        "median_steps_per_second", "speedup_ours_vs_plain", "unet_gflop_per_step", "achieved_gflops",
        "fraction_of_peak")}, indent=1), flush=True)
    if args.model:
        report["sampling"] = bench_sampling(args.model, args.images, max(1, args.rounds // 2))
        print("sampling:", json.dumps(report["sampling"], indent=1), flush=True)
    report["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
