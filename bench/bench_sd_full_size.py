"""Stable Diffusion 1.5 at full size, random weights: fine-tuning step time and peak memory, and generation.

    HF_HUB_OFFLINE=1 python bench/bench_sd_full_size.py [--json PATH]       # GPU: the full table at 512 px
    HF_HUB_OFFLINE=1 python bench/bench_sd_full_size.py --smoke             # CPU: one step each at 64 px
    HF_HUB_OFFLINE=1 python bench/bench_sd_full_size.py --arch tiny --smoke # seconds: checks the script

No download: the SD 1.5 architecture is built from its published configuration (UNet2DConditionModel 859.5 M
parameters, AutoencoderKL 83.7 M, CLIP ViT-L/14 text encoder 123.1 M, PNDM scheduler) with random weights, and
saved once as a diffusers folder (fp16 safetensors, 2.1 GB: half the disk and write time of fp32; loading
upcasts exactly). The tokenizer is the local byte-level CLIP BPE of dermsynth/testing/tiny_sd.py (518 tokens); the text
encoder's embedding table is still padded to SD's 49,408 rows, so its parameter count and memory are SD's.

Measured, each in a subprocess of its own (``--worker NAME`` prints one JSON line), since peak RSS
(``ru_maxrss``) only grows within a process; on a GPU the peak is ``torch.cuda.max_memory_allocated``:

* ours: dermsynth's ``FinetuneTrainer.train_step``, built from a ``FinetuneConfig`` (base = the saved folder):
  DreamBooth with prior preservation (1 instance + 1 class image, full UNet), DreamBooth-LoRA (rank 8), caption
  fine-tuning (2 captioned images, full UNet); the same fixed batch every step (no flips);
* reference: the same step as diffusers' examples organise it (train_dreambooth.py, train_dreambooth_lora.py,
  train_text_to_image.py for captions): prompts tokenized and encoded by the frozen text encoder and images
  encoded by the frozen VAE every step (images decoded beforehand), torch.optim.AdamW with its defaults,
  accelerate's mixed precision and gradient clipping, the examples' dtype placement (LoRA: the frozen UNet in
  the mixed-precision dtype, LoRA weights upcast only for fp16);
* fp32, bf16 and fp16 mixed precision (fp16 only on a GPU), with and without gradient checkpointing;
* generation: dermsynth's ``pipeline_images`` (DPM++, guidance 7.5), time per image and peak memory.

Step times are medians over timed rounds after warm-up; "reference / ours" above 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]

# The parent process imports no torch: it stays small, so a worker's peak RSS is its own.

INSTANCE, CLASS = "dermoscopy image of a sks lesion", "dermoscopy image of a skin lesion"
CAPTIONS = {"benign": "dermoscopy image of a benign skin lesion",
            "malignant": "dermoscopy image of a malignant skin lesion"}
METHODS = ("dreambooth", "lora", "captions")
METHOD_LABELS = {"dreambooth": "DreamBooth + prior preservation (full UNet)", "lora": "DreamBooth-LoRA",
                 "captions": "caption fine-tuning (full UNet)"}
REFERENCE_SCRIPTS = {"dreambooth": "train_dreambooth.py", "lora": "train_dreambooth_lora.py",
                     "captions": "train_text_to_image.py"}
PRECISION_LABELS = {"no": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]

# Parameter counts of the published SD 1.5 weights (stable-diffusion-v1-5).
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
SD15_VOCAB = 49_408
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                  "beta_end": 0.012, "beta_schedule": "scaled_linear", "trained_betas": None,
                  "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}
ARCHS: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                 "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
                 "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
                 "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
                "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
                "up_block_types": ("UpDecoderBlock2D",) * 4, "act_fn": "silu", "norm_num_groups": 32,
                "sample_size": 512, "scaling_factor": 0.18215},
        "text_encoder": {"vocab_size": SD15_VOCAB, "hidden_size": 768, "intermediate_size": 3072,
                         "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                         "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5},
    },
    # dermsynth/testing/tiny_sd.py's sizes: UNet ~1 M parameters, a VAE with 8x downsampling, a 5-layer text encoder.
    "tiny": {
        "unet": {"sample_size": 16, "block_out_channels": (32, 64), "layers_per_block": 2, "cross_attention_dim": 32,
                 "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                 "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8,
                 "norm_num_groups": 32},
        "vae": {"block_out_channels": (16, 32, 32, 32), "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                "layers_per_block": 1, "down_block_types": ("DownEncoderBlock2D",) * 4,
                "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 8, "sample_size": 64},
        "text_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 5,
                         "num_attention_heads": 4, "max_position_embeddings": 77},
    },
}
MODES = {  # defaults per mode; any option given on the command line wins
    "full": {"size": 512, "warmup": 3, "rounds": 10, "gen_steps": 25, "precisions": "no,bf16,fp16",
             "checkpointing": "both"},
    "smoke": {"size": 64, "warmup": 0, "rounds": 1, "gen_steps": 2, "precisions": "no", "checkpointing": "off"},
}


# --------------------------------------------------------------------------- worker side (imports torch)


def weight_dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def build_pipeline(arch: str, seed: int = 0):
    """The architecture ``arch`` with random weights, as a StableDiffusionPipeline (no safety checker)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dermsynth.testing.tiny_sd import byte_level_clip_tokenizer

    spec = ARCHS[arch]
    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    text = CLIPTextConfig(**{"vocab_size": len(tokenizer), **spec["text_encoder"]},
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**spec["vae"]), text_encoder=CLIPTextModel(text), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**spec["unet"]), scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_architecture(arch: str, folder: Path) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    pipe = build_pipeline(arch)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in SD15_PARAMETERS}
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"arch": arch, "parameters": counts, "vocab_size": pipe.text_encoder.config.vocab_size,
            "tokenizer_tokens": len(pipe.tokenizer), "disk_bytes": disk, "dtype_on_disk": "float16",
            "build_s": time.perf_counter() - start}


