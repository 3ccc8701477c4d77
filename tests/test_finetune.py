"""Stable Diffusion fine-tuning on a tiny random-weight model: DreamBooth with prior preservation, LoRA, captions,
single-file checkpoints, resume, generate (text-to-image, img2img, inpainting) and one-line user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dermsynth.data.dataset import load_prepared
from dermsynth.diffusion.checkpoints import list_checkpoints
from dermsynth.diffusion.generate import generate
from dermsynth.diffusion.sd.config import FinetuneConfig
from dermsynth.diffusion.sd.finetune import FinetuneTrainer, finetune
from dermsynth.diffusion.sd.models import load_pipeline
from dermsynth.errors import DermsynthError
from dermsynth.testing.tiny_sd import build_tiny_pipeline, export_single_file
from tests.test_diffusion_scratch import make_prepared, one_thread

from .conftest import one_line_error

__all__ = ["one_thread"]  # tiny models run fastest on one thread

SIZE = 64  # 8x8 latents with the tiny VAE
FAST = {"resolution": SIZE, "instance_prompt": "dermoscopy image of a sks lesion",
        "class_prompt": "dermoscopy image of a skin lesion", "num_class_images": 3, "max_steps": 3,
        "sample": {"steps": 2, "scheduler": "ddim"}, "log_every": 1}
GEN = {"steps": 2, "scheduler": "ddim", "progress": False}


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """The tiny pipeline saved once as a diffusers folder, plus the same weights as one .safetensors file."""
    folder = tmp_path_factory.mktemp("base") / "tiny-sd"
    pipe = build_tiny_pipeline(seed=0)
    pipe.save_pretrained(folder)
    export_single_file(pipe, folder.parent / "tiny-sd.safetensors")
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prep"), size=SIZE)


def config(base: Path, **settings) -> FinetuneConfig:
    return FinetuneConfig.model_validate({**FAST, "base": str(base), **settings})


def read_info(folder: Path) -> dict:
    return json.loads((folder / "dermsynth_model.json").read_text())


# --------------------------------------------------------------------------- DreamBooth


def test_dreambooth_prior_preservation_loss_falls_on_a_fixed_batch(tiny_sd, prepared, tmp_path):
    cfg = config(tiny_sd, method="dreambooth", learning_rate=1e-3, random_flip=False)
    trainer = FinetuneTrainer(cfg, load_prepared(prepared), tmp_path / "m", False, None)
    trainer._complete_class_images()
    assert len(trainer.class_examples) == 3 and len(list((tmp_path / "m" / "class_images").glob("*.png"))) == 3
    again = FinetuneTrainer(cfg.model_copy(update={"num_class_images": 4}), load_prepared(prepared), tmp_path / "m",
                            False, None)
    again._complete_class_images()  # reuses the three, makes one more
    assert [e.path.name for e in again.class_examples] == [f"class-0000{i}.png" for i in range(4)]
    trainer._setup_models()
    trainer._setup_optimisation()
    examples, flips, n_instance = trainer._micro_batch(0)
    assert n_instance == 1 and [e.prompt for e in examples] == [cfg.instance_prompt, cfg.class_prompt]
    losses = []
    for _ in range(25):
        trainer.generator.manual_seed(0)  # same noise and timesteps: a fixed batch to overfit
        loss = trainer.batch_loss(examples, flips, n_instance)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_dreambooth_cli_full_model_generates(tiny_sd, prepared, tmp_path, cli):
    out = tmp_path / "db"
    yaml_path = tmp_path / "db.yaml"
    yaml_path.write_text(json.dumps({**FAST, "train_text_encoder": True, "validation_prompts": ["a sks lesion"],
                                     "validation_steps": 3, "validation_inference_steps": 2, "use_ema": True,
                                     "snr_gamma": 5.0, "noise_offset": 0.05, "gradient_checkpointing": True,
                                     "lr_scheduler": "cosine", "lr_warmup_steps": 1, "gradient_accumulation_steps": 2}))
    code, _, stderr = cli("finetune", "--method", "dreambooth", "--base", tiny_sd, "--data", prepared, "--out",
                          out, "--config", yaml_path, "--quiet")
    assert code == 0, stderr
    info = read_info(out)
    assert info["family"] == "stable-diffusion" and info["method"] == "dreambooth" and info["steps"] == 3
    assert info["classes"] == ["malignant"] and info["prompts"]["malignant"] == FAST["instance_prompt"]
    assert info["data"]["class_images"] == 3 and info["ema"] is True
    assert (out / "model_index.json").is_file() and len(list((out / "validation").glob("step-*/*.png"))) == 2
    assert len(pd.read_csv(out / "train_log.csv")) == 3
    code, _, stderr = cli("generate", "--model", out, "--out", tmp_path / "syn", "--per-class", 2, "--steps",
                          2, "--scheduler", "ddim", "--negative-prompt", "blurry", "--quiet")
    assert code == 0, stderr
    manifest = pd.read_csv(tmp_path / "syn" / "manifest.csv")
    assert len(manifest) == 2 and set(manifest["prompt"]) == {FAST["instance_prompt"]}
    assert set(manifest["negative_prompt"]) == {"blurry"}
    assert Image.open(tmp_path / "syn" / manifest["path"][0]).size == (SIZE, SIZE)


# --------------------------------------------------------------------------- LoRA


def test_lora_loads_in_plain_diffusers_and_changes_outputs(tiny_sd, prepared, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    result = finetune(config(tiny_sd, method="lora", learning_rate=1e-2, lora={"rank": 4, "alpha": 8}), out,
                      prepared, progress=False)
    info = result.info
    # The base is recorded relative to the model folder: a copied run folder names no machine path.
    assert info["family"] == "stable-diffusion-lora" and not Path(info["base"]).is_absolute()
    assert (out / info["base"]).resolve() == tiny_sd.resolve()
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "unet").exists()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe("a sks lesion", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    before = sample()
    pipe.load_lora_weights(out)
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8 and pipe.unet.peft_config["default_0"].r == 4
    assert np.abs(sample() - before).max() > 1e-3
    made = generate(out, tmp_path / "syn", per_class=1, **GEN)
    assert made.summary["settings"]["family"] == "stable-diffusion-lora"
    assert made.manifest["model_sha256"][0] == info["weights_sha256"]


# --------------------------------------------------------------------------- captions


def test_caption_finetuning_two_classes_with_lora(tiny_sd, prepared, tmp_path):
    out = tmp_path / "cap"
    result = finetune(config(tiny_sd, method="captions", use_lora=True, train_batch_size=2, max_steps=2),
                      out, prepared, progress=False)
    info = result.info
    assert info["classes"] == ["benign", "malignant"] and info["data"]["labels"] == {"benign": 10, "malignant": 6}
    assert info["prompts"]["benign"] == "dermoscopy image of a benign skin lesion"
    made = generate(out, tmp_path / "syn", per_class=1, prompts={"malignant": "a dark lesion"}, **GEN)
    prompts = dict(zip(made.manifest["label"], made.manifest["prompt"], strict=True))
    assert prompts == {"benign": "dermoscopy image of a benign skin lesion", "malignant": "a dark lesion"}


def test_generate_takes_prompts_from_metadata(lora_model, prepared, tmp_path, cli):
    metadata = pd.read_csv(prepared / "metadata.csv")
    metadata.loc[metadata["split"] == "train", "prompt"] = [f"lesion number {i}" for i in
                                                            range(int((metadata["split"] == "train").sum()))]
    source = tmp_path / "prep"
    shutil.copytree(prepared, source)
    metadata.to_csv(source / "metadata.csv", index=False)
    code, _, stderr = cli("generate", "--model", lora_model, "--out", tmp_path / "syn", "--per-class", 2,
                          "--classes", "benign", "--prompts-from", source, "--steps", 1, "--scheduler", "ddim",
                          "--quiet")
    assert code == 0, stderr
    manifest = pd.read_csv(tmp_path / "syn" / "manifest.csv")
    train = metadata[(metadata["split"] == "train") & (metadata["label"] == "benign")].sort_values("image_id")
    assert manifest["prompt"].tolist() == train["prompt"].tolist()[:2]


def test_full_caption_finetuning_runs_by_epochs(tiny_sd, prepared, tmp_path):
    # 16 training images in micro-batches of 4, two per step: two steps per epoch
    cfg = config(tiny_sd, method="captions", max_steps=None, num_train_epochs=2, train_batch_size=4,
                 gradient_accumulation_steps=2, caption_labels=["benign", "malignant"])
    result = finetune(cfg, tmp_path / "cap", prepared, progress=False)
    assert result.info["family"] == "stable-diffusion" and result.steps == 4
    assert result.info["stopped_by"] == "num_train_epochs"
    assert read_info(tmp_path / "cap")["data"]["labels"] == {"benign": 10, "malignant": 6}


# --------------------------------------------------------------------------- single-file checkpoints


def test_single_file_safetensors_loads_with_local_config(tiny_sd):
    single = tiny_sd.parent / "tiny-sd.safetensors"
    loaded = load_pipeline(single, config=tiny_sd)
    reference = load_pipeline(tiny_sd)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k].reshape(ours[k].shape)) for k in ours)


def test_single_file_without_configs_is_refused_by_the_api_too_even_online(tiny_sd, monkeypatch):
    """The CLI sets offline mode; the API must follow the same rule and never fetch configs unasked."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DermsynthError, match=r"single-file checkpoint needs the configs .* give base_config"):
        load_pipeline(tiny_sd.parent / "tiny-sd.safetensors")


