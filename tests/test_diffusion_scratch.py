"""From-scratch diffusion training: presets, a tiny train -> save -> load round trip, resume, user errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dermsynth.cli import main
from dermsynth.data.schema import CANONICAL_COLUMNS
from dermsynth.diffusion.checkpoints import latest_checkpoint_step, list_checkpoints
from dermsynth.diffusion.families import load_generator, read_model_info
from dermsynth.diffusion.scratch.config import PRESETS, resolve_train_config
from dermsynth.diffusion.scratch.train import train
from dermsynth.errors import DermsynthError

REPO = Path(__file__).resolve().parents[1]
# diffusers' DPM-Solver builds its sigmas in a way numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# A 16 px, two-level UNet: a training step takes a few milliseconds.
TINY = {
    "model": {"image_size": 16, "block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [1],
              "attention_head_dim": 8, "norm_num_groups": 8},
    "batch_size": 8, "max_steps": 6, "max_minutes": None, "warmup_steps": 2, "checkpoint_every": 4,
    "sample_every": 4, "samples_per_class": 2, "sample_steps": 2, "log_every": 2, "precision": "no",
    "noise": {"parameterization": "ddpm"}, "class_balanced": False,  # the discrete-schedule route (EDM: below)
    "lr_schedule": "constant",  # tests extend max_steps on resume; a cosine over max_steps would then move
}


def make_prepared(root: Path, per_class: dict[str, int] | None = None, size: int = 24) -> Path:
    """A minimal prepared folder: light skin with a brown (benign) or dark (malignant) disc, splits, prepare.json."""
    per_class = per_class or {"benign": 12, "malignant": 8}
    rng = np.random.default_rng(0)
    rows = []
    for target, (label, count) in enumerate(per_class.items()):
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            yy, xx = np.mgrid[:size, :size]
            radius = rng.uniform(size / 6, size / 3)
            disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
            image = np.empty((size, size, 3), np.float64)
            image[:] = rng.uniform(190, 230, 3)
            image[disc] = (90, 60, 40) if target == 0 else (40, 25, 30)
            image += rng.normal(0, 6, image.shape)
            image_id = f"IMG_{target}{i:03d}"
            path = f"images/{label}/{image_id}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / path)
            split = "test" if i == 0 else "val" if i == 1 else "train"
            rows.append({"image_id": image_id, "path": path, "label": label, "target": target, "split": split,
                         "prompt": f"dermoscopy image of a {label} skin lesion", "source": "synthetic-fixture"})
    pd.DataFrame(rows).reindex(columns=CANONICAL_COLUMNS).to_csv(root / "metadata.csv", index=False)
    summary = {"classes": list(per_class), "images": len(rows)}
    (root / "prepare.json").write_text(json.dumps(summary), encoding="utf-8")
    return root


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and two threads on a busy machine can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prep"))


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_yaml_files_match_the_presets(preset):
    """As the files' headers say to use them: --config alone, stacked on the preset the file names."""
    path = REPO / "configs" / f"train-{preset}.yaml"
    assert resolve_train_config(None, path) == resolve_train_config(preset)
    assert resolve_train_config(preset, path) == resolve_train_config(preset)
    other = next(name for name in PRESETS if name != preset)
    with pytest.raises(DermsynthError, match=f"written for preset '{preset}' but --preset is '{other}'"):
        resolve_train_config(other, path)


def test_gpu_preset_builds_and_runs_a_step():
    from dermsynth.diffusion.scratch.config import build_unet

    cfg = resolve_train_config("gpu")
    unet = build_unet(cfg.model, num_classes=2)
    x = torch.randn(1, 3, cfg.model.image_size, cfg.model.image_size)
    out = unet(x, torch.tensor([500]), class_labels=torch.tensor([2])).sample
    out.mean().backward()
    assert out.shape == x.shape and cfg.model.image_size >= 64