def write_data(data: Path, size: int) -> None:
    """One instance and one class image, and a two-image prepared dataset with captions (noise images: the
    step's cost does not depend on what they show)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from dermsynth.data.schema import CANONICAL_COLUMNS

    if (data / "prepared" / "prepare.json").is_file():
        return
    rng = np.random.default_rng(0)

    def save(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)

    save(data / "instance" / "000.png")
    save(data / "class" / "000.png")
    rows = []
    for target, (label, caption) in enumerate(CAPTIONS.items()):
        path = f"images/{label}/IMG_{target}.png"
        save(data / "prepared" / path)
        rows.append({"image_id": f"IMG_{target}", "path": path, "label": label, "target": target,
                     "split": "train", "prompt": caption, "source": "bench"})
    pd.DataFrame(rows).reindex(columns=CANONICAL_COLUMNS).to_csv(data / "prepared" / "metadata.csv", index=False)
    (data / "prepared" / "prepare.json").write_text(json.dumps({"classes": list(CAPTIONS), "images": len(rows)}))


def environment() -> dict[str, Any]:
    import torch

    from dermsynth.version import versions

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu": cpu_name(), "cores": os.cpu_count(),
                            "threads": torch.get_num_threads(),
                            "versions": versions("torch", "diffusers", "transformers", "peft", "accelerate")}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
    return info


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def build_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Save the architecture once (a folder with a matching record is reused), write the images, describe the
    machine."""
    base = Path(args.base)
    record = base.with_name(base.name + ".json")
    built = json.loads(record.read_text()) if record.is_file() else None
    if built is None or built.get("arch") != args.arch:
        built = save_architecture(args.arch, base)
        record.write_text(json.dumps(built))
    write_data(Path(args.data), args.size)
    return {**built, "environment": environment()}


