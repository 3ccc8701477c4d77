"""A/B of a cascade's super-resolution sampling settings on real images (no base model involved).

    python bench/ab_cascade_sampling.py --model CASCADE --prepared PREP --out DIR [--split val] [--per-class 60] \
        [--variant NAME=aug:0.1] [--variant NAME=aug:0.1,start:1.0,steps:15] ... [--smoke]

The first ``--per-class`` images of each class of ``--split`` (by image id; the val split, so that the test split
stays unseen) are downsampled by the cascade's factor and upscaled by each variant, with the same seeds. Per
class and variant: the sharpness ratio (median over images of generated / source sharpness; 1 = real texture) and
the colour error (mean CIELAB distance between 8x8 block means of generated and source: what the stage changes
in the low frequencies it was given). Bicubic upsampling is the reference row. Results: ``DIR/results.csv`` and
``DIR/results.md``, and ``DIR/grid.png`` (source, bicubic, each variant).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from dermsynth.data.dataset import load_prepared
from dermsynth.data.images import load_image, sharpness
from dermsynth.diffusion.cascade.sampling import SR_FOLDER, SuperResolutionPipeline, downsample, upsample
from dermsynth.diffusion.families import read_model_info
from dermsynth.diffusion.grid import image_grid
from dermsynth.diffusion.scratch.sampling import use_bf16

KEYS = {"aug": "augmentation", "start": "start_sigma", "steps": "steps", "guidance": "guidance_scale"}


def parse_variant(text: str, defaults: dict) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    settings = dict(defaults)
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition(":")
        settings[KEYS[key]] = None if value == "none" else int(value) if key == "steps" else float(value)
    return name, settings


def colour_error(made: np.ndarray, source: np.ndarray, blocks: int = 8) -> float:
    """Mean CIELAB distance between the block means of two uint8 images."""
    def lab_blocks(image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, (blocks, blocks), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return float(np.linalg.norm(lab_blocks(made) - lab_blocks(source), axis=-1).mean())


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def run(model: Path, prepared: Path, out: Path, split: str, per_class: int, variants: list[str]) -> pd.DataFrame:
    info = read_model_info(model)
    stage = info["super_resolution"]
    factor, size = int(stage["factor"]), int(info["image_size"])
    # bf16 where generation uses it, so the variants are what `generate` would make
    pipeline = SuperResolutionPipeline.from_pretrained(model / SR_FOLDER, factor=factor,
                                                       bf16=use_bf16("auto", torch.device("cpu")))
    dataset = load_prepared(prepared)
    frame = dataset.split(split).sort_values("image_id")
    rows, tiles, grid_rows = [], [], []
    chosen = [parse_variant(v, stage["sampling"]) for v in variants]
    for target, label in enumerate(info["classes"]):
        picked = frame[frame["label"] == label].head(per_class)
        source = np.stack([load_image(p, size) for p in dataset.paths(picked)])
        low = downsample(torch.from_numpy(source).permute(0, 3, 1, 2).float() / 127.5 - 1, factor)
        made = {"bicubic": to_uint8(((upsample(low, size) + 1) / 2).permute(0, 2, 3, 1).numpy())}
        for name, settings in chosen:
            made[name] = to_uint8(pipeline.upscale(
                low, [target] * len(source), list(range(len(source))), augmentation=settings["augmentation"],
                num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
                scheduler=settings["scheduler"], start_sigma=settings.get("start_sigma")))
        for name, images in made.items():
            ratios = [sharpness(m) / sharpness(s) for m, s in zip(images, source, strict=True)]
            rows.append({"class": label, "variant": name, "images": len(images),
                         "sharpness_ratio": round(float(np.nanmedian(ratios)), 3),
                         "colour_error": round(float(np.mean([colour_error(m, s) for m, s in
                                                              zip(images, source, strict=True)])), 3)})
        for name, images in {"source": source, **made}.items():
            grid_rows.append(f"{label} {name}")
            tiles += [images[i] / 255.0 for i in range(min(6, len(images)))]
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    columns = min(6, per_class)
    image_grid(np.stack(tiles[: len(grid_rows) * columns]), rows=grid_rows, scale=1).save(out / "grid.png")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--prepared", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--smoke", action="store_true", help="A tiny cascade on the embedded sample.")
    args = parser.parse_args()
    if args.smoke:
        from dermsynth.testing.smoke_data import sample_prepared, tiny_cascade_model

        work = Path(tempfile.mkdtemp())
        args.prepared = sample_prepared(work / "prep", size=32)
        args.model = tiny_cascade_model(args.prepared, work / "cascade")
        args.out, args.per_class = work / "ab", 2
        args.variant = ["noise=aug:0.0", "start=aug:0.1,start:1.0,steps:2"]
    table = run(args.model, args.prepared, args.out, args.split, args.per_class, args.variant or ["preset="])
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
