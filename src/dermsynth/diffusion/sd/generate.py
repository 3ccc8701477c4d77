"""`generate` for Stable Diffusion model folders: text-to-image, image-to-image variations and inpainting.

Families: "stable-diffusion" (a full pipeline saved by `finetune`) and "stable-diffusion-lora" (LoRA weights
loaded onto the base model recorded in ``dermsynth_model.json``). Every image has its own ``torch.Generator``,
so it depends on its seed, not on its batch. The NSFW checker stays off (it blacks out images of bare skin);
blank images are caught by generate's QC instead.

Image-to-image starts from a real image noised to ``strength`` (0: the image itself, 1: pure noise). Inpainting
regenerates a masked region (by default the segmented lesion) and pastes the original pixels back outside the
mask, so the skin around it is exactly the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dermsynth.data.images import ImageReadError, list_images
from dermsynth.diffusion.families import GeneratorBase
from dermsynth.diffusion.schedulers import make_scheduler
from dermsynth.errors import DermsynthError
from dermsynth.progress import quiet_hf_libraries
from dermsynth.utils import pick_device, sha256_file


def pipeline_images(pipe: Any, prompts: list[str], seeds: list[int], *, steps: int, scheduler: str,
                    guidance_scale: float, negative_prompt: str | list[str] = "", size: int | None = None,
                    **extra: Any) -> np.ndarray:
    """Run a diffusers SD pipeline (text-to-image, img2img or inpaint) with one generator per image and one
    negative prompt for all or per image; returns float32 (N, H, W, 3) in [0, 1]."""
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    negatives = negatives if any(negatives) else None
    if size is not None:
        extra |= {"height": size, "width": size}
    with torch.no_grad():
        result = pipe(prompt=prompts, negative_prompt=negatives, num_inference_steps=steps,
                      guidance_scale=guidance_scale, generator=generators, output_type="np", **extra)
    return np.asarray(result.images, dtype=np.float32)


@dataclass
class ImageSource:
    """Real images to start from, per class, with optional inpainting masks."""

    images: dict[str, list[Path]]
    strength: float = 0.6
    mask_from: str | None = None  # None (img2img), "lesion", or a folder of masks named like the images

    def pick(self, label: str, index: int) -> Path:
        paths = self.images.get(label) or []
        if not paths:
            raise DermsynthError(f"no init images for class {label}")
        return paths[index % len(paths)]


def image_source(init_images: str | Path, classes: list[str], strength: float, mask_from: str | None
                 ) -> ImageSource:
    """``init_images`` is a prepared dataset (its train split) or a folder of class sub-folders."""
    root = Path(init_images)
    if not 0.0 < strength <= 1.0:
        raise DermsynthError(f"--strength must be in (0, 1] (got {strength})")
    if mask_from not in (None, "lesion") and not Path(mask_from).is_dir():
        raise DermsynthError(f"--mask-from must be 'lesion' or a folder of masks (not found: {mask_from})")
    if (root / "metadata.csv").is_file():
        from dermsynth.data.dataset import load_prepared

        dataset = load_prepared(root)
        frame = dataset.split("train")
        images = {c: dataset.paths(frame[frame["label"] == c]) for c in classes}
    elif root.is_dir():
        images = {c: list_images(root / c) if (root / c).is_dir() else [] for c in classes}
    else:
        raise DermsynthError(f"init images not found: {root} (a prepared dataset or a folder of class folders)")
    if not any(images.values()):
        raise DermsynthError(f"{root}: no init images for class(es) {', '.join(classes)}")
    return ImageSource(images, strength, mask_from)


def metadata_prompts(prepared: str | Path, classes: list[str]) -> dict[str, list[str]]:
    """Per class, the prompts of a prepared dataset's train split (by image id), to be used in turn."""
    from dermsynth.data.dataset import load_prepared

    frame = load_prepared(prepared).split("train").sort_values("image_id")
    prompts = {c: [p for p in frame.loc[frame["label"] == c, "prompt"].fillna("").astype(str) if p.strip()]
               for c in classes}
    if not any(prompts.values()):
        raise DermsynthError(f"{prepared}: no prompts in the train split for class(es) {', '.join(classes)}")
    return {c: p for c, p in prompts.items() if p}


def _square(path: Path, size: int) -> np.ndarray:
    from dermsynth.data.images import load_image

    try:
        return load_image(path, size)
    except ImageReadError as exc:
        raise DermsynthError(f"init image {exc}") from None


def inpaint_mask(rgb: np.ndarray, source: ImageSource, path: Path) -> np.ndarray:
    """Boolean (H, W): True where the image is regenerated."""
    h, w = rgb.shape[:2]
    if source.mask_from == "lesion":
        from dermsynth.data.preprocess import segment_lesion

        mask = segment_lesion(rgb)
        if mask.any():
            return mask
        # No lesion found: regenerate a central disc, where prepare centres lesions.
        yy, xx = np.mgrid[:h, :w]
        return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.3 * min(h, w)) ** 2
    candidates = [p for p in list_images(source.mask_from) if p.stem == path.stem]
    if not candidates:
        raise DermsynthError(f"no mask named {path.stem}.* in {source.mask_from}")
    mask = np.asarray(Image.open(candidates[0]).convert("L").resize((w, h), Image.Resampling.NEAREST))
    return mask > 127


