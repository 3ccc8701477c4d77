"""generate and validate across processes (torchrun, 2 CPU processes) and job-array shards: the same results as one
process, one manifest, nothing lost or duplicated after a killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermsynth.diffusion.scratch.train import train
from dermsynth.distributed import JobShard, ProcessShare, current_share, parse_shard
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.validate import validate
from dermsynth.testing.studies import TINY_STUDY
from tests.test_diffusion_scratch import TINY, make_prepared
from tests.test_validate import config as validate_settings
from tests.test_validate import make_prep, make_synthetic

# One thread per process in every run (--threads 1, and threads: 1 in the validate configs), so that a thread
# count cannot be what differs.
FAST = ["--steps", "3", "--scheduler", "ddim", "--threads", "1"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    prepared = make_prepared(tmp_path_factory.mktemp("prep"))
    out = tmp_path_factory.mktemp("model") / "m"
    train(prepared, out, config=TINY, progress=False)
    return out


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": _pythonpath()}


def _pythonpath() -> str:
    repo = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])


def dermsynth(*args: object, processes: int = 1, **popen) -> subprocess.Popen:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    return subprocess.Popen([*launcher, "-m", "dermsynth", *map(str, args)], env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*/*.png"))}


def assert_same_images(a: Path, b: Path, count: int) -> None:
    first, second = pixels(a), pixels(b)
    assert first.keys() == second.keys() and len(first) == count
    assert all(np.array_equal(first[k], second[k]) for k in first), "pixels differ"
    manifest = pd.read_csv(b / "manifest.csv")
    assert len(manifest) == count and manifest["image_id"].is_unique
    assert sorted(manifest["image_id"]) == sorted(second)
    columns = ["image_id", "path", "label", "seed", "steps", "model_sha256"]
    pd.testing.assert_frame_equal(pd.read_csv(a / "manifest.csv")[columns], manifest[columns])


def test_sharded_generate_is_pixel_identical_with_one_manifest(model, tmp_path):
    single, sharded = tmp_path / "one", tmp_path / "two"
    common = ["generate", "--model", model, "--per-class", 5, "--batch-size", 2, *FAST, "--quiet"]
    finish(dermsynth(*common, "--out", single))
    output = finish(dermsynth(*common, "--out", sharded, processes=2))
    assert output.count("images (0 rejected by QC)") == 1  # only the main process reports
    assert_same_images(single, sharded, 10)
    split = json.loads((sharded / "generate.json").read_text())["processes"]
    assert split["world_size"] == 2
    made = [{(label, i) for label, start, end in rank["indices"] for i in range(start, end + 1)}
            for rank in split["ranks"]]
    assert made[0] and made[1] and not made[0] & made[1]
    assert made[0] | made[1] == {(label, i) for label in ("benign", "malignant") for i in range(5)}
    assert json.loads((single / "generate.json").read_text())["processes"]["world_size"] == 1


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes."""
    import psutil

    workers = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "dermsynth" in " ".join(child.cmdline()):
            workers[int(rank)] = child.pid
    return workers


