"""bench/bench_sd_full_size.py --smoke: Stable Diffusion 1.5 at full size (parameter counts, one step of every
fine-tuning method and its reference, generation, peak RSS of each), and the same script on the tiny stand-in."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_sd_full_size.py"
SD15 = {"unet": 859.52e6, "vae": 83.65e6, "text_encoder": 123.06e6}
WORKERS = ["dreambooth", "dreambooth-reference", "lora", "lora-reference", "captions", "captions-reference",
           "generate"]
# Full-UNet AdamW's step holds five fp32 copies of the UNet (weights, gradients, two moments and foreach AdamW's
# temporary): 16.0 GiB, plus the VAE, text encoder and libraries: ~17.3 GiB peak RSS.
SMOKE_NEEDS_GIB = 18.5
# LoRA and generation alone hold one fp32 copy of SD 1.5 and the LoRA state: 6.1 GiB peak RSS (measured), so this
# variant runs on a 24 GiB machine (CI's) where the full-UNet methods cannot.
LORA_SMOKE_NEEDS_GIB = 8.0
UNET_FP32_MIB = SD15["unet"] * 4 / 2**20


def available_gib() -> float | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 2**20 for line in lines if line.startswith("MemAvailable:")), None)


def run_smoke(arch: str, tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}  # the saved model goes there too
    done = subprocess.run([sys.executable, str(SCRIPT), "--arch", arch, "--smoke", "--json", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=3600, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(out.read_text()), done.stdout


def measured(report: dict) -> dict[str, dict]:
    """Result per worker; every one of them ran and timed a finite step with a peak RSS."""
    results = {run["worker"]: run["result"] for run in report["runs"] if run["skipped"] is None}
    assert sorted(results) == sorted(WORKERS)
    for worker, result in results.items():
        assert "error" not in result, (worker, result)
        assert math.isfinite(result["seconds"]) and result["seconds"] > 0, worker
        assert result["peak_rss_mib"] > 0, worker
    return results


def check_tables(stdout: str) -> None:
    assert "| part | parameters | SD 1.5 | difference |" in stdout
    assert "| method | precision | grad. checkpointing |" in stdout
    assert stdout.count("| fp32 | off |") == 3  # one row per fine-tuning method
    assert "| weights | time per image | memory |" in stdout


def test_tiny_architecture_smoke(tmp_path):
    report, stdout = run_smoke("tiny", tmp_path)
    assert report["build"]["parameters"]["unet"] < 2e6 and report["device"] == "cpu"
    results = measured(report)
    assert results["lora"]["trained_parameters"] < results["dreambooth"]["trained_parameters"]
    check_tables(stdout)


@pytest.mark.slow
def test_full_size_smoke(tmp_path):
    available = available_gib()
    if available is None or available < SMOKE_NEEDS_GIB:
        found = "unknown" if available is None else f"{available:.1f} GiB"
        pytest.skip(f"the full-size smoke needs {SMOKE_NEEDS_GIB} GiB of available memory (full-UNet AdamW on the "
                    f"CPU); MemAvailable: {found}")
    report, stdout = run_smoke("sd15", tmp_path)
    parameters = report["build"]["parameters"]
    for part, count in SD15.items():
        assert abs(parameters[part] - count) / count < 1e-3, (part, parameters[part])
    assert report["build"]["vocab_size"] == 49_408
    results = measured(report)
    assert results["lora"]["peak_rss_mib"] < results["dreambooth"]["peak_rss_mib"]
    # full fine-tuning really holds weights, gradients and both AdamW moments of the UNet at once
    for worker in ("dreambooth", "dreambooth-reference", "captions", "captions-reference"):
        assert results[worker]["peak_rss_mib"] > 4 * UNET_FP32_MIB, worker
    assert results["dreambooth"]["trained_parameters"] == parameters["unet"]
    check_tables(stdout)
    assert f"| UNet2DConditionModel | {parameters['unet']:,} |" in stdout


@pytest.mark.slow
def test_full_size_lora_and_generation_smoke(tmp_path):
    """SD 1.5 at its real size: LoRA's step and generation, the routes a 24 GiB machine can run."""
    available = available_gib()
    if available is None or available < LORA_SMOKE_NEEDS_GIB:
        pytest.skip(f"needs {LORA_SMOKE_NEEDS_GIB} GiB of available memory; MemAvailable: {available}")
    report, stdout = run_smoke("sd15", tmp_path, "--methods", "lora,generate", "--no-reference")
    parameters = report["build"]["parameters"]
    for part, count in SD15.items():
        assert abs(parameters[part] - count) / count < 1e-3, (part, parameters[part])
    results = {run["worker"]: run["result"] for run in report["runs"] if run["skipped"] is None}
    assert sorted(results) == ["generate", "lora"]
    for worker, result in results.items():
        assert "error" not in result and math.isfinite(result["seconds"]) and result["seconds"] > 0, worker
        # the whole fp32 UNet is in memory, and no full-UNet optimiser state
        assert UNET_FP32_MIB < result["peak_rss_mib"] < 4 * UNET_FP32_MIB, worker
    assert 0 < results["lora"]["trained_parameters"] < 0.01 * parameters["unet"]
    assert "| weights | time per image | memory |" in stdout