def our_trainer(args: argparse.Namespace, method: str):
    """dermsynth's FinetuneTrainer, set up as its run() does, with one fixed batch (as the reference has)."""
    import torch

    from dermsynth.data.dataset import load_prepared
    from dermsynth.diffusion.sd.config import FinetuneConfig
    from dermsynth.diffusion.sd.finetune import FinetuneTrainer

    data = Path(args.data)
    settings: dict[str, Any] = {
        "method": method, "base": args.base, "resolution": args.size, "random_flip": False, "max_steps": 10_000,
        "precision": args.precision, "gradient_checkpointing": args.checkpointing == "on", "device": args.device,
        "threads": torch.get_num_threads(), "lora": {"rank": args.rank}}
    dataset = None
    if method == "captions":
        settings["train_batch_size"] = 2
        dataset = load_prepared(data / "prepared")
    else:
        settings |= {"instance_dir": data / "instance", "class_dir": data / "class", "instance_prompt": INSTANCE,
                     "class_prompt": CLASS, "num_class_images": 1, "train_batch_size": 1}
    trainer = FinetuneTrainer(FinetuneConfig.model_validate(settings), dataset, data / "out", False, None)
    if trainer.cfg.dreambooth_data:
        trainer._complete_class_images()  # finds the class image: nothing is generated
    trainer._setup_models()
    trainer._setup_optimisation()
    fixed = trainer._micro_batch(0)
    trainer._micro_batch = lambda micro_step: fixed
    return trainer


def batch_files(data: Path, method: str) -> tuple[list[Path], list[str], int]:
    """The images and prompts of the reference's batch (the ones ours trains on) and how many are instances."""
    if method != "captions":
        return [data / "instance" / "000.png", data / "class" / "000.png"], [INSTANCE, CLASS], 1
    paths = [data / "prepared" / f"images/{label}/IMG_{target}.png" for target, label in enumerate(CAPTIONS)]
    return paths, list(CAPTIONS.values()), len(paths)


def reference_models(args: argparse.Namespace, method: str, accelerator):
    """Models and optimiser placed as the diffusers example of ``method`` places them."""
    import torch
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from dermsynth.diffusion.sd.config import DEFAULT_LR
    from dermsynth.diffusion.sd.models import load_pipeline

    pipe = load_pipeline(args.base)
    dtype, device = weight_dtype(args.precision), accelerator.device
    for frozen in (pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False)
        frozen.to(device, dtype=dtype)
    unet = pipe.unet
    if method == "lora":
        unet.requires_grad_(False)
        unet.to(device, dtype=dtype)
        torch.manual_seed(0)
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
        if args.precision == "fp16":  # the LoRA example upcasts its trained weights for fp16 only
            cast_training_params(unet, dtype=torch.float32)
    if args.checkpointing == "on":
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=DEFAULT_LR[method], betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer, num_warmup_steps=0, num_training_steps=10_000)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    return pipe, unet, params, optimizer, lr_scheduler


def reference_step(args: argparse.Namespace, method: str) -> tuple[Callable[[], float], Any, int]:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from dermsynth.data.images import load_training_square
    from dermsynth.diffusion.sd.data import to_pixels

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.precision)
    pipe, unet, params, optimizer, lr_scheduler = reference_models(args, method, accelerator)
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    paths, prompts, n_instance = batch_files(Path(args.data), method)
    pixels = to_pixels([load_training_square(p, args.size) for p in paths], None)
    pixels = pixels.to(accelerator.device, dtype=weight_dtype(args.precision))
    keep_grads = method == "dreambooth"  # train_dreambooth.py zeroes gradients in place unless told otherwise
    unet.train()

    def step() -> float:
        with accelerator.accumulate(unet):
            ids = tokenizer(prompts, truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                            return_tensors="pt").input_ids.to(accelerator.device)
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      device=latents.device).long()
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden = text_encoder(ids, return_dict=False)[0]
            prediction = unet(noisy, timesteps, hidden, return_dict=False)[0].float()
            loss = F.mse_loss(prediction[:n_instance], noise[:n_instance].float())
            if n_instance < len(prompts):  # the prior-preservation half
                loss = loss + F.mse_loss(prediction[n_instance:], noise[n_instance:].float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=not keep_grads)
        return float(loss.detach())

    return step, accelerator, sum(p.numel() for p in params)