def test_finetune_from_single_file(tiny_sd, prepared, tmp_path, cli):
    code, _, stderr = cli("finetune", "--method", "lora", "--base", tiny_sd.parent / "tiny-sd.safetensors",
                          "--base-config", tiny_sd, "--data", prepared, "--out", tmp_path / "m", "--resolution", SIZE,
                          "--max-steps", 1, "--quiet", "--config", _yaml(tmp_path, {"num_class_images": 2,
                                                                                    "sample": {"steps": 1}}))
    assert code == 0, stderr
    assert read_info(tmp_path / "m")["base_kind"] == "single-file"
    made = generate(tmp_path / "m", tmp_path / "syn", per_class=1, **GEN)  # LoRA onto the single-file base
    assert len(made.manifest) == 1


def _yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


# --------------------------------------------------------------------------- resume


def test_resume_latest_continues_with_identical_state(tiny_sd, prepared, tmp_path):
    cfg = config(tiny_sd, method="lora", max_steps=4, checkpointing_steps=2, checkpoints_total_limit=3,
                 train_batch_size=2, learning_rate=1e-3)
    whole = finetune(cfg, tmp_path / "whole", prepared, progress=False)

    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, tmp_path / "cut", prepared, progress=False, callback=interrupt)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-000002"]
    with pytest.raises(DermsynthError, match="--resume latest"):
        finetune(cfg, tmp_path / "cut", prepared, progress=False)
    resumed = finetune(cfg, tmp_path / "cut", prepared, resume="latest", progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert resumed.losses == whole.losses[2:]
    for name in ("step-000002", "step-000004"):
        a = torch.load(tmp_path / "whole" / "checkpoints" / name / "training_state.pt", weights_only=True)
        b = torch.load(tmp_path / "cut" / "checkpoints" / name / "training_state.pt", weights_only=True)
        for key, state in a["optimizer"]["state"].items():
            assert all(torch.equal(state[k], b["optimizer"]["state"][key][k]) for k in ("exp_avg", "exp_avg_sq"))
        assert a["lr_scheduler"] == b["lr_scheduler"]
    wa = load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors")
    wb = load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- img2img and inpainting


@pytest.fixture(scope="module")
def lora_model(tiny_sd, prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "m"
    finetune(config(tiny_sd, method="captions", use_lora=True, max_steps=1), out, prepared, progress=False)
    return out


def test_img2img_variations(lora_model, prepared, tmp_path):
    made = generate(lora_model, tmp_path / "syn", per_class=2, init_images=prepared, strength=0.5, **GEN)
    assert len(made.manifest) == 4 and made.summary["settings"]["strength"] == 0.5
    for path in made.manifest["path"]:
        assert Image.open(tmp_path / "syn" / path).size == (SIZE, SIZE)


def test_inpainting_keeps_the_unmasked_region(lora_model, tmp_path):
    init = tmp_path / "init" / "benign"
    masks = tmp_path / "masks"
    init.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    original = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(original).save(init / "a.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(masks / "a.png")
    made = generate(lora_model, tmp_path / "syn", per_class=1, classes=["benign"], init_images=tmp_path / "init",
                    strength=1.0, mask_from=str(masks), **GEN)
    result = np.asarray(Image.open(tmp_path / "syn" / made.manifest["path"][0]))
    assert result.shape == (SIZE, SIZE, 3)
    outside = mask == 0
    assert np.array_equal(result[outside], original[outside])
    assert not np.array_equal(result[~outside], original[~outside])


def test_inpainting_the_segmented_lesion(lora_model, prepared, tmp_path):
    made = generate(lora_model, tmp_path / "syn", per_class=1, init_images=prepared, mask_from="lesion", **GEN)
    assert len(made.manifest) == 2 and made.summary["settings"]["mask_from"] == "lesion"


# --------------------------------------------------------------------------- user errors



@pytest.mark.parametrize(("case", "fragment"), [
    ("missing-base", "base model not found"),
    ("not-a-model", "not a diffusers folder"),
    ("pickle", "--trust-pickle"),
    ("empty-instance-dir", "no instance images"),
    ("empty-prompt", "instance_prompt"),
    ("explicit-empty-prompt", "instance_prompt is empty"),  # given empty: not replaced by prepare's default
    ("resolution", "multiple of 8"),
    ("single-file-offline", "--base-config"),
    ("not-stable-diffusion", "cannot load base model"),
    ("empty-captions", "empty prompt"),
])
def test_bad_input_is_aone_line_error(case, fragment, tiny_sd, prepared, tmp_path, cli):
    base, extra = tiny_sd, []
    method = "dreambooth"
    if case == "missing-base":
        base = tmp_path / "nope"
    elif case == "not-a-model":
        base = tmp_path / "plain"
        base.mkdir()
    elif case == "pickle":
        base = tmp_path / "model.ckpt"
        torch.save({"state_dict": {}}, base)
    elif case == "empty-instance-dir":
        (tmp_path / "empty").mkdir()
        extra = ["--instance-dir", tmp_path / "empty"]
    elif case == "empty-prompt":
        extra = ["--instance-prompt", "  "]
    elif case == "explicit-empty-prompt":
        extra = ["--instance-prompt", ""]
    elif case == "resolution":
        extra = ["--resolution", 60]
    elif case == "single-file-offline":
        base = tiny_sd.parent / "tiny-sd.safetensors"
    elif case == "not-stable-diffusion":
        from safetensors.torch import save_file

        base = tmp_path / "other.safetensors"
        save_file({"weight": torch.zeros(2)}, str(base))
        extra = ["--base-config", tiny_sd]
    elif case == "empty-captions":
        method = "captions"
        data = make_prepared(tmp_path / "prep", size=SIZE)
        frame = pd.read_csv(data / "metadata.csv")
        frame.loc[frame["split"] == "train", "prompt"] = ""
        frame.to_csv(data / "metadata.csv", index=False)
        prepared = data
    line = one_line_error(cli, "finetune", "--method", method, "--base", base, "--data", prepared, "--out",
                           tmp_path / "out", "--max-steps", 1, "--resolution", SIZE, "--quiet", *extra)
    assert fragment in line, line
    assert not (tmp_path / "out" / "dermsynth_model.json").exists()


def test_generate_prompt_options_need_a_text_to_image_model(cli, tmp_path):
    from types import SimpleNamespace

    from dermsynth.diffusion.generate import _text_image_options

    with pytest.raises(DermsynthError, match="takes no prompts"):
        _text_image_options(SimpleNamespace(family="scratch", takes_prompts=False), None, None, tmp_path, 0.5, None,
                            tmp_path)
    assert _text_image_options(SimpleNamespace(family="scratch", takes_prompts=False), None, None, None, 0.6, None,
                               tmp_path) == {}
    code, _, stderr = cli("generate", "--model", tmp_path, "--out", tmp_path / "s", "--per-class", 1,
                          "--prompt", "nonsense")
    assert code == 2 and "CLASS=PROMPT" in stderr


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name", ["dreambooth-sd15", "lora-sd15-isic2020", "captions-sd15-isic2020"])
def test_shipped_configs_validate_and_run_tiny(name, tiny_sd, prepared, tmp_path):
    from dermsynth.config import read_yaml, validate_config

    data = read_yaml(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    cfg = validate_config(FinetuneConfig, data, name)
    assert cfg.resolution == 512 and cfg.precision == "fp16"
    tiny = cfg.model_copy(update={"base": str(tiny_sd), "resolution": SIZE, "max_steps": 1,
                                  "precision": "no", "num_class_images": 2,
                                  "sample": cfg.sample.model_copy(update={"steps": 1})})
    result = finetune(tiny, tmp_path / "m", prepared, progress=False)
    assert result.steps == 1 and (tmp_path / "m" / "dermsynth_model.json").is_file()


def test_hub_ids_are_recognised_and_only_they_lift_offline_mode(tmp_path):
    import huggingface_hub.constants as hub

    from dermsynth.diffusion.sd.models import describe_base
    from dermsynth.utils import hub_access

    assert describe_base("stable-diffusion-v1-5/stable-diffusion-v1-5") == "hub"
    with pytest.raises(DermsynthError, match="base model not found"):
        describe_base(tmp_path / "missing" / "model.safetensors")
    assert hub.is_offline_mode()
    with hub_access(False):
        assert hub.is_offline_mode()
    with hub_access(True):
        assert not hub.is_offline_mode()
    assert hub.is_offline_mode()


def test_two_processes_share_the_batches(tiny_sd, prepared, tmp_path):
    """What `accelerate launch` does on several GPUs, here with two CPU processes (torch.distributed, gloo)."""
    import os
    import sys

    settings = _yaml(tmp_path, {"num_class_images": 2, "sample": {"steps": 1}, "gradient_accumulation_steps": 2,
                                "checkpointing_steps": 2})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "dermsynth", "finetune", "--method", "lora", "--base", str(tiny_sd), "--data", str(prepared), "--out",
               str(tmp_path / "m"), "--resolution", str(SIZE), "--max-steps", "3", "--quiet", "--config",
               str(settings)]
    done = _launch_with_one_retry(command, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("3 steps") == 1  # one summary line, from the main process
    info = read_info(tmp_path / "m")
    assert info["processes"] == 2 and info["steps"] == 3
    assert [p.name for p in list_checkpoints(tmp_path / "m")] == ["step-000002", "step-000003"]


def _launch_with_one_retry(command: list[str], env: dict[str, str]):
    """Run a two-process launch (normally ~15 s). A launch that prints nothing for 240 s is stuck in the
    launcher's localhost rendezvous (seen once in a full test run): kill its whole process
    group and launch once more, so a second hang still fails the test."""
    import os
    import signal
    import subprocess
    import warnings

    for attempt in (1, 2):
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            out, err = process.communicate(timeout=240)
            return subprocess.CompletedProcess(command, process.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            if attempt == 2:
                raise
            warnings.warn("the two-process launch hung for 240 s; launching once more", stacklevel=2)
    raise AssertionError("unreachable")


def test_bf16_lora_with_ema_and_validation_images(tiny_sd, prepared, tmp_path):
    cfg = config(tiny_sd, method="lora", precision="bf16", use_ema=True, validation_prompts=["a sks lesion"],
                 validation_steps=3, validation_inference_steps=2)
    result = finetune(cfg, tmp_path / "m", prepared, progress=False)
    assert np.isfinite(result.losses).all() and len(list((tmp_path / "m" / "validation").glob("*/*.png"))) == 2
    weights = load_file(tmp_path / "m" / "pytorch_lora_weights.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # trained in float32, frozen UNet in bf16
