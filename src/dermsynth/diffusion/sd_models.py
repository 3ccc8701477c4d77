"""Stable Diffusion models: loading a base (local folder, single file, hub id), tiny test models, single-file export.

A base model is one of:

* a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ...);
* a single-file checkpoint (``.safetensors``; ``.ckpt``/``.pt`` pickles only with ``trust_pickle``) in the original
  Stable Diffusion layout. diffusers needs the matching diffusers configs to build it: ``config`` names a local
  diffusers folder of the same architecture, else they come from the hub (so offline, ``config`` is required);
* a hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (the mirror of the removed
  ``runwayml/stable-diffusion-v1-5``), fetched only because it was named explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dermsynth.errors import DermsynthError
from dermsynth.utils import hub_access

SINGLE_FILE_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
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
    with quiet_loading():
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


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading pipeline components" / "Loading weights" bars and no diffusers warnings on stderr while loading
    (e.g. "no LoRA keys for CLIPTextModel", expected for a UNet-only adapter); errors still raise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(module, module.is_progress_bar_enabled()) for module in (diffusers_logging, transformers_logging)]
    level = diffusers_logging.get_verbosity()
    for module, _ in states:
        module.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        for module, enabled in states:
            if enabled:
                module.enable_progress_bar()


def _load_single_file(path: Path, config: str | Path | None, trust_pickle: bool, common: dict[str, Any]):
    from diffusers import StableDiffusionPipeline

    if path.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
        raise DermsynthError(f"{path} is a pickle checkpoint, which can run arbitrary code when loaded; "
                             "convert it to .safetensors, or pass --trust-pickle if you trust its source")
    if config is not None:
        describe_base(config)  # must be a local diffusers folder
        return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                        **common)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DermsynthError(f"{path}: a single-file checkpoint needs the configs of its architecture; offline, "
                             "give base_config (--base-config DIR), a local diffusers folder of the same model")
    return StableDiffusionPipeline.from_single_file(str(path), **common)


def check_tokenizer(tokenizer: Any, source: str | Path) -> None:
    # A failed hub download can leave a tokenizer that only knows its special tokens.
    if tokenizer is None or len(tokenizer) <= 2:
        raise DermsynthError(f"{source}: the tokenizer is empty or missing")


# --------------------------------------------------------------------------- tiny models (tests, benchmarks)


def byte_level_clip_tokenizer(max_length: int = 77):
    """A CLIP tokenizer made locally: every byte as a symbol (with and without ``</w>``), a few merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    merges = [("s", "k"), ("sk", "s</w>"), ("l", "e"), ("le", "s")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_tiny_pipeline(seed: int = 0):
    """A Stable Diffusion pipeline with random weights: UNet ~1 M parameters, VAE with 8x downsampling (so 64 px
    images are 8x8 latents), a 5-layer CLIP text encoder of width 32."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# --------------------------------------------------------------------------- single-file export


def export_single_file(pipe: Any, path: str | Path) -> Path:
    """Write ``pipe``'s UNet, VAE and text encoder as one ``.safetensors`` in the original Stable Diffusion key
    layout (what other tools exchange, and what ``from_single_file`` reads)."""
    from safetensors.torch import save_file

    layers = int(pipe.unet.config.layers_per_block)
    with_attention = ["CrossAttn" in name for name in pipe.unet.config.up_block_types]
    state: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        state["model.diffusion_model." + _ldm_unet_key(key, layers, with_attention)] = value
    vae_blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        ldm_key = _ldm_vae_key(key, vae_blocks)
        if ".mid.attn_1." in ldm_key and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        state["first_stage_model." + ldm_key] = value
    for key, value in pipe.text_encoder.state_dict().items():
        inner = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + inner] = value
    path = Path(path)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path


_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _ldm_unet_key(key: str, layers: int, up_attention: list[bool]) -> str:
    """diffusers UNet2DConditionModel key -> original (LDM) key."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    patterns = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"input_blocks.{(layers + 1) * i + j + 1}.0."),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"input_blocks.{(layers + 1) * i + j + 1}.1."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda i: f"input_blocks.{(layers + 1) * (i + 1)}.0.op."),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"output_blocks.{(layers + 1) * i + j}.0."),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"output_blocks.{(layers + 1) * i + j}.1."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda i: f"output_blocks.{(layers + 1) * i + layers}."
                                                          f"{2 if up_attention[i] else 1}."),
        (r"mid_block\.resnets\.(\d+)\.", lambda j: f"middle_block.{2 * j}."),
        (r"mid_block\.attentions\.0\.", lambda: "middle_block.1."),
    ]
    for pattern, make in patterns:
        match = re.match(pattern, key)
        if match:
            rest = key[match.end():]
            if "resnets" in pattern:
                rest = _rename_prefix(rest, _RESNET)
            return make(*map(int, match.groups())) + rest
    raise ValueError(f"no original-layout name for UNet weight {key}")


def _rename_prefix(rest: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _ldm_vae_key(key: str, blocks: int) -> str:
    """diffusers AutoencoderKL key -> original (LDM) key (decoder blocks are numbered from the bottom there)."""
    attention = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
    patterns = [
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda part, j: f"{part}.mid.block_{int(j) + 1}.", []),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.", lambda part: f"{part}.mid.attn_1.", attention),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"encoder.down.{i}.block.{j}.", []),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda i: f"encoder.down.{i}.downsample.", []),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
         lambda i, j: f"decoder.up.{blocks - 1 - int(i)}.block.{j}.", []),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda i: f"decoder.up.{blocks - 1 - int(i)}.upsample.", []),
        (r"(encoder|decoder)\.conv_norm_out\.", lambda part: f"{part}.norm_out.", []),
    ]
    for pattern, make, inner in patterns:
        match = re.match(pattern, key)
        if match:
            rest = _rename_prefix(key[match.end():], [*inner, ("conv_shortcut", "nin_shortcut")])
            return make(*match.groups()) + rest
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