def measure(fn: Callable[[], Any], warmup: int, rounds: int, device: str,
            after: Callable[[], None] | None = None) -> tuple[list[float], list[Any]]:
    """Seconds and results of ``rounds`` calls after ``warmup`` untimed ones (GPU work waited for)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    seconds, results = [], []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        results.append(fn())
        sync()
        seconds.append(time.perf_counter() - start)
        if after is not None:
            after()
    return seconds, results


def proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_memory(device: str) -> dict[str, float | None]:
    import resource

    import torch

    peaks: dict[str, float | None] = {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "vm_hwm_mib": proc_status_mib("VmHWM")}
    if device == "cuda":
        peaks |= {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
                  "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}
    return peaks


def train_worker(args: argparse.Namespace) -> dict[str, Any]:
    method, reference = args.worker.removesuffix("-reference"), args.worker.endswith("-reference")
    start = time.perf_counter()
    if reference:
        step, accelerator, trained = reference_step(args, method)
    else:
        trainer = our_trainer(args, method)
        step, accelerator, trained = trainer.train_step, trainer.accelerator, sum(p.numel() for p in trainer.params)
    setup_s, rss_setup = time.perf_counter() - start, proc_status_mib("VmRSS")
    skipped = []  # fp16: steps whose gradients overflowed are skipped by the gradient scaler
    seconds, losses = measure(step, args.warmup, args.rounds, args.device,
                              lambda: skipped.append(bool(accelerator.optimizer_step_was_skipped)))
    return {"seconds": statistics.median(seconds), "times_s": seconds, "losses": losses,
            "finite_loss": all(map(math.isfinite, losses)), "skipped_optimizer_steps": sum(skipped),
            "trained_parameters": trained, "setup_s": setup_s, "rss_after_setup_mib": rss_setup,
            **peak_memory(args.device)}


def generate_worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from dermsynth.diffusion.sd.generate import pipeline_images
    from dermsynth.diffusion.sd.models import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline(args.base, dtype=weight_dtype(args.precision)).to(args.device)
    setup_s = time.perf_counter() - start

    def image() -> bool:
        pixels = pipeline_images(pipe, [CLASS], [0], steps=args.gen_steps, scheduler="dpm++", guidance_scale=7.5,
                                 size=args.size)
        return bool(np.isfinite(pixels).all())

    seconds, finite = measure(image, min(args.warmup, 1), args.rounds, args.device)
    return {"seconds": statistics.median(seconds), "times_s": seconds, "finite_images": all(finite),
            "steps": args.gen_steps, "setup_s": setup_s, **peak_memory(args.device)}


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "build":
        return build_worker(args)
    if args.worker == "generate":
        return generate_worker(args)
    return train_worker(args)


# --------------------------------------------------------------------------- parent side (stdlib only)


@dataclass
class Run:
    worker: str  # a method, "<method>-reference" or "generate"
    precision: str
    checkpointing: bool = False
    skipped: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.worker.removesuffix("-reference")

    @property
    def ok(self) -> bool:
        return self.skipped is None and "error" not in self.result and "seconds" in self.result

    def describe(self) -> str:
        ckpt = ", gradient checkpointing" if self.checkpointing else ""
        return f"{self.worker} {PRECISION_LABELS[self.precision]}{ckpt}"


def plan(args: argparse.Namespace, device: str) -> list[Run]:
    fp16_reason = "fp16 mixed precision needs a GPU (FinetuneTrainer refuses it on a CPU)"
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    runs = []
    for method in (m for m in METHODS if m in args.methods):
        for precision in args.precisions:
            skipped = fp16_reason if precision == "fp16" and device != "cuda" else None
            for ckpt in checkpointing:
                runs.append(Run(method, precision, ckpt, skipped))
                if not args.no_reference:
                    runs.append(Run(f"{method}-reference", precision, ckpt, skipped))
    if "generate" in args.methods:
        for precision in args.precisions:
            skipped = "fp16 weights: GPU only here" if precision == "fp16" and device != "cuda" else None
            runs.append(Run("generate", precision, False, skipped))
    return runs


def worker_command(args: argparse.Namespace, worker: str, base: Path, data: Path, device: str,
                   precision: str = "no", checkpointing: bool = False) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--arch", args.arch,
               "--base", str(base), "--data", str(data), "--size", str(args.size), "--device", device,
               "--precision", precision, "--checkpointing", "on" if checkpointing else "off",
               "--rank", str(args.rank), "--warmup", str(args.warmup), "--rounds", str(args.rounds),
               "--gen-steps", str(args.gen_steps)]
    return command + (["--threads", str(args.threads)] if args.threads else [])


def call_worker(command: list[str], timeout: float) -> dict[str, Any]:
    """The worker's JSON line, or {"error": why}."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        killed = " (killed: out of memory?)" if done.returncode == -9 else ""
        last = next((line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), "")
        return {"error": f"exit {done.returncode}{killed}: {last[-300:]}"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": "no JSON line on stdout"}
    return json.loads(lines[-1])


def apply_mode(args: argparse.Namespace) -> None:
    for key, value in MODES["smoke" if args.smoke else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.precisions = [p.strip() for p in str(args.precisions).split(",") if p.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [p for p in args.precisions if p not in PRECISION_LABELS] + \
        [m for m in args.methods if m not in (*METHODS, "generate")]
    if unknown:
        raise SystemExit(f"unknown precision or method: {', '.join(unknown)}")


@contextmanager
def work_folder(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sd-full-size-") as tmp:
        yield Path(tmp)


def resolve_device(args: argparse.Namespace, env: dict[str, Any]) -> str:
    if args.device != "auto":
        return args.device
    return "cuda" if env["cuda"] and not args.smoke else "cpu"


def orchestrate(args: argparse.Namespace) -> int:
    apply_mode(args)
    with work_folder(args.workdir) as work:
        base, data = work / f"base-{args.arch}", work / f"data-{args.size}px"
        print(f"building and saving the {args.arch} architecture in {base} ...", file=sys.stderr, flush=True)
        build = call_worker(worker_command(args, "build", base, data, "cpu"), args.worker_timeout)
        if "error" in build:
            raise SystemExit(f"building the model failed: {build['error']}")
        device = resolve_device(args, build["environment"])
        if device == "cpu" and not args.smoke and args.size >= 256:
            print("note: no GPU; full-size steps at this resolution take minutes each on a CPU (--smoke: a check)",
                  file=sys.stderr)
        runs = plan(args, device)
        todo = [run for run in runs if run.skipped is None]
        for i, run in enumerate(todo, 1):
            start = time.perf_counter()
            command = worker_command(args, run.worker, base, data, device, run.precision, run.checkpointing)
            run.result = call_worker(command, args.worker_timeout)
            status = run.result.get("error") or f"{run.result['seconds'] * 1000:.0f} ms"
            print(f"[{i}/{len(todo)}] {run.describe()}: {status} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    report = {"command": command_line(), "device": device, "settings": settings(args), "build": build,
              "runs": [asdict(run) for run in runs]}
    print("\n".join(markdown(report, runs)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if any(run.skipped is None and not run.ok for run in runs) else 0


def command_line() -> str:
    return shlex.join(["python", "bench/bench_sd_full_size.py", *sys.argv[1:]])


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("arch", "smoke", "size", "warmup", "rounds", "gen_steps", "precisions", "checkpointing", "rank",
            "threads", "methods")
    return {key: getattr(args, key) for key in keys}


# --------------------------------------------------------------------------- the Markdown report


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def mib_text(mib: float | None) -> str:
    if mib is None:
        return "—"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def cell(run: Run | None, key: str, memory: str) -> str:
    if run is None or run.skipped:
        return "—"
    if not run.ok:
        return "failed"
    if key == "seconds":
        return seconds_text(run.result["seconds"])
    return mib_text(run.result.get(memory))


def markdown(report: dict[str, Any], runs: list[Run]) -> list[str]:
    build, env, device = report["build"], report["build"]["environment"], report["device"]
    memory = "peak_gpu_mib" if device == "cuda" else "peak_rss_mib"
    title = "Stable Diffusion 1.5 at full size" if build["arch"] == "sd15" else f"Stand-in `{build['arch']}` model"
    lines = [f"## {title}: fine-tuning step and generation (random weights)", "",
             f"Command: `{report['command']}`", "", *header(report, env, device), "", *architecture(build), ""]
    lines += training_table(runs, memory, report["settings"])
    generation = [run for run in runs if run.worker == "generate"]
    if generation:
        lines += ["", *generation_table(generation, memory, report["settings"])]
    lines += notes(runs)
    return lines


def header(report: dict[str, Any], env: dict[str, Any], device: str) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    where = (f"GPU {env.get('gpu')} ({env.get('gpu_memory_gib', 0):.0f} GiB)" if device == "cuda"
             else f"CPU {env['cpu']}, {env['cores']} cores, {report['settings']['threads'] or env['threads']} "
                  "torch threads")
    lines = [f"Device: {where}. Versions: {versions}."]
    if report["settings"]["smoke"]:
        lines += ["", "Smoke run: one timed step per method at reduced resolution, first-step costs included; "
                      "the point is the full-size parameter counts and peak memory, not the times."]
    return lines


def architecture(build: dict[str, Any]) -> list[str]:
    names = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}
    lines = [f"Architecture `{build['arch']}`, random weights, saved as {build['dtype_on_disk']} safetensors "
             f"({build['disk_bytes'] / 1e6:,.0f} MB):", "",
             "| part | parameters | SD 1.5 | difference |", "|---|---|---|---|"]
    for key, count in build["parameters"].items():
        published = SD15_PARAMETERS[key]
        lines.append(f"| {names[key]} | {count:,} | {published:,} | {100 * (count - published) / published:+.3f} % |")
    lines += ["", f"Tokenizer: a local byte-level CLIP BPE with {build['tokenizer_tokens']} tokens (SD 1.5's has "
                  f"{SD15_VOCAB:,}); the text encoder's embedding table has {build['vocab_size']:,} rows"
                  + (", so its size is SD's (rows past the tokenizer's are never looked up)."
                     if build["vocab_size"] == SD15_VOCAB else ".")]
    return lines


def training_table(runs: list[Run], memory: str, cfg: dict[str, Any]) -> list[str]:
    memory_name = "peak GPU memory (max allocated)" if memory == "peak_gpu_mib" else "peak RSS"
    latent = cfg["size"] // 8
    lines = [f"Fine-tuning step: {cfg['size']} px images ({latent}x{latent} latents), 1 instance + 1 class image "
             f"(captions: 2 captioned images), LoRA rank {cfg['rank']}; median of {cfg['rounds']} timed step(s) "
             f"after {cfg['warmup']} warm-up step(s). Memory: {memory_name} of the process that ran that one "
             "measurement.", "",
             "| method | precision | grad. checkpointing | trained parameters | ours: step | ours: memory "
             "| reference: step | reference: memory | reference / ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    pairs: dict[tuple[str, str, bool], dict[str, Run]] = {}
    for run in runs:
        if run.worker != "generate":
            side = "reference" if run.worker.endswith("-reference") else "ours"
            pairs.setdefault((run.method, run.precision, run.checkpointing), {})[side] = run
    for (method, precision, ckpt), pair in pairs.items():
        ours, ref = pair.get("ours"), pair.get("reference")
        if all(run.skipped for run in pair.values()):
            continue
        ratio = f"{ref.result['seconds'] / ours.result['seconds']:.2f}" if ours and ref and ours.ok and ref.ok \
            else "—"
        trained = next((f"{run.result['trained_parameters'] / 1e6:,.2f} M" for run in (ours, ref) if run and run.ok),
                       "—")
        label = METHOD_LABELS[method] + (f" (rank {cfg['rank']})" if method == "lora" else "")
        lines.append(f"| {label} | {PRECISION_LABELS[precision]} | {'on' if ckpt else 'off'} | {trained} "
                     f"| {cell(ours, 'seconds', memory)} | {cell(ours, 'memory', memory)} "
                     f"| {cell(ref, 'seconds', memory)} | {cell(ref, 'memory', memory)} | {ratio} |")
    return lines


def generation_table(runs: list[Run], memory: str, cfg: dict[str, Any]) -> list[str]:
    lines = [f"Generation: dermsynth `pipeline_images` (what `generate` runs; `generate` itself loads fp32), DPM++ "
             f"{cfg['gen_steps']} steps, guidance 7.5 (two UNet passes per step), {cfg['size']} px, one image per "
             f"call; median of {cfg['rounds']} call(s).", "",
             "| weights | time per image | memory |", "|---|---|---|"]
    for run in runs:
        if not run.skipped:
            dtype = {"no": "fp32"}.get(run.precision, run.precision)
            lines.append(f"| {dtype} | {cell(run, 'seconds', memory)} | {cell(run, 'memory', memory)} |")
    return lines


def notes(runs: list[Run]) -> list[str]:
    methods = sorted({run.method for run in runs if run.worker != "generate"}, key=METHODS.index)
    lines = [""]
    if methods:
        scripts = ", ".join(f"{REFERENCE_SCRIPTS[m]} ({m})" for m in methods)
        lines.append(f"- Reference: the step as the diffusers examples {scripts} organise it: both frozen encoders "
                     "run every step, images decoded beforehand, torch.optim.AdamW with its defaults. Ours encodes "
                     "each prompt and image once (exact: the encoders are frozen) and uses foreach AdamW.")
    reasons: dict[str, list[str]] = {}
    for run in runs:
        if run.skipped:
            reasons.setdefault(run.skipped, []).append(run.describe())
    for reason, names in reasons.items():
        lines.append(f"- Not run ({len(names)} measurements): {reason}.")
    for run in runs:
        if run.skipped is None and not run.ok:
            lines.append(f"- Failed: {run.describe()}: {run.result.get('error', 'no result')}")
        elif run.result.get("skipped_optimizer_steps"):
            lines.append(f"- {run.describe()}: {run.result['skipped_optimizer_steps']} timed step(s) skipped by the "
                         "fp16 gradient scaler (overflow).")
    return lines


# --------------------------------------------------------------------------- command line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="sd15", help="sd15 (full size) or tiny")
    parser.add_argument("--smoke", action="store_true", help="on the CPU: one step of each method at 64 px, fp32, "
                                                             "generation with 2 steps")
    parser.add_argument("--size", type=int, help="image side in px [512; smoke 64]")
    parser.add_argument("--warmup", type=int, help="untimed steps first [3; smoke 0]")
    parser.add_argument("--rounds", type=int, help="timed steps (and images) [10; smoke 1]")
    parser.add_argument("--gen-steps", type=int, help="sampling steps [25; smoke 2]")
    parser.add_argument("--precisions", help="comma list of no (fp32), bf16, fp16 [all; smoke no]")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], help="gradient checkpointing "
                                                                                "[both; smoke off]")
    parser.add_argument("--methods", default="dreambooth,lora,captions,generate", help="comma list of "
                        "dreambooth, lora, captions, generate [all]")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference steps")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--device", default="auto", help="auto (GPU if any; smoke: cpu), cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads [torch's default]")
    parser.add_argument("--workdir", type=Path, help="keep the saved model and images here (reused next time) "
                                                     "[a temporary folder]")
    parser.add_argument("--worker-timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write every result here")
    worker = parser.add_argument_group("one measurement (run by the parent)")
    worker.add_argument("--worker", help="build, a method, <method>-reference or generate: print one JSON line")
    worker.add_argument("--base", help="the saved diffusers folder")
    worker.add_argument("--data", help="the folder of training images")
    worker.add_argument("--precision", default="no", choices=sorted(PRECISION_LABELS))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)), flush=True)
        return
    sys.exit(orchestrate(args))


if __name__ == "__main__":
    main()
