"""A tiny random-weight Stable Diffusion, built locally for tests and benchmarks, and a single-file export.

``build_tiny_pipeline`` stands in for a real base model (no download); ``export_single_file`` writes any pipeline
in the original Stable Diffusion key layout, so the single-file loading path can be tested against it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer


# --------------------------------------------------------------------------- tiny models


def byte_level_clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
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


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
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
