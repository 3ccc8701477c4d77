"""`dermsynth train`'s presets, by the family that trains them: the core's one entry to training from scratch.

A training family is a package with ``config`` (``PRESETS``, ``resolve(preset, settings)``) and ``train``
(``train(data, out, preset, config, **options)``). The core knows it by name only and imports it when a preset of
it is used, as ``families`` loads model folders.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dermsynth.config import read_yaml
from dermsynth.errors import DermsynthError

# Family package by name, in the order `--help` lists their presets.
TRAINING_FAMILIES = {"scratch": "dermsynth.diffusion.scratch", "cascade": "dermsynth.diffusion.cascade"}
DEFAULT_PRESET = "cpu-fast"


def _module(family: str, part: str) -> Any:
    return importlib.import_module(f"{TRAINING_FAMILIES[family]}.{part}")


def presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every preset of `dermsynth train`: name -> (family, the preset's settings)."""
    return {name: (family, preset) for family in TRAINING_FAMILIES
            for name, preset in _module(family, "config").PRESETS.items()}


def family_of(preset: str | None, config: str | Path | dict[str, Any] | BaseModel | None) -> tuple[str, str]:
    """(family, preset) of a run: ``preset``, else the config's ``preset:`` key, else cpu-fast."""
    named = None
    if isinstance(config, dict):
        named = config.get("preset")
    elif isinstance(config, str | Path):
        named = read_yaml(config).get("preset")
    chosen = preset or named or DEFAULT_PRESET
    known = presets()
    if chosen not in known:
        raise DermsynthError(f"unknown preset {chosen!r}; choose one of {', '.join(known)}")
    return known[chosen][0], chosen


def resolve_config(preset: str | None, config: str | Path | dict[str, Any] | None = None) -> BaseModel:
    """The validated training config of a preset and settings, whichever family trains it."""
    family, chosen = family_of(preset, config)
    return _module(family, "config").resolve(chosen, config)


def train(data: str | Path, out: str | Path, preset: str | None = None,
          config: str | Path | dict[str, Any] | BaseModel | None = None, **options: Any) -> Any:
    """Train the model of ``preset`` (or the config's ``preset:`` key) with its family's trainer; ``options`` are
    `dermsynth train`'s (max_steps, max_minutes, seed, device, real_per_class, resume, progress, callback)."""
    family, chosen = family_of(preset, config)
    return _module(family, "train").train(data, out, chosen, config, **options)


def describe(name: str) -> str:
    """A preset in a few words for `--help`: its size, stages and step budgets."""
    family, preset = presets()[name]
    return _module(family, "config").describe_preset(name, preset)


def presets_help() -> str:
    return "One of: " + ", ".join(describe(name) for name in presets()) + "."


def config_model(preset: str) -> type[BaseModel]:
    """The pydantic model of a preset's training config (old setting names are read against it)."""
    family = presets()[preset][0]
    return _module(family, "config").CONFIG_MODEL


def size_and_budget(preset: str | None, config: str | Path | dict[str, Any] | None = None) -> tuple[int, str]:
    """The side of the images a run makes and its step budget in words (for plans and summaries)."""
    family, chosen = family_of(preset, config)
    return _module(family, "config").size_and_budget(resolve_config(chosen, config))
