"""The same command gives the same model: two runs of `dermsynth train` / `dermsynth finetune` with default
settings end with bitwise-equal weights (scratch, latent in both stages, LoRA), a run killed at a random moment and
resumed equals an uninterrupted one, and the model JSON says whether its run was reproducible."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dermsynth.diffusion.scratch.config import PRESETS, resolve_train_config
from tests.test_diffusion_scratch import TINY, make_prepared
from tests.test_latent import TINY_LATENT, UNET_WEIGHTS, VAE_WEIGHTS
from tests.test_resume_exact import assert_same_weights

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DEFAULT_THREADS = TINY  # it sets no thread count: the default


def dermsynth(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "dermsynth", *map(str, args), "--quiet"], capture_output=True,
                          text=True, env=env, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _yaml(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def _model_json(folder: Path) -> dict:
    return json.loads((folder / "dermsynth_model.json").read_text())


def test_scratch_train_twice_with_default_settings_gives_the_same_weights(tmp_path):
    prepared = make_prepared(tmp_path / "prep")
    config = _yaml(tmp_path / "t.yaml", DEFAULT_THREADS | {"max_steps": 60, "checkpoint_every": 20})
    for run in ("a", "b"):
        dermsynth("train", "--data", prepared, "--config", config, "--out", tmp_path / run)
    a, b = _model_json(tmp_path / "a"), _model_json(tmp_path / "b")
    assert a["weights_sha256"] == b["weights_sha256"] and a["final_loss"] == b["final_loss"]
    assert a["reproducible"] == {"bitwise": True, "reasons": [], "threads": a["reproducible"]["threads"]}
    assert a["threads"]["adaptive"] is False and a["threads"]["switches"] == 0


def test_latent_train_twice_with_default_settings_gives_the_same_autoencoder_and_unet(tmp_path):
    prepared = make_prepared(tmp_path / "prep", size=32)
    config = _yaml(tmp_path / "t.yaml", TINY_LATENT)  # default threads
    for run in ("a", "b"):
        dermsynth("train", "--data", prepared, "--config", config, "--out", tmp_path / run)
    for weights in (VAE_WEIGHTS, UNET_WEIGHTS):
        assert_same_weights(tmp_path / "a" / weights, tmp_path / "b" / weights)
    info = _model_json(tmp_path / "a")
    assert info["reproducible"]["bitwise"] and info["autoencoder"]["reproducible"]["bitwise"]


def test_lora_finetune_twice_with_default_settings_gives_the_same_weights(tmp_path):
    from dermsynth.testing.tiny_sd import build_tiny_pipeline

    base = tmp_path / "tiny-sd"
    build_tiny_pipeline(seed=0).save_pretrained(base)
    prepared = make_prepared(tmp_path / "prep", size=64)
    config = _yaml(tmp_path / "f.yaml", {
        "resolution": 64, "instance_prompt": "dermoscopy image of a sks lesion", "max_steps": 12,
        "checkpointing_steps": 6, "train_batch_size": 2, "learning_rate": 1e-3, "log_every": 3,
        "sample": {"steps": 2, "scheduler": "ddim"}})
    for run in ("a", "b"):
        dermsynth("finetune", "--method", "lora", "--base", base, "--data", prepared, "--config", config,
                  "--out", tmp_path / run)
    assert_same_weights(tmp_path / "a" / "pytorch_lora_weights.safetensors",
                        tmp_path / "b" / "pytorch_lora_weights.safetensors")
    assert _model_json(tmp_path / "a")["reproducible"]["bitwise"]


def _kill_at(args: list[str | Path], seconds: float, out: Path) -> str:
    """Start the command, SIGKILL its process group ``seconds`` later; says where the run was when it died."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "dermsynth", *map(str, args), "--quiet"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=seconds)
        return "finished before the kill"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    steps = sorted(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*/state.json"))
    return f"killed at {seconds:.1f} s, newest checkpoint: step {steps[-1] if steps else 'none'}"


def test_train_killed_at_random_moments_and_resumed_with_default_settings_is_bitwise_identical(tmp_path):
    prepared = make_prepared(tmp_path / "prep")
    config = _yaml(tmp_path / "t.yaml", DEFAULT_THREADS | {"max_steps": 300, "checkpoint_every": 25,
                                                           "sample_every": 10_000, "log_every": 5})
    common = ["train", "--data", prepared, "--config", config]
    started = time.monotonic()
    dermsynth(*common, "--out", tmp_path / "whole")
    duration = time.monotonic() - started
    rng = random.Random(0)
    for trial in range(2):
        out = tmp_path / f"cut-{trial}"
        where = _kill_at([*common, "--out", out], rng.uniform(0.3, 0.9) * duration, out)
        dermsynth(*common, "--out", out, "--resume")
        weights = Path("unet") / "diffusion_pytorch_model.safetensors"
        try:
            assert_same_weights(tmp_path / "whole" / weights, out / weights)
        except AssertionError as exc:
            raise AssertionError(f"trial {trial} ({where}): {exc}") from None


def test_adaptive_threads_and_a_minute_budget_are_recorded_as_not_reproducible(tmp_path):
    from dermsynth.diffusion.scratch.train import train

    prepared = make_prepared(tmp_path / "prep")
    result = train(prepared, tmp_path / "m", config=DEFAULT_THREADS | {"threads": "adaptive", "max_minutes": 5.0},
                   progress=False)
    record = result.info["reproducible"]
    assert record["bitwise"] is False and len(record["reasons"]) == 2
    assert "adaptive" in record["reasons"][0] and "max_minutes" in record["reasons"][1]
    bad = dermsynth("train", "--data", prepared, "--out", tmp_path / "x",
                    "--config", _yaml(tmp_path / "b.yaml", DEFAULT_THREADS | {"threads": "fast"}), check=False)
    assert bad.returncode == 2 and "threads must be a number >= 1, null" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_max_steps_and_max_minutes_bound_the_whole_run_of_a_two_stage_preset():
    latent = resolve_train_config("cpu-latent-128", max_steps=6, max_minutes=8.1)
    assert latent.autoencoder.max_steps + latent.max_steps == 6 and latent.autoencoder.max_steps >= 1
    share = PRESETS["cpu-latent-128"]["autoencoder"]["max_steps"] / (
        PRESETS["cpu-latent-128"]["autoencoder"]["max_steps"] + PRESETS["cpu-latent-128"]["max_steps"])
    assert latent.autoencoder.max_minutes == pytest.approx(8.1 * share)
    assert latent.autoencoder.max_minutes + latent.max_minutes == pytest.approx(8.1)
    pixel = resolve_train_config("cpu-fast", max_steps=6)
    assert pixel.max_steps == 6 and pixel.max_minutes is None
    for name, preset in PRESETS.items():  # every default budget is steps: the same command, the same schedule
        assert preset.get("max_minutes") is None, name
        assert (preset.get("autoencoder") or {}).get("max_minutes") is None, name


def test_every_stage_of_a_latent_run_stops_at_its_share_of_max_steps(tmp_path):
    prepared = make_prepared(tmp_path / "prep", size=32)
    config = _yaml(tmp_path / "t.yaml", TINY_LATENT)  # autoencoder 6 + diffusion 6 steps
    dermsynth("train", "--data", prepared, "--config", config, "--out", tmp_path / "m", "--max-steps", "4")
    info = _model_json(tmp_path / "m")
    assert info["autoencoder"]["steps"] == 2 and info["steps"] == 2


def test_train_help_lists_every_registered_preset():
    env = {**os.environ, "COLUMNS": "300", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-m", "dermsynth", "train", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0
    listed = done.stdout.split("--preset", 1)[1].split("--config", 1)[0]
    for name, preset in PRESETS.items():
        assert f"{name} ({preset['model']['image_size']} px" in listed, name
