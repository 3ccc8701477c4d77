"""Stable Diffusion models: loading a base (local folder, single file, hub id).

A base model is one of:

* a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ...);
* a single-file checkpoint (``.safetensors``; ``.ckpt``/``.pt`` pickles only with ``trust_pickle``) in the original
  Stable Diffusion layout. diffusers needs the matching diffusers configs to build it: ``config`` names a local
  diffusers folder of the same architecture, else they come from the hub (so offline, ``config`` is required);
* a hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (the mirror of the removed
  ``runwayml/stable-diffusion-v1-5``), fetched only because it was named explicitly.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from dermsynth.diffusion.sd.config import PICKLE_SUFFIXES
from dermsynth.errors import DermsynthError
from dermsynth.progress import quiet_hf_libraries
from dermsynth.utils import hub_access

SINGLE_FILE_SUFFIXES = {".safetensors"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------- loading a base model


def describe_base(base: str | Path) -> str:
    """'folder', 'single-file' or 'hub' (raises a one-line error when ``base`` is none of them)."""
    path = Path(base)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise DermsynthError(f"base model {path} is not a diffusers folder (no model_index.json)")
        return "folder"
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES | PICKLE_SUFFIXES:
            return "single-file"
        raise DermsynthError(f"base model {path}: not a diffusers folder or a .safetensors/.ckpt checkpoint")
    if HUB_ID.match(str(base)) and not str(base).startswith((".", "/")) and not path.suffix:
        return "hub"
    raise DermsynthError(f"base model not found: {base} (a diffusers folder, a .safetensors file or a hub id)")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def base_sha256(base: str | Path) -> str | None:
    """sha256 of a local base model's weights, for provenance: the file itself for a single file; for a diffusers
    folder, the sha256 of the sorted list of (relative path, sha256) of every weight file. None for a hub id (its
    files live in the hub cache, named by revision)."""
    from dermsynth.utils import sha256_file

    path = Path(base)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    listing = "\n".join(f"{f.relative_to(path).as_posix()} {sha256_file(f)}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def load_pipeline(base: str | Path, *, config: str | Path | None = None, trust_pickle: bool = False,
                  dtype: torch.dtype = torch.float32):
    """A ``StableDiffusionPipeline`` on the CPU, with the NSFW checker off (it blacks out images of bare skin)."""
    kind = describe_base(base)
    common = {"safety_checker": None, "requires_safety_checker": False, "dtype": dtype}
    with quiet_hf_libraries():
        pipe = _load(base, kind, config, trust_pickle, common)
    check_tokenizer(pipe.tokenizer, base)
    return pipe


def _load(base: str | Path, kind: str, config: str | Path | None, trust_pickle: bool, common: dict[str, Any]):
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        if kind == "single-file":
            pipe = _load_single_file(Path(base), config, trust_pickle, common)
        elif kind == "hub":
            pipe = _from_hub(str(base), common)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(str(base), **common)
    except DermsynthError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DermsynthError(f"cannot load base model {base}: {first}") from None
    return pipe


def _from_hub(repo_id: str, common: dict[str, Any]):
    """The local hub cache first; the network only when the files are not there."""
    from diffusers import StableDiffusionPipeline

    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, local_files_only=True, **common)
    except OSError:
        with hub_access(True):
            return StableDiffusionPipeline.from_pretrained(repo_id, **common)


def _load_single_file(path: Path, config: str | Path | None, trust_pickle: bool, common: dict[str, Any]):
    from diffusers import StableDiffusionPipeline

    if path.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
        raise DermsynthError(f"{path} is a pickle checkpoint, which can run arbitrary code when loaded; "
                             "convert it to .safetensors, or pass --trust-pickle if you trust its source")
    # One rule for the CLI and the API: nothing is fetched unless a hub id is named. A single file holds weights
    # only; its components' configs and the tokenizer's vocabulary come from base_config.
    if config is None:
        raise DermsynthError(f"{path}: a single-file checkpoint needs the configs of its architecture and its "
                             "tokenizer; give base_config (--base-config DIR), a local diffusers folder of the same "
                             "model (or name its hub id there, fetched once)")
    if describe_base(config) == "hub":
        try:
            return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                            **common)
        except OSError:
            with hub_access(True):
                return StableDiffusionPipeline.from_single_file(str(path), config=str(config), **common)
    return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True, **common)


def check_tokenizer(tokenizer: Any, source: str | Path) -> None:
    # A failed hub download can leave a tokenizer that only knows its special tokens.
    if tokenizer is None or len(tokenizer) <= 2:
        raise DermsynthError(f"{source}: the tokenizer is empty or missing")
