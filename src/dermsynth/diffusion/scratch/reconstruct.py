"""`dermsynth reconstruct`: real images passed through a latent model's autoencoder, or through a bicubic
down-and-up, written as a class-folder set that `dermsynth audit` reads like a synthetic one.

A latent model's samples can be no closer to real images than its decoder's reconstructions are. Auditing the
reconstructions of the real test split with the same instruments (FID ratio, C2ST, domain gap) measures that
ceiling, so a fidelity gap can be split into the part the autoencoder causes and the part stage 2 causes. A
bicubic down-and-up by the latent's factor is the reference that needs no training: what a code of that size
keeps without a learned decoder.

Reconstructions are derived from real patients' images. They are **not** synthetic data and not de-identified:
the folder says so (``reconstruct.json``, ``manifest.csv``, each PNG's text), and `validate` refuses it as synthetic
input. Its one use in training is `validate`'s reconstruct control (``reconstruction:``): reconstructions of the run's
own real training sample (``--split train --model-sample``), which ``reconstruct.json`` fingerprints as the
``autoencoder_sample`` so that validate can check the autoencoder saw no other real image.

Output: ``OUT/images/<class>/rec-<image_id>.png``, ``OUT/manifest.csv`` (one row per image: its source image,
how it was made, its PSNR/SSIM against the source) and ``OUT/reconstruct.json``. The folder is written under a
hidden name and renamed when complete, so it is whole or absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dermsynth.data.dataset import load_prepared, sample_fingerprint, subsample_per_class
from dermsynth.data.images import ImageReadError, load_image, save_image
from dermsynth.data.synthetic_folders import RECONSTRUCTION_RECORD
from dermsynth.diffusion.families import FAMILIES, MODEL_JSON
from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError
from dermsynth.progress import track
from dermsynth.utils import (
    ensure_writable_dir,
    pick_device,
    read_json,
    relative_path,
    sha256_file,
    stable_hash,
    write_json_atomic,
)

NOT_SYNTHETIC = ("reconstructions of real patients' images: not synthetic data and not de-identified; for "
                 "measuring an autoencoder's ceiling, not for sharing or training")
SPLITS = ("train", "val", "test")


def reconstruct(data: str | Path, out: str | Path, model: str | Path | None = None, bicubic: int | None = None,
                split: str = "test", max_images: int | None = None, seed: int = 0, device: str = "auto",
                batch_size: int = 16, progress: bool = True, model_sample: bool = False) -> dict[str, Any]:
    """Write the reconstructions of ``split`` of the prepared dataset ``data`` into ``out``; returns the record
    (also ``out/reconstruct.json``). Exactly one of ``model`` (a latent-family model folder) and ``bicubic``
    (a down-and-up factor) says what the images pass through. ``model_sample``: only the model's own training
    sample (its --real-per-class draw), as `validate`'s reconstruct control needs."""
    if (model is None) == (bicubic is None):
        raise DermsynthError("reconstruct: give exactly one of --model MODEL (its autoencoder) or --bicubic FACTOR")
    if split not in SPLITS:
        raise DermsynthError(f"reconstruct: --split must be one of {', '.join(SPLITS)} (got {split!r})")
    if max_images is not None and max_images < 1:
        raise DermsynthError(f"reconstruct: --max-images must be 1 or more (got {max_images})")
    if model_sample and (model is None or split != "train"):
        raise DermsynthError("reconstruct: --model-sample needs --model and --split train (the images the model "
                             "was trained on)")
    prepared = load_prepared(data)
    trained_on = _model_sample(prepared, Path(model), model_sample) if model is not None else None
    out = Path(out)
    if (out / RECONSTRUCTION_RECORD).is_file():
        raise DermsynthError(f"{out}: already holds reconstructions; choose another --out or delete it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DermsynthError(f"{out}: exists and is not an empty folder; choose a new --out")
    device = pick_device(device)
    codec = _model_codec(Path(model), device) if model is not None else _BicubicCodec(bicubic, prepared.image_size)
    frame = trained_on if model_sample and trained_on is not None else prepared.split(split)
    if frame.empty:
        raise DermsynthError(f"{data}: the {split} split is empty")
    if max_images is not None and len(frame) > max_images:
        frame = frame.sample(n=max_images, random_state=seed).sort_values("image_id")
    ensure_writable_dir(out.parent)
    work = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    rows, skipped = _write_images(prepared, frame.reset_index(drop=True), codec, work, batch_size, progress)
    if not rows:
        shutil.rmtree(work, ignore_errors=True)
        raise DermsynthError(f"{data}: none of the {split} images could be read")
    manifest = pd.DataFrame(rows)
    manifest.to_csv(work / "manifest.csv", index=False)
    record = {"what": NOT_SYNTHETIC, "through": codec.description, "split": split, "prepared": relative_path(
        prepared.root, out), "image_size": codec.size, "images": len(manifest),
        "counts": manifest["label"].value_counts().sort_index().to_dict(), "skipped": skipped,
        "psnr": round(float(manifest["psnr"].mean()), 4), "ssim": round(float(manifest["ssim"].mean()), 4),
        "autoencoder_sample": None if trained_on is None else {
            "images": len(trained_on), "image_ids_sha256": sample_fingerprint(trained_on["image_id"])},
        **codec.record(out)}
    write_json_atomic(work / RECONSTRUCTION_RECORD, record)
    if out.exists():
        out.rmdir()  # empty (checked above)
    work.rename(out)
    return record


def _model_sample(prepared, model: Path, required: bool) -> pd.DataFrame | None:
    """The train-split images ``model`` (and so its autoencoder) was trained on, found again in ``prepared`` and
    checked against the model's record of them (ids, labels and file contents); None where that cannot be shown
    (another prepared folder, or no record) unless ``required``, which makes it an error."""
    try:
        info = read_json(model / MODEL_JSON, "retrain the model")["data"]
        per_class, sample_seed, recorded = info["real_per_class"], info["subsample_seed"], info["sha256"]
    except (DermsynthError, KeyError, TypeError):
        if required:
            raise DermsynthError(f"{model}: no readable {MODEL_JSON} saying what it was trained on (--model-sample "
                                 "needs a model trained by dermsynth train)") from None
        return None
    frame = prepared.split("train")
    if per_class is not None:
        frame = subsample_per_class(frame, int(per_class), int(sample_seed or 0), prepared.classes)
    hashes = [sha256_file(path) for path in prepared.paths(frame)]
    if stable_hash(list(zip(frame["image_id"], frame["label"], hashes, strict=True))) != recorded:
        if required:
            raise DermsynthError(f"{model}: was not trained on this prepared folder's train split (its training "
                                 "sample's images, labels or files differ); give the --data it was trained on")
        return None
    return frame


def _write_images(prepared, frame: pd.DataFrame, codec, work: Path, batch_size: int,
                  progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
    classes = prepared.classes
    rows, skipped = [], []
    starts = range(0, len(frame), batch_size)
    for start in track(starts, len(starts), f"reconstruct ({codec.name})", enabled=progress):
        chunk, images = [], []
        for _, row in frame.iloc[start:start + batch_size].iterrows():
            try:
                images.append(load_image(prepared.image_path(row["path"]), codec.size))
                chunk.append(row)
            except ImageReadError as exc:
                skipped.append(f"{row['image_id']}: {exc.reason}")
        if not images:
            continue
        real = np.stack(images)
        made = codec(real, [int(row["target"]) for row in chunk], [image_seed(row["image_id"]) for row in chunk])
        psnr, ssim = _scores(real, made)
        for row, image, p, s in zip(chunk, made, psnr, ssim, strict=True):
            label = classes[int(row["target"])]
            relative = Path("images") / label / f"rec-{row['image_id']}.png"
            (work / relative.parent).mkdir(parents=True, exist_ok=True)
            save_image(image, work / relative, text={"dermsynth": NOT_SYNTHETIC, "through": codec.name})
            rows.append({"image_id": f"rec-{row['image_id']}", "path": relative.as_posix(), "label": label,
                         "source_image_id": row["image_id"], "through": codec.name, "psnr": round(p, 3),
                         "ssim": round(s, 4), "synthetic": False})
    return rows, skipped


def image_seed(image_id: str) -> int:
    """A seed of its own for each image (a generating codec's noise), the same in every run and batch."""
    return int(stable_hash(["reconstruct", str(image_id)])[:8], 16)


def _scores(real: np.ndarray, made: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-image PSNR (dB) and SSIM of the uint8 reconstructions against their sources."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255.0
    b = torch.from_numpy(made).permute(0, 3, 1, 2).float() / 255.0
    psnr = [float(peak_signal_noise_ratio(y[None], x[None], data_range=1.0)) for x, y in zip(a, b, strict=True)]
    ssim = [float(structural_similarity_index_measure(y[None], x[None], data_range=1.0))
            for x, y in zip(a, b, strict=True)]
    return psnr, ssim


def _to_pixels(images: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1.0


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _model_codec(model: Path, device: str) -> Any:
    """What a model folder's family passes real images through (its registered reconstruction codec)."""
    from dermsynth.diffusion.families import get_family, read_model_info

    if not (model / MODEL_JSON).is_file():  # a bare folder: an autoencoder's, or the error that says what is missing
        return AutoencoderCodec(model, device)
    family = get_family(read_model_info(model)["family"])
    if family.codec is None:
        with_codec = ", ".join(name for name, entry in FAMILIES.items() if entry.codec is not None)
        raise DermsynthError(f"{model}: a {family.name} model has no reconstruction (models of these families "
                             f"do: {with_codec}; --bicubic FACTOR needs none)")
    return family.codec_class()(model, device)


class AutoencoderCodec:
    """A latent model's autoencoder: encoder mean, then decoder, as its samples are decoded."""

    name = "autoencoder"

    def __init__(self, model: Path, device: str):
        from diffusers import AutoencoderKL

        from dermsynth.diffusion.scratch.sampling import VAE_FOLDER, use_bf16

        folder = model / VAE_FOLDER
        if not (folder / "config.json").is_file():
            raise DermsynthError(f"{model}: no {VAE_FOLDER}/ autoencoder (a latent-family model folder is needed; "
                                 "--bicubic FACTOR needs none)")
        try:
            self.vae = AutoencoderKL.from_pretrained(folder).to(device).eval()
            self.sha256 = sha256_file(folder / "diffusion_pytorch_model.safetensors")
        except UNREADABLE_ARTIFACT_ERRORS as exc:
            raise DermsynthError(f"{folder}: the autoencoder cannot be read ({type(exc).__name__}); retrain or "
                                 "copy the model folder again") from None
        self.model, self.device = model, device
        self.bf16 = use_bf16("auto", torch.device(device))
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.size = int(self.vae.config.sample_size)
        self.description = (f"the autoencoder of a latent model ({self.factor}x, "
                            f"{self.vae.config.latent_channels} latent channels), encoder mean then decoder")

    @torch.no_grad()
    def __call__(self, images: np.ndarray, labels: list[int], seeds: list[int]) -> np.ndarray:
        from dermsynth.diffusion.scratch.autoencoder import autoencode

        return _to_uint8(autoencode(self.vae, _to_pixels(images, self.device), self.bf16))

    def record(self, base: Path) -> dict[str, Any]:
        return {"model": relative_path(self.model, base), "vae_sha256": self.sha256, "factor": self.factor,
                "latent_channels": int(self.vae.config.latent_channels), "bf16": self.bf16}


class _BicubicCodec:
    """A bicubic down (antialiased) and up by ``factor``: the reference a latent of that size must beat."""

    name = "bicubic"

    def __init__(self, factor: int, size: int):
        if factor < 2 or size % factor:
            raise DermsynthError(f"reconstruct: --bicubic takes a factor of 2 or more that divides the image size "
                                 f"{size} (got {factor})")
        self.factor, self.size = factor, size
        self.description = f"bicubic down by {factor}x (antialiased) and back up"

    def __call__(self, images: np.ndarray, labels: list[int], seeds: list[int]) -> np.ndarray:
        from dermsynth.diffusion.scratch.autoencoder import bicubic_down_up

        return _to_uint8(bicubic_down_up(_to_pixels(images, "cpu"), self.factor))

    def record(self, base: Path) -> dict[str, Any]:
        return {"factor": self.factor}