def test_killed_process_then_rerun_loses_and_duplicates_nothing(model, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "syn"
    common = ["generate", "--model", model, "--per-class", 12, "--batch-size", 1, "--steps", "8", "--scheduler",
              "ddim", "--threads", "1", "--quiet"]
    finish(dermsynth(*common, "--out", reference))
    launcher = dermsynth(*common, "--out", out, processes=2)
    deadline = time.monotonic() + 120
    while len(list(out.glob("images/*/*.png"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = _worker_pids(launcher.pid)
    assert 1 in workers and launcher.poll() is None, "the run finished before it could be killed"
    os.kill(workers[1], signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert len(list(out.glob("images/*/*.png"))) < 24, "nothing was left to resume"
    finish(dermsynth(*common, "--out", out, processes=2))
    assert_same_images(reference, out, 24)
    assert not list(out.rglob(".*.tmp*"))


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Path:
    return make_prep(tmp_path_factory.mktemp("ham-dist"))


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn-dist") / "syn")


def _config_file(tmp_path: Path, prep: Path, syn: Path, **settings) -> Path:
    data = validate_settings(prep, syn, regimes=["real", "hybrid:0.5", "augment:0.5"], seeds=2, **settings)
    path = tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    return path


def _summary(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "validation" / "summary.csv")


def test_distributed_validate_gives_the_single_process_summary(prep, syn, tmp_path):
    settings = _config_file(tmp_path, prep, syn)
    single = finish(dermsynth("validate", "--config", settings, "--out", tmp_path / "one", "--quiet"))
    output = finish(dermsynth("validate", "--config", settings, "--out", tmp_path / "two", "--quiet", processes=2))
    assert output.count("6 run(s) trained") == 1  # the summary is printed once, by the main process
    assert output.count("| regime |") == single.count("| regime |") > 0
    pd.testing.assert_frame_equal(_summary(tmp_path / "one"), _summary(tmp_path / "two"))
    record = json.loads((tmp_path / "two" / "validation" / "validate.json").read_text())
    assert record["processes"]["world_size"] == 2 and record["missing_runs"] == []
    assert len(record["ran"]) == 6
    rerun = finish(dermsynth("validate", "--config", settings, "--out", tmp_path / "two", "--quiet", processes=2))
    assert rerun.count("0 run(s) trained, 6 already done") == 1
    assert len(json.loads((tmp_path / "two" / "validation" / "validate.json").read_text())["skipped"]) == 6


def test_job_array_shards_list_missing_runs_until_all_have_run(prep, syn, tmp_path):
    settings = validate_settings(prep, syn, regimes=["real", "hybrid:0.5"], seeds=2)
    first = validate(settings | {"shard": "1/2"}, tmp_path / "v", progress=False)
    summary = json.loads((first.out / "summary.json").read_text())
    assert len(first.ran) == 2 and len(summary["missing_runs"]) == 2
    assert "Incomplete: 2 run(s)" in (first.out / "summary.md").read_text()
    second = validate(settings | {"shard": "2/2"}, tmp_path / "v", progress=False)
    assert len(second.ran) == 2 and not set(first.ran) & set(second.ran)
    assert json.loads((second.out / "summary.json").read_text())["missing_runs"] == []
    validate(settings, tmp_path / "whole", progress=False)
    pd.testing.assert_frame_equal(_summary(tmp_path / "v"), _summary(tmp_path / "whole"))
    assert len(validate(settings, tmp_path / "v", progress=False).skipped) == 4  # a plain rerun finds all


def test_shares_are_disjoint_and_cover_everything():
    items = list(range(11))
    ranks = [ProcessShare(rank, 3).mine(items) for rank in range(3)]
    assert sorted(i for rank in ranks for i in rank) == items and ranks[1] == [1, 4, 7, 10]
    shards = [JobShard(k, 4).take(items) for k in range(1, 5)]
    assert sorted(i for shard in shards for i in shard) == items and shards[0] == [0, 4, 8]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "2/0"])
def test_bad_shard_is_a_one_line_error(text, cli, prep, tmp_path):
    with pytest.raises(DermsynthError, match="K/N"):
        parse_shard(text)
    code, _, err = cli("validate", "--real", prep, "--out", tmp_path / "v", "--shard", text)
    assert code == 2 and "K/N" in err and len(err.strip().splitlines()) == 1


def test_whole_study_under_torchrun(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "run"
    output = finish(dermsynth("run", config, "--out", out, processes=2), timeout=900)
    assert output.count("ran prepare, train, generate, audit, validate") == 1
    for stage in ("prepared", "model", "synthetic", "audit", "validation"):
        assert (out / stage / ".stage.json").is_file(), stage
    assert json.loads((out / "synthetic" / "generate.json").read_text())["processes"]["world_size"] == 2
    assert len(pd.read_csv(out / "synthetic" / "manifest.csv")) == 80
    validation = json.loads((out / "validation" / "validate.json").read_text())
    assert validation["processes"]["world_size"] == 2 and len(validation["ran"]) == 4
    assert (out / "report.html").is_file()
    rerun = finish(dermsynth("run", config, "--out", out, processes=2), timeout=600)
    assert rerun.count("ran nothing") == 1


def test_mpi_processes_without_world_size_are_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.raises(DermsynthError, match="torchrun"):
        current_share()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert not current_share().distributed


def test_a_study_takes_no_validate_shard(cli, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(TINY_STUDY.replace("  seeds: 2\n", "  seeds: 2\n  shard: 1/2\n"))
    code, _, err = cli("run", config, "--out", tmp_path / "run")
    assert code == 2 and "validate --shard" in err and len(err.strip().splitlines()) == 1
