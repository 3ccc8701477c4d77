"""Configuration models, loaded from YAML and validated with pydantic.

Every field carries a description; unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from dermsynth.errors import DermsynthError
from dermsynth.progress import console

# One vocabulary in every stage: seed, device, threads, precision, max_steps, max_grad_norm, snr_gamma, learning_rate.
# precision: auto (the stage's measured choice for the device), no (fp32), bf16 or fp16 autocast; a stage that
# cannot run one of them leaves it out of its Literal.
Precision = Literal["auto", "no", "bf16", "fp16"]
# A trainer's threads: a count, None (fixed at torch's count: all cores, or this process's share under a launcher), or
# "adaptive" (diffusion/threads.py: faster on a busy machine, but the weights then depend on step timings).
def _thread_setting(value: Any) -> Any:
    if value is None or value == "adaptive" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"threads must be a number >= 1, null (all cores, fixed) or 'adaptive', not {value!r}")


ThreadSetting = Annotated[int | Literal["adaptive"] | None, BeforeValidator(_thread_setting)]
THREADS_HELP = ("CPU threads for training: a number, null = all cores, fixed so that the same command gives the same "
                "weights; or adaptive = switch between 1 and all cores by measured step time (up to 10x faster on a "
                "busy machine, but not bitwise reproducible).")
# Old values of shared fields, read (with a notice) until the next release.
OLD_VALUES: dict[str, dict[str, str]] = {"precision": {"fp32": "no"}}

_quiet_renames: ContextVar[bool] = ContextVar("quiet_renames", default=False)


@contextlib.contextmanager
def quiet_renames() -> Iterator[None]:
    """Validate configs that dermsynth saved itself (checkpoints, model JSONs): old names pass without a notice."""
    token = _quiet_renames.set(True)
    try:
        yield
    finally:
        _quiet_renames.reset(token)


def deprecation_notice(old: str, new: str, what: str = "name") -> None:
    """One stderr line saying that ``old`` is read as ``new`` for one more release."""
    if not _quiet_renames.get():
        console.print(f"deprecated: {old} is now {new} (the old {what} is read until the next release)",
                      soft_wrap=True, markup=False, highlight=False)


def current_names(model: type[BaseModel], data: Any, nested: bool = True) -> Any:
    """``data`` with the old field names (``model._renamed``, nested models too) and old values (OLD_VALUES)
    replaced by the current ones, one notice each. A setting given under both names is left for validation to
    refuse. Callers that merge overrides into a user's YAML call this first, so that the override wins."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    data = dict(data)
    for old, new in getattr(model, "_renamed", {}).items():
        if old in data and new not in data:
            data[new] = data.pop(old)
            deprecation_notice(repr(old), repr(new))
    for name, values in OLD_VALUES.items():
        value = data.get(name)
        if name in fields and isinstance(value, str) and value in values:
            data[name] = values[value]
            deprecation_notice(f"{name} {value!r}", repr(values[value]), "value")
    for name, field in fields.items() if nested else ():
        inner, key = _model_in(field.annotation), field.alias or name
        if inner is not None and isinstance(data.get(key), dict):
            data[key] = current_names(inner, data[key])
    return data


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of a field typed ``Model`` or ``Model | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Renamed fields, {"old": "new"}: the old name is read, with a notice, until the next release.
    _renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _read_old_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in cls._renamed.items():
                if old in data and new in data:
                    raise PydanticCustomError(
                        "renamed_twice", "{old} is the old name of {new}: give only {new}", {"old": old, "new": new})
        return current_names(cls, data, nested=False)  # nested models read theirs when they are validated


Model = TypeVar("Model", bound=BaseModel)


def format_validation_error(exc: ValidationError, prefix: str = "", as_option: bool = False) -> str:
    """One line naming the first offending key, e.g. ``preprocess.image_size: Input should be ...``; with
    ``as_option``, as the CLI spells it (``--batch-size: ...``)."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if as_option and err["loc"]:
        key = "--" + key.replace("_", "-")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if err["type"] == "value_error":  # a validator's own sentence; pydantic's label adds nothing
        msg = msg.removeprefix("Value error, ")
    return f"{prefix}{key}: {msg}"


def validate_config(model: type[Model], data: dict[str, Any], source: str = "config") -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DermsynthError(format_validation_error(exc, prefix=f"{source}: ")) from None


def default_of(model: type[BaseModel], dotted: str, unit: str = "") -> str:
    """``(default: X)`` for a ``--help`` text, read from the settings model's field (nested: ``a.b``), so that
    a help text cannot drift from the default it names; booleans read on/off."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        model = model.model_fields[name].annotation  # type: ignore[assignment]
    field = model.model_fields[leaf]
    value = field.get_default(call_default_factory=True)
    text = "on" if value is True else "off" if value is False else str(value)
    return f"(default: {text}{unit})"


def stage_config(model: type[Model], yaml_path: str | Path | None, overrides: dict[str, Any] | None = None,
                 required: dict[str, str] | None = None) -> Model:
    """The one path from a YAML file and command-line options to a stage's settings, for every command.

    The YAML's old field names are read with one deprecation line each (:func:`current_names`); then each given
    override (``{"dotted.name": value}``, None = not given) replaces the YAML's value, so an option always wins;
    ``required`` names fields that must be set by one or the other, with the message to give when neither does.
    """
    data = current_names(model, read_yaml(yaml_path)) if yaml_path else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            child = node.get(key)
            node[key] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[leaf] = value
    for name, message in (required or {}).items():
        if data.get(name) is None:
            raise DermsynthError(message)
    return validate_config(model, data, source=str(yaml_path) if yaml_path else "options")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DermsynthError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise DermsynthError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DermsynthError(f"{path}: expected a mapping of settings at the top level")
    return data
