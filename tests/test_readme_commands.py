"""The README's commands run as written, on stand-ins for the user's data and models: its five `prepare` commands
exactly, its `finetune` and `run` examples with sizes and step counts appended (they are written for a GPU), and
the `run --dry-run` plan exactly."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.standins import archive_standin, folder_standin, ham10000_standin, isic2020_standin

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY_FINETUNE = ["--resolution", "64", "--max-steps", "1", "--precision", "no"]
TINY_RUN = ["--set", "train.settings.max_steps=2",
            "--set", "train.settings.model={image_size: 16, block_out_channels: [16, 32], layers_per_block: 1, "
                     "attention_levels: [1], attention_head_dim: 8, norm_num_groups: 8, dropout: 0.0}",
            "--set", "train.settings.batch_size=8", "--set", "train.settings.sample_every=2",
            "--set", "train.settings.checkpoint_every=2", "--set", "train.settings.samples_per_class=1",
            "--set", "prepare.preprocess.image_size=32", "--set", "generate.steps=2",
            "--set", "audit={image_size: 32, classifier_epochs: 1, kid_subsets: 2, positive_controls: 4, "
                     "c2st_folds: 2, c2st_epochs: 1}",
            "--set", "validate.seeds=1", "--set", "validate.image_size=32", "--set", "validate.train={epochs: 1}",
            "--set", "validate.architecture={hidden_sizes: [8, 16], embedding_size: 8, depths: [1, 1]}",
            "--set", "validate.bootstrap=100", "--set", "device=cpu"]


def readme_commands(program: str) -> list[list[str]]:
    """Every `dermsynth PROGRAM ...` line of the README's bash blocks (continuations joined, comments dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["dermsynth", program]:
                commands.append(words[2:])
    return commands


@pytest.fixture
def user_folder(tmp_path, monkeypatch) -> Path:
    """A folder laid out as the README assumes: ISIC2020/, uda1/, HAM10000/, my_images/ and the base models."""
    from dermsynth.testing.tiny_sd import build_tiny_pipeline, export_single_file

    isic2020_standin(tmp_path / "ISIC2020")
    archive_standin(tmp_path / "uda1")
    ham10000_standin(tmp_path / "HAM10000", n=1500)  # the HAM10000 study takes 500 real training images per class
    folder_standin(tmp_path / "my_images")
    pipe = build_tiny_pipeline(seed=0)
    pipe.save_pretrained(tmp_path / "stable-diffusion-v1-5")
    export_single_file(pipe, tmp_path / "sd15.safetensors")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_prepare_finetune_and_run_commands_run_as_written(user_folder, cli):
    prepares = readme_commands("prepare")
    assert len(prepares) >= 5
    for args in prepares:
        code, _, stderr = cli("prepare", *args, "--quiet")
        assert code == 0, (args, stderr)
        out = Path(args[args.index("--out") + 1])
        assert (out / "metadata.csv").is_file() and (out / "prepare.json").is_file(), args

    finetunes = readme_commands("finetune")
    assert len(finetunes) >= 2
    for args in finetunes:
        code, _, stderr = cli("finetune", *args, *TINY_FINETUNE, "--quiet")
        assert code == 0, (args, stderr)
        out = Path(args[args.index("--out") + 1])
        assert json.loads((out / "dermsynth_model.json").read_text())["steps"] == 1

    runs = readme_commands("run")
    assert any("--dry-run" in args for args in runs) and any("--dry-run" not in args for args in runs)
    for args in runs:
        if "--dry-run" in args:
            code, stdout, stderr = cli("run", *args)
            assert code == 0 and "Nothing above stops the study." in stdout, stdout + stderr
            continue
        code, _, stderr = cli("run", *args, *TINY_RUN)
        assert code == 0, (args, stderr)
        out = Path(args[args.index("--out") + 1])
        assert (out / "report.html").is_file()
