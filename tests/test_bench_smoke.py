"""Benchmarks that the fidelity work relies on keep running: each one's --smoke mode, as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", ["ab_recipe.py", "compare_grids.py", "bench_diffusion.py"])
def test_benchmark_smoke_mode_runs(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(BENCH / script), "--smoke"]
    if script == "ab_recipe.py":
        args += ["--out", str(tmp_path / "ab"), "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    if script == "ab_recipe.py":
        results = (tmp_path / "ab" / "results.csv").read_text()
        assert results.startswith("variant,steps") and "c2st_benign" in results and "lesion_found_benign" in results
