"""Small shared helpers: atomic writes, hashing, seeding, device choice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dermsynth.errors import DermsynthError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or kill mid-write leaves the old file (or nothing), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_pretrained_atomic(component: Any, folder: str | Path) -> None:
    """``component.save_pretrained`` into a hidden folder renamed onto ``folder``: complete or absent."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    component.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(path: str | Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# Reading back what a stage wrote: a truncated, hand-edited or half-copied file becomes one line naming the file and
# what to do (``remedy``), never a traceback.


def read_json(path: str | Path, remedy: str, expect: type = dict) -> Any:
    """The JSON in ``path``, which must be an ``expect`` (dict by default)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DermsynthError(f"{path} is damaged ({_reason(exc)}); {remedy}") from None
    if not isinstance(data, expect):
        raise DermsynthError(f"{path} is damaged (a JSON {type(data).__name__}, not a {expect.__name__}); {remedy}")
    return data


def read_csv(path: str | Path, remedy: str, columns: list[str] | tuple[str, ...] = (), **kwargs: Any):
    """The table in ``path`` (pandas), which must hold ``columns``."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, **kwargs)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DermsynthError(f"{path} is damaged ({_reason(exc)}); {remedy}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DermsynthError(f"{path}: missing column(s) {', '.join(missing)}; {remedy}")
    return frame


def read_marker(path: str | Path) -> dict[str, Any]:
    """A done-marker's fields; empty when it is missing or damaged (the work it marks is then redone)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def marker_hash(path: str | Path) -> str | None:
    """The ``hash`` a done-marker records; None when it is missing or damaged."""
    return read_marker(path).get("hash")


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def stable_hash(data: Any) -> str:
    """A short, order-stable hash of JSON-able settings (used to decide whether a cache is still valid)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def relative_path(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder``, POSIX-style: artifacts that are shared name no machine path."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise DermsynthError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


def native_bf16(device: str) -> bool:
    """Whether ``device`` runs bf16 natively (CUDA with bf16; CPUs with AVX512-BF16/AMX, where bf16 autocast is
    ~1.5x faster; on other CPUs it would be slower)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    return kind == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()


def pick_device(preferred: str | None = None) -> str:
    """CUDA, then MPS, then CPU, unless ``preferred`` names one."""
    import torch

    if preferred and preferred != "auto":
        if preferred.startswith("cuda") and not torch.cuda.is_available():
            raise DermsynthError(f"device {preferred!r} requested but CUDA is not available")
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (None: unchanged) for the block, then restored."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def hub_access(allowed: bool) -> Iterator[None]:
    """Lift offline mode (the environment variable and huggingface_hub's flag) for the duration of a load the
    user explicitly pointed at the hub; both are restored afterwards, so later loads stay offline."""
    if not allowed:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "0"
    hub_constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
