"""`dermsynth run`: the whole study from one YAML, stage by stage, into one run folder.

Each stage writes into its own sub-folder and, when it finishes, a ``.stage.json`` marker holding the hash of
its settings and of its upstream stages' hashes. A rerun skips every stage whose marker matches, and reruns
(resuming, where the stage supports it) every stage whose settings or inputs changed or that was interrupted.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from dermsynth.config import PrepareConfig, StrictModel, read_yaml, validate_config
from dermsynth.errors import DermsynthError
from dermsynth.progress import console
from dermsynth.utils import ensure_writable_dir, stable_hash, write_json_atomic, write_text_atomic

MARKER = ".stage.json"


class RunConfig(StrictModel):
    """One study: every stage's settings in one file. Stages left out are not run."""

    name: str = Field("study", description="A short name for the study, shown in the report.")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig, description="Settings of the prepare stage.")


@dataclass
class Stage:
    name: str
    folder: str
    settings: dict[str, Any]
    upstream: list[str]
    run: Callable[[Path], Any]


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    folder: Path


def load_run_config(path: str | Path) -> RunConfig:
    return validate_config(RunConfig, read_yaml(path), source=str(path))


def build_stages(config: RunConfig) -> list[Stage]:
    from dermsynth.data.prepare import prepare

    prep = config.prepare
    return [
        Stage("prepare", "prepared", prep.model_dump(mode="json"), [],
              lambda folder: prepare(prep, folder, progress=True)),
    ]


def _marker_hash(folder: Path) -> str | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text()).get("hash")
    except json.JSONDecodeError:
        return None


def run_pipeline(config: RunConfig, out: str | Path) -> list[StageOutcome]:
    """Run (or resume) every configured stage into ``out``."""
    out = ensure_writable_dir(out)
    _check_not_inside_inputs(config, out)
    _write_provenance(config, out)
    hashes: dict[str, str] = {}
    outcomes = []
    stages = build_stages(config)
    for index, stage in enumerate(stages, start=1):
        folder = out / stage.folder
        digest = stable_hash({"settings": stage.settings, "upstream": [hashes[u] for u in stage.upstream]})
        hashes[stage.name] = digest
        started = time.time()
        if _marker_hash(folder) == digest:
            console.print(f"[{index}/{len(stages)}] {stage.name}: up to date, skipped")
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0, folder))
            continue
        console.print(f"[{index}/{len(stages)}] {stage.name} ...")
        (folder / MARKER).unlink(missing_ok=True)
        stage.run(folder)
        seconds = time.time() - started
        write_json_atomic(folder / MARKER, {"hash": digest, "finished_utc": _now(), "seconds": round(seconds, 2)})
        console.print(f"[{index}/{len(stages)}] {stage.name}: done in {seconds:.0f} s")
        outcomes.append(StageOutcome(stage.name, "ran", seconds, folder))
    return outcomes


def _check_not_inside_inputs(config: RunConfig, out: Path) -> None:
    root = config.prepare.root
    if root is not None:
        root, target = root.resolve(), out.resolve()
        if target == root or root in target.parents:
            raise DermsynthError(f"prepare.root: the run folder {out} is inside the dataset folder {root}")
    if root is not None and not root.exists():
        raise DermsynthError(f"prepare.root: folder not found: {root}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_provenance(config: RunConfig, out: Path) -> None:
    from importlib.metadata import PackageNotFoundError, version

    write_text_atomic(out / "config.resolved.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("dermsynth", "torch", "diffusers", "transformers", "accelerate", "peft", "numpy", "pandas",
                    "scikit-learn", "opencv-python-headless", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    write_json_atomic(out / "versions.json", versions)


def demo_config() -> RunConfig:
    """The demo study: the embedded CC0 sample with CPU-sized settings."""
    from importlib import resources

    path = Path(str(resources.files("dermsynth") / "configs" / "demo.yaml"))
    return load_run_config(path)