def test_config_layers_and_strictness(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 0.002\nmodel: {layers_per_block: 1}\n", encoding="utf-8")
    cfg = resolve_train_config("cpu-fast", path, max_steps=7)
    assert (cfg.learning_rate, cfg.model.layers_per_block, cfg.max_steps) == (0.002, 1, 7)
    assert cfg.model.block_out_channels == PRESETS["cpu-fast"]["model"]["block_out_channels"]
    path.write_text("learning_rat: 0.002\n", encoding="utf-8")
    with pytest.raises(DermsynthError, match="learning_rat: unknown key"):
        resolve_train_config("cpu-fast", path)
    with pytest.raises(DermsynthError, match="norm_num_groups must divide"):
        resolve_train_config("cpu-fast", {"model": {"block_out_channels": [12, 24, 64]}})


# --------------------------------------------------------------------------- training


def test_train_save_load_round_trip(prepared, tmp_path):
    out = tmp_path / "model"
    result = train(prepared, out, config=TINY, progress=False)
    assert result.steps == 6 and not result.skipped
    info = read_model_info(out)
    assert info["family"] == "scratch" and info["classes"] == ["benign", "malignant"]
    assert info["image_size"] == 16 and info["data"]["counts"] == {"benign": 10, "malignant": 6}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    assert {p.name for p in (out / "samples").iterdir()} == {"step-000004.png", "final.png"}
    assert Image.open(out / "samples" / "final.png").size[1] >= 2 * 16
    assert [p.name for p in list_checkpoints(out)] == ["step-000004", "step-000006"]
    assert len(pd.read_csv(out / "train_log.csv")) == 4  # step 1, then every log_every=2 steps

    generator = load_generator(out)
    images = generator(["malignant", "benign"], [1, 2], steps=3, scheduler="ddim", guidance_scale=2.0)
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()

    again = train(prepared, out, config=TINY, progress=False)
    assert again.skipped and again.steps == 6


def test_interrupted_run_resumes_to_the_same_model(prepared, tmp_path):
    straight = tmp_path / "straight"
    train(prepared, straight, config=TINY | {"max_steps": 8}, progress=False)

    def crash_at_step_6(step: int, loss: float) -> None:
        if step == 6:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(prepared, interrupted, config=TINY | {"max_steps": 8}, progress=False, callback=crash_at_step_6)
    assert latest_checkpoint_step(interrupted) == 4 and not (interrupted / "dermsynth_model.json").exists()
    with pytest.raises(DermsynthError, match="pass --resume"):
        train(prepared, interrupted, config=TINY | {"max_steps": 8}, progress=False)

    result = train(prepared, interrupted, config=TINY | {"max_steps": 8}, resume=True, progress=False)
    assert result.steps == 8 and read_model_info(interrupted)["steps"] == 8
    from safetensors.torch import load_file

    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(interrupted / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # The loss record continues where it stopped: same log and final (smoothed) loss as the uninterrupted run.
    assert read_model_info(interrupted)["final_loss"] == pytest.approx(read_model_info(straight)["final_loss"],
                                                                        rel=1e-5)
    log_a, log_b = (pd.read_csv(folder / "train_log.csv") for folder in (straight, interrupted))
    assert np.allclose(log_a["loss"], log_b["loss"], rtol=1e-5)


def test_resume_extends_a_finished_run_and_refuses_changed_settings(prepared, tmp_path):
    out = tmp_path / "model"
    train(prepared, out, config=TINY, progress=False)
    with pytest.raises(DermsynthError, match="other settings"):
        train(prepared, out, config=TINY | {"max_steps": 10}, progress=False)
    with pytest.raises(DermsynthError, match="learning_rate"):
        train(prepared, out, config=TINY | {"max_steps": 10, "learning_rate": 1e-2}, resume=True, progress=False)
    assert train(prepared, out, config=TINY | {"max_steps": 10}, resume=True, progress=False).steps == 10


def test_real_per_class_trains_on_the_sample_validate_uses(prepared, tmp_path):
    from dermsynth.data.dataset import load_prepared, subsample_per_class
    from dermsynth.diffusion.scratch.train import load_training_data
    from dermsynth.evaluate.datasets import real_frame

    dataset = load_prepared(prepared)
    data = load_training_data(dataset, 16, progress=False, per_class=3, subsample_seed=1)
    chosen = subsample_per_class(real_frame(dataset, "train"), 3, 1, dataset.classes)  # what validate trains on
    assert sorted(data.image_ids) == sorted(chosen["image_id"]) and len(data.image_ids) == 3 * len(dataset.classes)
    other = load_training_data(dataset, 16, progress=False, per_class=3, subsample_seed=2)
    assert sorted(other.image_ids) != sorted(data.image_ids)
    result = train(prepared, tmp_path / "m", config=TINY | {"max_steps": 2}, real_per_class=3, progress=False)
    assert result.info["data"]["counts"] == dict.fromkeys(dataset.classes, 3)
    with pytest.raises(DermsynthError, match="real_per_class=1000"):
        train(prepared, tmp_path / "m2", config=TINY, real_per_class=1000, progress=False)


def test_max_minutes_stops_training(prepared, tmp_path):
    result = train(prepared, tmp_path / "m", config=TINY | {"max_steps": 10_000, "max_minutes": 0.02},
                   progress=False)
    assert 0 < result.steps < 10_000 and result.info["stopped_by"] == "max_minutes"


def test_min_snr_weighting_trains(prepared, tmp_path):
    result = train(prepared, tmp_path / "m", config=TINY | {"max_steps": 2, "snr_gamma": 5.0}, progress=False)
    assert np.isfinite(result.info["final_loss"])


EDM_BALANCED = TINY | {"noise": {"parameterization": "edm"}, "class_balanced": True, "max_steps": 8}


def test_cpu_fast_preset_is_the_measured_winner():
    cfg = resolve_train_config("cpu-fast")  # bench/RESULTS.md, "training recipes A/B"
    assert cfg.noise.parameterization == "edm" and cfg.class_balanced and cfg.model.block_out_channels == [64, 128, 256]


def test_edm_model_trains_resumes_exactly_and_samples_with_edm_schedulers(prepared, tmp_path):
    straight = tmp_path / "straight"
    train(prepared, straight, config=EDM_BALANCED, progress=False)
    config = json.loads((straight / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "EDMDPMSolverMultistepScheduler" and config["sigma_data"] == 0.5

    def crash_at_step_6(step: int, loss: float) -> None:
        if step == 6:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(prepared, resumed, config=EDM_BALANCED, progress=False, callback=crash_at_step_6)
    train(prepared, resumed, config=EDM_BALANCED, resume=True, progress=False)
    from safetensors.torch import load_file

    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    generator = load_generator(straight)
    for scheduler in ("dpm++", "euler"):
        images = generator(["malignant", "benign"], [1, 2], steps=3, scheduler=scheduler, guidance_scale=2.0)
        assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    with pytest.raises(DermsynthError, match="does not sample EDM models"):
        generator(["benign"], [1], steps=3, scheduler="ddim", guidance_scale=2.0)


@pytest.mark.parametrize(("override", "message"), [
    ({"snr_gamma": 5.0}, "snr_gamma weights a discrete schedule"),
    ({"sample_scheduler": "ddim"}, "sample_scheduler 'ddim' does not sample EDM models"),
])
def test_edm_settings_that_do_not_apply_are_refused_up_front(override, message):
    with pytest.raises(DermsynthError, match=message):
        resolve_train_config("cpu-fast", EDM_BALANCED | override)


def test_class_balanced_batches_draw_every_class_equally(prepared):
    from dermsynth.data.dataset import load_prepared
    from dermsynth.diffusion.scratch.train import ScratchTrainer, load_training_data

    data = load_training_data(load_prepared(prepared), 16, progress=False)  # 10 benign, 6 malignant
    trainer = ScratchTrainer(resolve_train_config("cpu-fast", TINY | {"class_balanced": True}), data,
                             Path("/nonexistent"))
    labels = torch.cat([trainer._next_batch()[1] for _ in range(60)])  # 480 draws
    assert abs(float(labels.float().mean()) - 0.5) < 0.07  # plain shuffling would give 6/16 = 0.375


# --------------------------------------------------------------------------- the command line


def test_cli_train(prepared, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY), encoding="utf-8")  # JSON is YAML
    code, out, _ = run_cli(["train", "--data", str(prepared), "--out", str(tmp_path / "m"), "--config",
                            str(config), "--max-steps", "3", "--quiet"], capsys)
    assert code == 0 and "3 steps" in out


@pytest.mark.parametrize("case", ["missing", "incomplete", "preset", "config"])
def test_cli_train_user_errors(prepared, tmp_path, capsys, case):
    data, extra = str(prepared), []
    if case == "missing":
        data = str(tmp_path / "nope")
    elif case == "incomplete":
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "metadata.csv").write_text("image_id\n", encoding="utf-8")
        data = str(tmp_path / "half")
    elif case == "preset":
        extra = ["--preset", "tpu"]
    else:
        (tmp_path / "bad.yaml").write_text("model: {image_size: 7}\n", encoding="utf-8")
        extra = ["--config", str(tmp_path / "bad.yaml")]
    code, _, err = run_cli(["train", "--data", data, "--out", str(tmp_path / "m"), "--quiet", *extra], capsys)
    fragment = {"missing": "not found", "incomplete": "not a complete prepared dataset", "preset": "unknown preset",
                "config": "model.image_size"}[case]
    assert_one_line_error(code, err, fragment)


def test_package_import_stays_light_and_exports_the_api():
    import subprocess
    import sys

    code = ("import sys, dermsynth; assert 'torch' not in sys.modules; "
            "assert dermsynth.train.__module__ == 'dermsynth.diffusion.scratch.train'; "
            "assert dermsynth.generate.__module__ == 'dermsynth.diffusion.generate'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_thread_tuner_moves_to_the_faster_setting(monkeypatch):
    import time

    from dermsynth.diffusion import threads

    def step_on_a_busy_machine() -> None:
        time.sleep(0.002 if torch.get_num_threads() == 1 else 0.02)

    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "machine_is_busy", lambda: False)
    tuner = threads.ThreadTuner(adaptive=True, every=5)
    assert tuner.current == 2
    for _ in range(8):
        tuner.run(step_on_a_busy_machine)
    assert tuner.current == 1 and tuner.switches == 1
    monkeypatch.setattr(threads, "machine_is_busy", lambda: True)
    assert threads.ThreadTuner(adaptive=True).current == 1
    torch.set_num_threads(2)
    assert threads.ThreadTuner().adaptive is False and threads.ThreadTuner().current == 2  # the default: fixed
    assert threads.ThreadTuner(threads=2, adaptive=False).adaptive is False


def test_cosine_schedule_anneals_over_whichever_budget_ends_first(prepared):
    """With a step budget the schedule is diffusers' cosine; with a minute budget it reaches zero when the minutes
    run out, so a run stopped by max_minutes ends annealed, not at half its learning rate."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from dermsynth.data.dataset import load_prepared
    from dermsynth.diffusion.scratch.train import ScratchTrainer, load_training_data

    data = load_training_data(load_prepared(prepared), 16, progress=False)
    cfg = resolve_train_config("cpu-fast", TINY | {"lr_schedule": "cosine", "max_steps": 100, "warmup_steps": 10})
    trainer = ScratchTrainer(cfg, data, Path("/nonexistent"))
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), 10, 100).lr_lambdas[0]
    assert [trainer._lr_factor(s) for s in (0, 5, 10, 40, 99)] == pytest.approx([reference(s) for s in
                                                                                 (0, 5, 10, 40, 99)])
    trainer.budget_used = 0.5  # half the minutes gone at step 20 of 100: the time budget leads
    assert trainer._lr_factor(20) == pytest.approx(0.5)
    trainer.budget_used = 1.0
    assert trainer._lr_factor(30) == pytest.approx(0.0)
    constant = ScratchTrainer(resolve_train_config("cpu-fast", TINY | {"warmup_steps": 10, "lr_schedule": "constant"}),
                       data, Path("/nonexistent"))
    constant.budget_used = 0.9
    assert constant._lr_factor(50) == 1.0
