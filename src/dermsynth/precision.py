"""One precision vocabulary for every stage: ``auto``, ``no`` (fp32), ``bf16``, ``fp16``; and one place that says
what ``auto`` means on a device.

- bf16 runs as autocast on CUDA and on CPUs; elsewhere (MPS) a bf16 request falls back to ``no``.
- fp16 needs CUDA (and loss scaling: only the Stable Diffusion fine-tune, through accelerate, offers it).
- ``auto`` follows the caller's rule: ``native-bf16`` (bf16 where the device runs it natively: CUDA with bf16,
  CPUs with AVX512-BF16/AMX; the pixel and latent families), ``fp16-on-cuda`` (the diffusers examples' choice for
  fine-tuning Stable Diffusion), or a fixed ``no`` / ``bf16`` (a classifier preset's measured choice).
"""

from __future__ import annotations

from typing import Literal

from dermsynth.errors import DermsynthError

Precision = Literal["no", "bf16", "fp16"]
PRECISIONS = ("auto", "no", "bf16", "fp16")
AUTO_RULES = ("native-bf16", "fp16-on-cuda", "no", "bf16")


def resolve_precision(setting: str, device: str, auto: str = "native-bf16") -> Precision:
    """The precision ``setting`` means on ``device`` (a torch device string: cpu, cuda, cuda:1, mps)."""
    from dermsynth.utils import native_bf16

    if setting not in PRECISIONS:
        raise DermsynthError(f"precision {setting!r}: use one of {', '.join(PRECISIONS)}")
    if auto not in AUTO_RULES:
        raise ValueError(f"unknown auto rule {auto!r}")
    kind = device.split(":")[0]
    if setting == "auto":
        if auto == "native-bf16":
            setting = "bf16" if kind in ("cuda", "cpu") and native_bf16(device) else "no"
        elif auto == "fp16-on-cuda":
            setting = "fp16" if kind == "cuda" else "no"
        else:
            setting = auto
    if setting == "fp16" and kind != "cuda":
        raise DermsynthError("precision fp16 needs a GPU; use bf16 or no on this machine")
    if setting == "bf16" and kind not in ("cuda", "cpu"):
        return "no"
    return setting  # type: ignore[return-value]