class StableDiffusionGenerator(GeneratorBase):
    """The `generate` adapter of the "stable-diffusion" and "stable-diffusion-lora" families."""

    takes_prompts = True
    batch_size = 8  # a 512 px UNet's activations: 8 fit a 24 GB GPU in fp16

    def __init__(self, pipe: Any, info: dict[str, Any], sha256: str):
        super().__init__()
        self.pipe = pipe
        self.family: str = info["family"]
        self.classes: list[str] = list(info["classes"])
        self.prompts: dict[str, str] = dict(info.get("prompts") or {})
        self.negative_prompts: dict[str, str] = dict(info.get("negative_prompts") or {})
        self.sha256 = sha256
        self.precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(pipe.unet.dtype, "fp32")
        self.defaults: dict[str, Any] = dict(info.get("sampling", {}))
        self.image_size = int(info.get("image_size") or pipe.unet.config.sample_size * pipe.vae_scale_factor)
        self.source: ImageSource | None = None

    def use_start_images(self, init_images: str | Path, strength: float, mask_from: str | None) -> None:
        self.source = image_source(init_images, self.classes, strength, mask_from)

    def use_item_prompts(self, prepared: str | Path) -> None:
        self.item_prompts = metadata_prompts(prepared, self.classes)

    @classmethod
    def from_folder(cls, folder: Path, info: dict[str, Any], device: str = "auto") -> StableDiffusionGenerator:
        from dermsynth.diffusion.sd.models import load_pipeline

        if info["family"] == "stable-diffusion-lora":
            base, config = info["base"], info.get("base_config")
            if info.get("base_kind") != "hub":  # recorded relative to the model folder
                base = str(folder / base)
            pipe = load_pipeline(base, config=str(folder / config) if config else None,
                                 trust_pickle=info.get("trust_pickle", False))
            with quiet_hf_libraries():
                pipe.load_lora_weights(str(folder))
        else:
            pipe = load_pipeline(folder)
        pipe.to(pick_device(device))
        weights = folder / info.get("weights", "")
        sha256 = sha256_file(weights) if weights.is_file() else str(info.get("weights_sha256", ""))
        return cls(pipe, info, sha256)

    # prompt, prompt_for (metadata prompts in turn, else the class prompt) and negative_prompt come from
    # GeneratorBase.

    def __call__(self, labels: list[str], seeds: list[int], *, steps: int, scheduler: str, guidance_scale: float,
                 indices: list[int] | None = None) -> np.ndarray:
        indices = list(indices) if indices is not None else list(range(len(labels)))
        prompts = [self.prompt_for(label, i) for label, i in zip(labels, indices, strict=True)]
        common = {"steps": steps, "scheduler": scheduler, "guidance_scale": guidance_scale,
                  "negative_prompt": [self.negative_prompt(label) for label in labels]}
        if self.source is None:
            return pipeline_images(self.pipe, prompts, seeds, size=self.image_size, **common)
        paths = [self.source.pick(label, i) for label, i in zip(labels, indices, strict=True)]
        starts = [_square(path, self.image_size) for path in paths]
        if self.source.mask_from is None:
            return img2img(self.pipe, prompts, seeds, starts, self.source.strength, **common)
        masks = [inpaint_mask(rgb, self.source, path) for rgb, path in zip(starts, paths, strict=True)]
        return inpaint(self.pipe, prompts, seeds, starts, masks, self.source.strength, **common)


def img2img(pipe: Any, prompts: list[str], seeds: list[int], images: list[np.ndarray], strength: float,
            **common: Any) -> np.ndarray:
    """Variations of ``images`` (uint8 HxWx3, all the same size) at ``strength``."""
    from diffusers import StableDiffusionImg2ImgPipeline

    variation = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    pil = [Image.fromarray(image) for image in images]
    return pipeline_images(variation, prompts, seeds, image=pil, strength=strength, **common)


def inpaint(pipe: Any, prompts: list[str], seeds: list[int], images: list[np.ndarray], masks: list[np.ndarray],
            strength: float = 1.0, **common: Any) -> np.ndarray:
    """Regenerate the True region of each mask; outside it the original pixels are kept exactly."""
    from diffusers import StableDiffusionInpaintPipeline

    painter = StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
    h, w = images[0].shape[:2]
    pil = [Image.fromarray(image) for image in images]
    pil_masks = [Image.fromarray(mask.astype(np.uint8) * 255) for mask in masks]
    out = pipeline_images(painter, prompts, seeds, image=pil, mask_image=pil_masks, strength=strength,
                          height=h, width=w, **common)
    original = np.stack(images).astype(np.float32) / 255.0
    keep = ~np.stack(masks)[..., None]
    return np.where(keep, original, out)
