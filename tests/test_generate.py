"""The generate stage: outputs and provenance, determinism, QC, resuming after a kill, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dermsynth.diffusion.generate as generate_module
from dermsynth.diffusion.generate import MANIFEST_COLUMNS, SEED_STRIDE, generate, make_plan
from dermsynth.diffusion.qc import qc_reason
from dermsynth.diffusion.scratch.sampling import ScratchGenerator
from dermsynth.diffusion.scratch.train import train
from dermsynth.errors import DermsynthError
from tests.test_diffusion_scratch import TINY, assert_one_line_error, make_prepared, one_thread, run_cli

FAST = {"steps": 3, "scheduler": "ddim"}
# diffusers' DPM-Solver builds its sigmas in a way numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
__all__ = ["one_thread"]  # the autouse fixture applies to this module too


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prep"))


@pytest.fixture(scope="module")
def model(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    train(prepared, out, config=TINY, progress=False)
    return out


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*/*.png"))}


def test_writes_images_manifest_provenance_and_summary(model, tmp_path):
    out = tmp_path / "syn"
    result = generate(model, out, per_class=3, seed=5, batch_size=4, progress=False, **FAST)
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS and len(manifest) == 6
    assert manifest["synthetic"].all() and (manifest["qc"] == "pass").all()
    assert manifest.groupby("label").size().to_dict() == {"benign": 3, "malignant": 3}
    assert all((out / p).is_file() for p in manifest["path"])
    malignant = manifest[manifest["label"] == "malignant"].sort_values("image_id")
    assert malignant["seed"].tolist() == [5 + SEED_STRIDE + i for i in range(3)]
    row = manifest.iloc[0]
    text = Image.open(out / row["path"]).text
    assert text["image_id"] == row["image_id"] and text["model_sha256"] == row["model_sha256"]
    assert text["seed"] == str(row["seed"]) and text["synthetic"] == "True"
    assert not {"patient_id", "lesion_id"} & (set(text) | set(manifest.columns))
    summary = json.loads((out / "generate.json").read_text())
    assert summary["status"] == "complete" and summary["counts"] == {"benign": 3, "malignant": 3}
    assert summary["settings"]["steps"] == 3 and result.summary == summary


def test_hf_datasets_imagefolder_reads_the_images_with_their_provenance(model, tmp_path):
    datasets = pytest.importorskip("datasets")
    result = generate(model, tmp_path / "syn", per_class=3, progress=False, **FAST)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "syn" / "images"), split="train")
    assert len(loaded) == 6
    assert {"image", "label", "seed", "prompt", "model_sha256", "synthetic"} <= set(loaded.column_names)
    manifest = result.manifest.set_index("image_id")
    for row in loaded:
        expected = manifest.loc[row["image_id"]]
        assert row["label"] == expected["label"] and row["prompt"] == expected["prompt"]
        assert row["seed"] == expected["seed"] and row["model_sha256"] == expected["model_sha256"]
        assert row["synthetic"] is True and row["image"].size == Image.open(tmp_path / "syn" / expected["path"]).size


def test_same_command_same_images_whatever_the_batch_size(model, tmp_path):
    generate(model, tmp_path / "a", per_class=3, batch_size=6, progress=False, **FAST)
    generate(model, tmp_path / "b", per_class=3, batch_size=1, progress=False, **FAST)
    a, b = pixels(tmp_path / "a"), pixels(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 6
    assert max(int(np.abs(a[k].astype(int) - b[k]).max()) for k in a) <= 1
    generate(model, tmp_path / "c", per_class=3, seed=1, progress=False, **FAST)
    assert not np.array_equal(a["syn-benign-s0-00000"], pixels(tmp_path / "c")["syn-benign-s1-00000"])


def test_killed_run_resumes_without_losing_or_duplicating(model, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    generate(model, reference, per_class=4, batch_size=3, progress=False, **FAST)

    out = tmp_path / "syn"
    real_write = generate_module.write_png
    written = []

    def write_then_die(pixels_, path, row):
        if len(written) == 5:
            raise KeyboardInterrupt  # a kill in the middle of the second batch
        real_write(pixels_, path, row)
        written.append(path)

    monkeypatch.setattr(generate_module, "write_png", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate(model, out, per_class=4, batch_size=3, progress=False, **FAST)
    monkeypatch.setattr(generate_module, "write_png", real_write)
    # What a hard kill could also leave: a half-written temporary file, and a manifest missing the last images.
    (out / "images" / "benign" / ".syn-benign-s0-00003.png.abc.tmp.png").write_bytes(b"\x89PNG partial")
    pd.read_csv(out / "manifest.csv").head(2).to_csv(out / "manifest.csv", index=False)
    assert json.loads((out / "generate.json").read_text())["status"] == "running"

    generate(model, out, per_class=4, batch_size=3, progress=False, **FAST)
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 8 and manifest["image_id"].is_unique
    assert not list((out / "images").rglob("*.tmp*"))
    done, expected = pixels(out), pixels(reference)
    assert done.keys() == expected.keys()
    assert all(np.array_equal(done[k], expected[k]) for k in done)


def test_more_images_later_extend_the_folder(model, tmp_path):
    out = tmp_path / "syn"
    generate(model, out, per_class=2, classes=["malignant"], progress=False, **FAST)
    first = pixels(out)
    generate(model, out, per_class=4, progress=False, **FAST)
    after = pixels(out)
    assert len(after) == 8 and all(np.array_equal(after[k], v) for k, v in first.items())


def test_qc_reasons():
    rng = np.random.default_rng(0)
    assert qc_reason(rng.uniform(0.2, 0.8, (16, 16, 3))) is None
    assert qc_reason(np.full((16, 16, 3), 0.5)) == "blank"
    assert qc_reason(np.zeros((16, 16, 3))) == "blank"
    nan = rng.uniform(size=(16, 16, 3))
    nan[3, 4, 1] = np.nan
    assert qc_reason(nan) == "nan"
    assert qc_reason(rng.choice([-0.5, 1.5], (16, 16, 3))) == "saturated"


def test_rejected_images_are_logged_and_replaced(model, tmp_path, monkeypatch):
    real_call = ScratchGenerator.__call__

    def blank_first_benign(self, labels, seeds, **kwargs):
        images = real_call(self, labels, seeds, **kwargs)
        for i, seed in enumerate(seeds):
            if seed == 0:
                images[i] = 0.5
        return images

    monkeypatch.setattr(ScratchGenerator, "__call__", blank_first_benign)
    out = tmp_path / "syn"
    result = generate(model, out, per_class=2, progress=False, **FAST)
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected[["image_id", "reason"]].values.tolist() == [["syn-benign-s0-00000", "blank"]]
    assert not (out / "images" / "benign" / "syn-benign-s0-00000.png").exists()
    assert result.summary["counts"] == {"benign": 2, "malignant": 2}
    assert result.summary["rejected"] == {"benign": 1, "malignant": 0}


def test_balance_plan(prepared):
    # train split of the fixture: 10 benign, 6 malignant
    assert make_plan(["benign", "malignant"], None, prepared, None) == {"benign": 0, "malignant": 4}
    assert make_plan(["benign", "malignant"], None, prepared, ["malignant"]) == {"malignant": 4}
    with pytest.raises(DermsynthError, match="already balanced"):
        make_plan(["benign", "malignant"], None, prepared, ["benign"])


@pytest.mark.parametrize("case", [
    "missing-model", "not-a-model", "unknown-class", "zero", "both", "unwritable", "missing-prep", "incomplete-prep",
    "scheduler", "changed-settings",
])
def test_cli_user_errors(model, prepared, tmp_path, capsys, case):
    out = tmp_path / "syn"
    args = ["generate", "--model", str(model), "--out", str(out), "--quiet", "--steps", "2"]
    extra, fragment = {
        "missing-model": (["--model", str(tmp_path / "nope"), "--per-class", "1"], "model folder not found"),
        "not-a-model": (["--model", str(prepared), "--per-class", "1"], "not a finished dermsynth model"),
        "unknown-class": (["--per-class", "1", "--classes", "melanoma"], "unknown class(es) melanoma"),
        "zero": (["--per-class", "0"], "--per-class: Input should be greater than or equal to 1"),
        "both": (["--per-class", "1", "--balance", str(prepared)], "exactly one"),
        "unwritable": (["--per-class", "1", "--out", str(tmp_path / "file" / "syn")], "cannot write"),
        "missing-prep": (["--balance", str(tmp_path / "nope")], "prepared dataset not found"),
        "incomplete-prep": (["--balance", str(tmp_path)], "not a complete prepared dataset"),
        "scheduler": (["--per-class", "1", "--scheduler", "plms"], "unknown scheduler"),
        "changed-settings": (["--per-class", "1", "--guidance", "1.5"], "other settings (guidance_scale)"),
    }[case]
    (tmp_path / "file").write_text("a file, not a folder", encoding="utf-8")
    if case == "changed-settings":
        assert run_cli([*args, "--per-class", "1"], capsys)[0] == 0
    code, _, err = run_cli([*args, *extra], capsys)
    assert_one_line_error(code, err, fragment)
