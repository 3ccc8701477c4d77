"""Exact resume: `dermsynth train` and `dermsynth finetune` with default settings, killed with SIGKILL after a
checkpoint, then resumed, end with weights bitwise equal to an uninterrupted run; the adaptive thread tuner's
schedule survives a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dermsynth.diffusion import threads as threads_module
from dermsynth.diffusion.threads import ThreadTuner
from tests.test_diffusion_scratch import TINY, make_prepared

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dermsynth", *args, "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def run_to_end(args: list[str]) -> None:
    done = subprocess.run(_command(args), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_after_first_checkpoint(args: list[str], out: Path) -> None:
    """Start the command, SIGKILL it as soon as a checkpoint is on disk (no clean-up handler runs)."""
    process = subprocess.Popen(_command(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((out / "checkpoints").glob("step-*/state.json")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "dermsynth_model.json").exists(), "the run finished before it could be killed"


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def _yaml(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def test_scratch_train_killed_and_resumed_is_bitwise_identical(tmp_path):
    prepared = make_prepared(tmp_path / "prep")
    settings = TINY | {"max_steps": 250, "checkpoint_every": 25, "sample_every": 10_000, "log_every": 5}
    config = _yaml(tmp_path / "train.yaml", settings)
    common = ["train", "--data", str(prepared), "--config", str(config)]
    run_to_end([*common, "--out", str(tmp_path / "whole")])
    kill_after_first_checkpoint([*common, "--out", str(tmp_path / "cut")], tmp_path / "cut")
    run_to_end([*common, "--out", str(tmp_path / "cut"), "--resume"])
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    assert_same_weights(tmp_path / "whole" / weights, tmp_path / "cut" / weights)
    log = [(tmp_path / run / "train_log.csv").read_text().splitlines() for run in ("whole", "cut")]
    assert [line.split(",")[:2] for line in log[0]] == [line.split(",")[:2] for line in log[1]]  # step, loss


def test_sd_finetune_killed_and_resumed_is_bitwise_identical(tmp_path):
    from dermsynth.testing.tiny_sd import build_tiny_pipeline

    base = tmp_path / "tiny-sd"
    build_tiny_pipeline(seed=0).save_pretrained(base)
    prepared = make_prepared(tmp_path / "prep", size=64)
    settings = {"resolution": 64, "instance_prompt": "dermoscopy image of a sks lesion",
                "class_prompt": "dermoscopy image of a skin lesion", "num_class_images": 2,
                "max_steps": 120, "checkpointing_steps": 10, "checkpoints_total_limit": 3,
                "train_batch_size": 2, "learning_rate": 1e-3, "use_ema": True, "log_every": 5,
                "sample": {"steps": 2, "scheduler": "ddim"}}  # default threads
    config = _yaml(tmp_path / "finetune.yaml", settings)
    common = ["finetune", "--method", "lora", "--base", str(base), "--data", str(prepared), "--config", str(config)]
    run_to_end([*common, "--out", str(tmp_path / "whole")])
    kill_after_first_checkpoint([*common, "--out", str(tmp_path / "cut")], tmp_path / "cut")
    run_to_end([*common, "--out", str(tmp_path / "cut"), "--resume", "latest"])
    assert_same_weights(tmp_path / "whole" / "pytorch_lora_weights.safetensors",
                        tmp_path / "cut" / "pytorch_lora_weights.safetensors")


# --------------------------------------------------------------------------- the thread tuner's schedule


class FakeClock:
    """perf_counter for the tuner: a step 'takes' a time set by the thread count it ran with."""

    def __init__(self, seconds_per_thread_count: dict[int, float]):
        self.now, self.cost = 0.0, seconds_per_thread_count

    def __call__(self) -> float:
        return self.now

    def step(self) -> int:
        threads = torch.get_num_threads()
        self.now += self.cost[threads]
        return threads


def thread_trace(monkeypatch, tuner: ThreadTuner, clock: FakeClock, steps: int) -> list[int]:
    monkeypatch.setattr(threads_module.time, "perf_counter", clock)
    return [tuner.run(clock.step) for _ in range(steps)]


def adaptive_tuner() -> ThreadTuner:
    torch.set_num_threads(2)
    return ThreadTuner(None, adaptive=True)  # switches between 1 and 2 threads


@pytest.mark.parametrize("resume_with_state", [True, False])
def test_thread_schedule_continues_exactly_after_a_checkpoint(monkeypatch, resume_with_state):
    previous = torch.get_num_threads()
    monkeypatch.setattr(threads_module, "machine_is_busy", lambda: False)
    costs = {1: 1.0, 2: 0.8}  # two threads win: every probe with one thread loses and the gaps between probes grow
    try:
        trace = thread_trace(monkeypatch, adaptive_tuner(), FakeClock(costs), 200)
        first = adaptive_tuner()
        head = thread_trace(monkeypatch, first, FakeClock(costs), 70)
        second = adaptive_tuner()
        if resume_with_state:
            second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as it goes through state.json
        tail = thread_trace(monkeypatch, second, FakeClock(costs), 130)
    finally:
        torch.set_num_threads(previous)
    assert 1 < trace.count(1) < 10  # a few probes, ever sparser
    assert (head + tail == trace) is resume_with_state
