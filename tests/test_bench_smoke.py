"""Benchmarks stay alive: every bench/*.py script runs its --smoke mode (tiny stand-in inputs) as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
OWN_TESTS = {"bench_sd_full_size.py"}  # both of its smoke modes: tests/test_bench_sd_full_size.py
# Arguments before --smoke, per script (subcommands); every other script takes --smoke alone.
RUNS = {
    "ab_recipe.py": [[]],
    "bench_classifier.py": [["throughput"], ["sweep"]],
}
BROWSER = Path("/usr/bin/chromium").exists() or bool(os.environ.get("DERMSYNTH_REQUIRE_BROWSER"))


def smoke_runs() -> list:
    runs = []
    for script in sorted(p.name for p in BENCH.glob("*.py") if p.name not in OWN_TESTS):
        for args in RUNS.get(script, [[]]):
            marks = [pytest.mark.skipif(not BROWSER, reason="needs /usr/bin/chromium")] \
                if script == "check_report_render.py" else []
            runs.append(pytest.param(script, args, id=" ".join([script, *args]), marks=marks))
    return runs


@pytest.mark.parametrize(("script", "args"), smoke_runs())
def test_benchmark_smoke_mode_runs(script, args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}  # the scripts' temporary folders too
    command = [sys.executable, str(BENCH / script), *args, "--smoke"]
    if script == "ab_recipe.py":
        command += ["--out", str(tmp_path / "ab"), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-1500:], done.stderr[-2500:])
    if script == "ab_recipe.py":
        results = (tmp_path / "ab" / "results.csv").read_text()
        assert results.startswith("variant,steps") and "c2st_benign" in results and "lesion_found_benign" in results


def test_every_benchmark_is_run_in_its_smoke_mode():
    """Every script in bench/ is a benchmark that some test runs with --smoke (above, or its own test module): a
    new benchmark cannot land without a smoke run. Their shared stand-in inputs are in dermsynth.testing."""
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert {param.values[0] for param in smoke_runs()} | OWN_TESTS == scripts
    tests = Path(__file__).resolve().parent
    for script in OWN_TESTS:
        own = tests / f"test_{script.removesuffix('.py')}.py"
        assert script in own.read_text() and '"--smoke"' in own.read_text(), own.name


@pytest.mark.skipif(not BROWSER, reason="needs /usr/bin/chromium")
def test_report_render_check_survives_a_deep_temp_folder(tmp_path, monkeypatch):
    # Chromium aborts when its singleton socket under $TMPDIR passes the 107-byte Unix socket limit; the check
    # must give it a short private folder whatever the caller's TMPDIR (pytest's own can be that deep).
    from dermsynth.report.build import build_report
    from dermsynth.testing.smoke_data import sample_prepared

    sample_prepared(tmp_path / "run" / "prepared")
    report = build_report(tmp_path / "run")[0]
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    done = subprocess.run([sys.executable, str(BENCH / "check_report_render.py"), str(report)], capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(deep)}, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-1500:]
