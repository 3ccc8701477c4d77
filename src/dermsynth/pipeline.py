"""`dermsynth run`: the whole study from one YAML, stage by stage, into one run folder.

Each stage writes into its own sub-folder and, when it finishes, a ``.stage.json`` marker holding the hash of
its settings and of its upstream stages' hashes. A rerun skips every stage whose marker matches, and reruns
(resuming, where the stage supports it) every stage whose settings or inputs changed or that was interrupted.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dermsynth.audit.config import AuditConfig
from dermsynth.config import StrictModel, current_names, read_yaml, validate_config
from dermsynth.data.config import PrepareConfig
from dermsynth.diffusion.generate_config import GenerateConfig
from dermsynth.diffusion.sd.config import FinetuneConfig
from dermsynth.distributed import ProcessShare, current_share, usable_cores
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.evaluate.regimes import parse_regime
from dermsynth.layout import RUN_FOLDERS
from dermsynth.progress import console
from dermsynth.utils import (
    ensure_writable_dir,
    marker_hash,
    read_json,
    stable_hash,
    torch_threads,
    write_json_atomic,
    write_text_atomic,
)

MARKER = ".stage.json"
RUNNING = ".stage-running.json"


class TrainStage(StrictModel):
    preset: str = Field("cpu-fast", description="Preset of the from-scratch diffusion model (pixel: cpu-fast, gpu; "
                        "latent, 128/256 px: cpu-latent-128, gpu-latent-256; cascade: cpu-cascade-128, "
                        "gpu-cascade-256).")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Any field of the training config (see `dermsynth train --help` / configs/train-*.yaml) on top "
                    "of the preset, e.g. {max_steps: 900}. Prefer max_steps to max_minutes for reproducible runs.")

    @field_validator("settings", mode="before")
    @classmethod
    def _current_names(cls, value: Any, info: ValidationInfo) -> Any:
        """Old names read once, here: the stage's hash and the training run see only the current ones."""
        from dermsynth.diffusion.training import config_model, presets

        preset = info.data.get("preset")
        return current_names(config_model(preset), value) if preset in presets() else value

    @model_validator(mode="after")
    def _settings_are_valid(self) -> TrainStage:
        from dermsynth.diffusion.training import resolve_config

        try:
            resolve_config(self.preset, dict(self.settings))
        except DermsynthError as exc:
            raise ValueError(str(exc).replace("config: ", "settings.", 1)) from None
        return self


class GenerateStage(GenerateConfig):
    """`generate` settings; the model and, with balance, the prepared dataset are the run's own."""

    per_class: int | None = Field(200, ge=1, description="Images per class (ignored when balance is true).")
    balance: bool = Field(False, description="Fill each class of the real train split up to the largest class.")
    device: str | None = Field(None, description="Filled in by the run: its device.")


class ValidateStage(ValidateConfig):
    """`validate` settings; the real and synthetic folders are the run's own."""

    real: Path | None = Field(None, description="Filled in by the run: its prepared dataset.")
    extra_synthetic: list[Path] = Field(
        default_factory=list, description="Synthetic folders made elsewhere, validated beside the run's own.")

    @field_validator("shard")
    @classmethod
    def _no_shard_in_a_study(cls, value: str | None) -> str | None:
        # A study's stage is done when its marker is written; one shard of it is not the stage.
        if value is not None:
            raise ValueError("a study runs every validation run; for a job array, run `dermsynth validate --shard "
                             "K/N` on the run's folders (docs/scale.md)")
        return value


class DomainShiftStage(StrictModel):
    """`domain-shift` settings; the real and synthetic folders are the run's own."""

    external: list[Path] = Field(
        default_factory=list, description="External sites' prepared datasets; empty = validate's test sets.")
    fraction: float = Field(0.5, gt=0, le=1, description="Synthetic share of the training mix (hybrid:<fraction>).")
    max_per_class: int | None = Field(1000, ge=2, description="At most this many images per set and class (seeded).")
    image_size: int | None = Field(None, ge=16, le=1024, description="Measure at this size; null = the prepared size.")
    features: str | None = Field(
        None, description="Also compare in a feature space: classifier:PATH (a saved classifier) or hf:ID_OR_PATH.")
    seed: int = Field(0, description="Seed of the per-class caps.")


class ReaderStudyStage(StrictModel):
    """`reader-study build` settings; the real and synthetic folders are the run's own."""

    n: int = Field(100, ge=2, description="Scored images, split equally over the classes.")
    per_class: int | None = Field(None, ge=2, description="Instead of n: this many scored images per class.")
    synthetic_fraction: float = Field(0.5, gt=0, lt=1, description="Share of synthetic images in every class.")
    practice: int = Field(4, ge=0, le=20, description="Unscored practice images with feedback, shown first.")
    seed: int = Field(0, description="Seed of the draw and of the file names.")
    size: int | None = Field(None, ge=32, le=1024, description="Image side in px; null = the smaller of the real "
                             "and synthetic images' sides.")


class RunConfig(StrictModel):
    """One study: every stage's settings in one file. Stages left out are not run."""

    name: str = Field("study", description="A short name for the study, shown in the report.")
    device: str = Field("auto", description="Device of every stage: auto (CUDA, then MPS, then CPU), cpu, cuda ...")
    threads: int | None = Field(
        None, ge=1, le=256,
        description="CPU threads for training; null = torch's default (all cores). Fixed, so that results do not "
                    "depend on machine load; set 1 on a CPU that other processes keep busy.")
    real_per_class: int | None = Field(
        None, ge=1, description="Limited-data study: the generator trains on, and validate's classifiers take, this "
                                "many real training images per class, the same sample (null = the whole train split).")
    subsample_seed: int = Field(0, description="Seed of that real_per_class sample, for every stage.")
    prepare: PrepareConfig | None = Field(None, description="Settings of the prepare stage.")
    prepared: Path | None = Field(
        None, description="An already prepared dataset folder (from `dermsynth prepare`) to use instead of a prepare "
                          "stage; the run links it as its prepared/ folder and never writes into it.")
    train: TrainStage | None = Field(None, description="Train a diffusion model from scratch (omit to skip).")
    finetune: FinetuneConfig | None = Field(
        None, description="Fine-tune Stable Diffusion instead of training from scratch (see docs/finetune.md).")
    generate: GenerateStage | None = Field(None, description="Generate synthetic images (needs train).")
    audit: AuditConfig | None = Field(None, description="Audit fidelity and memorization (needs generate).")
    validate_: ValidateStage | None = Field(
        None, alias="validate", description="Real vs hybrid vs synthetic classifiers (omit to skip).")
    domain_shift: DomainShiftStage | None = Field(
        None, description="Where the synthetic images move training relative to each external site, on the audit's "
                          "image statistics (needs generate, and external sites here or in validate.test).")
    reader_study: ReaderStudyStage | None = Field(
        None, description="Build a blinded reader study from the run's images (needs generate; scoring comes "
                          "later, when readers have answered: dermsynth reader-study score).")
    report: bool = Field(True, description="Write report.html and summary.md at the end.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _one_real_sample(cls, data: Any) -> Any:
        """The run-level real_per_class flows into train and validate, so the generator sees the classifiers' real
        sample; a stage that names another value is an error (set it once, at the top)."""
        if not isinstance(data, dict) or data.get("real_per_class") is None:
            return data
        wanted = {"real_per_class": data["real_per_class"], "subsample_seed": data.get("subsample_seed", 0)}
        data = dict(data)
        for where, path in (("train.settings", ("train", "settings")), ("validate", ("validate",))):
            section = data.get(path[0])
            if not isinstance(section, dict):
                continue
            section = dict(section)
            target = dict(section.get("settings") or {}) if len(path) == 2 else section
            for key, value in wanted.items():
                if target.get(key) not in (None, value):
                    raise ValueError(f"{where}.{key} differs from the run's {key}: set it once, at the top")
            target.update(wanted)
            if len(path) == 2:
                section["settings"] = target
            data[path[0]] = section
        return data

    @model_validator(mode="after")
    def _stages_have_inputs(self) -> RunConfig:
        if self.prepare is None and self.prepared is None:
            raise ValueError("the config has no prepare section: add one (e.g. prepare: {dataset: isic2020, root: "
                             "DATA}), or name an already prepared folder with prepared: PATH")
        if self.prepare is not None and self.prepared is not None:
            raise ValueError("prepare and prepared both give the dataset: keep one of them")
        if self.train and self.finetune:
            raise ValueError("train and finetune both make the model: keep one of them")
        if self.generate and not (self.train or self.finetune):
            raise ValueError("generate needs a train or finetune section (the model to sample from)")
        if self.audit and not self.generate:
            raise ValueError("audit needs a generate section (the synthetic images to audit)")
        if self.domain_shift and not self.generate:
            raise ValueError("domain_shift needs a generate section (the synthetic images whose shift it measures)")
        if self.domain_shift and not (self.domain_shift.external or (self.validate_ and self.validate_.test)):
            raise ValueError("domain_shift needs external sites: list them in domain_shift.external or validate.test")
        if self.reader_study and not self.generate:
            raise ValueError("reader_study needs a generate section (the synthetic images to show)")
        regimes = [parse_regime(r) for r in self.validate_.regimes] if self.validate_ else []
        if self.validate_ and not self.generate and not self.validate_.extra_synthetic and any(
                r.per_source for r in regimes):
            raise ValueError("validate: regimes with synthetic images (and the lowpass controls) need synthetic "
                             "images (generate or extra_synthetic)")
        if self.validate_ and self.validate_.reconstruction is None and not self.train and any(
                r.method == "reconstruct" for r in regimes):
            raise ValueError("validate: the reconstruct controls need a train section (the latent model whose "
                             "autoencoder makes them) or validate.reconstruction")
        return self


@dataclass
class Stage:
    name: str
    folder: str
    settings: dict[str, Any]
    upstream: list[str]
    run: Callable[[Path], Any]
    # False for stages that keep their own cache keyed by settings (prepare reuses processed images).
    fresh_on_change: bool = True
    # Under a launcher, a stage that shares its work between the processes runs in all of them; the others run
    # in the main process while the rest wait.
    shares_work: bool = False


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    folder: Path


STAGE_KEYS = ("prepare", "prepared", "train", "finetune", "generate", "audit", "validate", "domain_shift",
              "reader_study")


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A run config; one that names no stage is refused (running the defaults would not be what was asked).
    ``overrides`` are ``dotted.key=value`` settings (values read as YAML) applied on top of the file."""
    raw = read_yaml(path)
    for item in overrides or []:
        _set_dotted(raw, item)
    if not any(key in raw for key in STAGE_KEYS):
        raise DermsynthError(f"{path}: the config names no stages; add at least one of {', '.join(STAGE_KEYS)} "
                             "(see configs/demo.yaml)")
    return validate_config(RunConfig, raw, source=str(path))


def _set_dotted(data: dict[str, Any], item: str) -> None:
    """``prepare.root=/data/HAM10000`` into ``data`` (a missing section is made; a value is parsed as YAML)."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise DermsynthError(f"--set takes KEY=VALUE with a dotted key, e.g. prepare.root=/data/ISIC2020 "
                             f"(got {item!r})")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise DermsynthError(f"--set {item}: the value is not valid YAML") from None
    for part in parts[:-1]:
        inner = data.setdefault(part, {})
        if not isinstance(inner, dict):
            raise DermsynthError(f"--set {item}: {part} is not a section of the config")
        data = inner
    data[parts[-1]] = value


def build_stages(config: RunConfig, out: Path) -> list[Stage]:
    """The configured stages in order; each reads its upstream stages' folders inside ``out``."""
    from dermsynth.data.prepare import prepare

    prepared, model, synthetic = (out / RUN_FOLDERS[name] for name in ("prepare", "train", "generate"))

    def stage(name: str, settings: Any, upstream: list[str], run: Callable[[Path], Any], **options: Any) -> Stage:
        return Stage(name, RUN_FOLDERS[name], marker_settings(settings), upstream, run, **options)

    stages = [stage("prepare", config.prepare, [], lambda folder: prepare(config.prepare, folder, progress=True),
                    fresh_on_change=False)] if config.prepare is not None else []
    if config.train:
        stages.append(stage("train", config.train, ["prepare"], lambda folder: _train(config, prepared, folder)))
    if config.finetune:
        stages.append(stage("finetune", config.finetune, ["prepare"],
                            lambda folder: _finetune(config, prepared, folder), shares_work=True))
    if config.generate:
        maker = "train" if config.train else "finetune"
        stages.append(stage("generate", config.generate, [maker],
                            lambda folder: _generate(config, model, prepared, folder), shares_work=True))
    if config.audit:
        stages.append(stage("audit", config.audit, ["prepare", "generate"],
                            lambda folder: _audit(config, prepared, synthetic, folder)))
    if config.validate_:
        upstream = ["prepare", "generate"] if config.generate else ["prepare"]
        stages.append(stage("validate", config.validate_, upstream,
                            lambda folder: _validate(config, prepared, synthetic, folder), shares_work=True))
    if config.domain_shift:
        stages.append(stage("domain_shift", config.domain_shift, ["prepare", "generate"],
                            lambda folder: _domain_shift(config, prepared, synthetic, folder)))
    if config.reader_study:
        stages.append(stage("reader_study", config.reader_study, ["prepare", "generate"],
                            lambda folder: _reader_study(config, prepared, synthetic, folder)))
    return stages


def _domain_shift(config: RunConfig, prepared: Path, synthetic: Path, folder: Path) -> None:
    from dermsynth.audit.domain_shift import run_domain_shift

    stage = config.domain_shift
    external = stage.external or config.validate_.test
    run_domain_shift(prepared, synthetic, list(external), folder, size=stage.image_size,
                     real_per_class=config.real_per_class, subsample_seed=config.subsample_seed,
                     fraction=stage.fraction, max_per_class=stage.max_per_class, seed=stage.seed,
                     synthetic_preprocess=config.validate_.synthetic_preprocess if config.validate_ else True,
                     features=stage.features, device=config.device, progress=True)


def _reader_study(config: RunConfig, prepared: Path, synthetic: Path, folder: Path) -> None:
    from dermsynth.reader.build import KEY_FOLDER, READER_FOLDER, StudySettings, build_study

    for part in (READER_FOLDER, KEY_FOLDER):  # an interrupted build: start it again
        shutil.rmtree(folder / part, ignore_errors=True)
    build_study(prepared, synthetic, folder, StudySettings(**config.reader_study.model_dump()), progress=True)


def _train(config: RunConfig, prepared: Path, folder: Path) -> None:
    from dermsynth.diffusion.training import train

    # None is train's own default: a fixed count (all cores of this process), so float sums repeat run to run.
    settings = {"device": config.device, "threads": config.threads, **config.train.settings}
    # resume=True: an interrupted run continues from its newest checkpoint instead of starting over.
    train(prepared, folder, config.train.preset, settings, resume=True, progress=True)


def _finetune(config: RunConfig, prepared: Path, folder: Path) -> None:
    from dermsynth.diffusion.sd.finetune import finetune

    finetune(config.finetune, folder, prepared, resume="latest", progress=True)


def _generate(config: RunConfig, model: Path, prepared: Path, folder: Path) -> None:
    from dermsynth.diffusion.generate import generate

    g = config.generate
    settings = g.model_dump(exclude={"balance", "per_class", "device", "threads"})
    generate(model, folder, GenerateConfig(**settings, device=g.device if g.device is not None else config.device,
                                           threads=g.threads if g.threads is not None else config.threads,
                                           per_class=None if g.balance else g.per_class,
                                           balance=prepared if g.balance else None))


def _audit(config: RunConfig, prepared: Path, synthetic: Path, folder: Path) -> None:
    from dermsynth.audit.run import audit

    settings = config.audit if config.audit.device != "auto" else config.audit.model_copy(
        update={"device": config.device})
    audit(prepared, synthetic, folder, settings, progress=True)


def _validate(config: RunConfig, prepared: Path, synthetic: Path, folder: Path) -> None:
    from dermsynth.evaluate.validate import validate

    stage = config.validate_
    folders = ([synthetic] if config.generate else []) + list(stage.extra_synthetic)
    settings = stage.model_dump(exclude={"extra_synthetic"})
    settings.update(real=prepared, synthetic=folders)
    if settings["device"] == "auto":
        settings["device"] = config.device
    if settings["reconstruction"] is None and config.train and any(
            parse_regime(r).method == "reconstruct" for r in stage.regimes):
        with current_share().main_first():  # one process makes them, the others then find them made
            settings["reconstruction"] = _own_reconstructions(prepared, folder.parent / RUN_FOLDERS["train"],
                                                              folder.parent / "reconstruction", config.device)
    validate(ValidateConfig(**settings), folder.parent, progress=True)


def _own_reconstructions(prepared: Path, model: Path, out: Path, device: str) -> Path:
    """The run's own model's reconstructions of its training sample, for the reconstruct controls: made once,
    made again when the model's autoencoder has changed (the folder is written whole or not at all)."""
    from dermsynth.diffusion.scratch.reconstruct import reconstruct
    from dermsynth.utils import sha256_file

    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    record = out / "reconstruct.json"
    if record.is_file() and weights.is_file():
        with contextlib.suppress(DermsynthError):
            if read_json(record, "").get("vae_sha256") == sha256_file(weights):
                return out
    shutil.rmtree(out, ignore_errors=True)
    reconstruct(prepared, out, model=model, split="train", model_sample=True, device=device)
    return out


def marker_settings(settings: Any) -> dict[str, Any]:
    """A stage's settings as its marker hashes them. A field added in a later release (``_added_later``) counts
    only when it is set, so a run folder finished by an earlier release stays up to date."""
    data = settings.model_dump(mode="json")
    for name in getattr(settings, "_added_later", ()):
        if data.get(name) is None:
            data.pop(name, None)
    return data


def stage_digest(stage: Stage, hashes: dict[str, str]) -> str:
    """What a stage's marker must hold for the stage to be up to date: its settings and its upstream digests."""
    return stable_hash({"settings": stage.settings, "upstream": [hashes[u] for u in stage.upstream]})


def _marker_hash(folder: Path, name: str = MARKER) -> str | None:
    return marker_hash(folder / name)  # damaged or missing: the stage runs again


def run_pipeline(config: RunConfig, out: str | Path) -> list[StageOutcome]:
    """Run (or resume) every configured stage into ``out``.

    Under ``torchrun`` / ``accelerate launch`` every process runs this: finetune, generate and validate share their
    work between the processes; prepare, train, audit, the markers and the report are the main process's."""
    from dermsynth.preflight import check_study

    share = current_share()
    _check_not_inside_inputs(config, Path(out))
    if share.is_main:
        check_study(config, Path(out))  # what cannot finish stops here, before any compute
    out = ensure_writable_dir(out)
    if share.is_main:
        _write_provenance(config, out)
    say = console.print if share.is_main else _silent
    hashes: dict[str, str] = {}
    if config.prepared is not None:  # no prepare stage: the named folder (the plan above checked its counts)
        hashes["prepare"] = _link_prepared(config.prepared, out / RUN_FOLDERS["prepare"], share.is_main)
    outcomes = []
    stages = build_stages(config, out)
    for index, stage in enumerate(stages, start=1):
        folder = out / stage.folder
        digest = stage_digest(stage, hashes)
        hashes[stage.name] = digest
        started = time.time()
        # The main process reads the marker (before it changes it) and tells the others.
        up_to_date = share.broadcast(_marker_hash(folder) == digest if share.is_main else None)
        if up_to_date:
            say(f"[{index}/{len(stages)}] {stage.name}: up to date, skipped")
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0, folder))
            if stage.name == "prepare":
                check_synthetic_supply(config, folder)
            continue
        say(f"[{index}/{len(stages)}] {stage.name} ...")
        if share.is_main:
            _start_stage(folder, digest, stage.fresh_on_change)
        share.barrier()
        if stage.shares_work or share.is_main:
            with torch_threads(share.cpu_threads(config.threads) if stage.shares_work else _main_threads(share)):
                stage.run(folder)
        share.barrier()  # the others wait for a main-process stage here
        seconds = time.time() - started
        if share.is_main:
            write_json_atomic(folder / MARKER, {"hash": digest, "finished_utc": _now(), "seconds": round(seconds, 2)})
            (folder / RUNNING).unlink(missing_ok=True)
        say(f"[{index}/{len(stages)}] {stage.name}: done in {seconds:.0f} s")
        outcomes.append(StageOutcome(stage.name, "ran", seconds, folder))
        if stage.name == "prepare":
            check_synthetic_supply(config, folder)
    if config.report and share.is_main:
        _report(out)
    return outcomes


def _link_prepared(source: Path, link: Path, is_main: bool) -> str:
    """``link`` -> the prepared folder ``source`` (so that every stage and the report find it where a prepare stage
    puts it); the hash of its metadata and summary, which the downstream stages' hashes include."""
    from dermsynth.data.dataset import load_prepared
    from dermsynth.utils import sha256_file

    load_prepared(source)  # a clear error when it is not a prepared folder
    target = source.resolve()
    if is_main:
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if link.exists() and not link.is_symlink():
            raise DermsynthError(f"prepared: {link} already holds another prepared dataset; use another --out")
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return stable_hash([sha256_file(target / "metadata.csv"), sha256_file(target / "prepare.json")])


def _main_threads(share: ProcessShare) -> int | None:
    """A stage the main process runs alone may use every core (a launcher sets OMP_NUM_THREADS=1)."""
    return usable_cores() if share.distributed else None


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def check_synthetic_supply(config: RunConfig, prepared: Path) -> None:
    """Fail before training when a generator (from scratch or fine-tuned) makes fewer images of a class than a
    validation regime takes: the preflight's check, on the prepared folder's real counts."""
    from dermsynth.preflight import plan_study

    plan = plan_study(config.model_copy(update={"prepare": None, "prepared": prepared}), prepared.parent)
    problems = [p for p in plan.problems if p.startswith("validate:")]
    if problems:
        raise DermsynthError(problems[0])


def _report(out: Path) -> None:
    from dermsynth.report.build import build_report

    html, _ = build_report(out)
    console.print(f"report: {html}")


def _start_stage(folder: Path, digest: str, fresh_on_change: bool) -> None:
    """Resume a stage interrupted with the same settings; start over one made with other settings."""
    previous = _marker_hash(folder) or _marker_hash(folder, RUNNING)
    if fresh_on_change and previous is not None and previous != digest:
        shutil.rmtree(folder)
    (folder / MARKER).unlink(missing_ok=True)
    write_json_atomic(folder / RUNNING, {"hash": digest, "started_utc": _now()})


def _check_not_inside_inputs(config: RunConfig, out: Path) -> None:
    root = config.prepare.root if config.prepare is not None else None
    if root is not None:
        root, target = root.resolve(), out.resolve()
        if target == root or root in target.parents:
            raise DermsynthError(f"prepare.root: the run folder {out} is inside the dataset folder {root}")
    if root is not None and not root.exists():
        raise DermsynthError(f"prepare.root: folder not found: {root}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_provenance(config: RunConfig, out: Path) -> None:
    from importlib.metadata import PackageNotFoundError, version

    write_text_atomic(out / "config.resolved.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("dermsynth", "torch", "diffusers", "transformers", "accelerate", "peft", "numpy", "pandas",
                    "scikit-learn", "opencv-python-headless", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    write_json_atomic(out / "versions.json", versions)


def demo_config() -> RunConfig:
    """The demo study: the embedded CC0 sample with CPU-sized settings."""
    from importlib import resources

    path = Path(str(resources.files("dermsynth") / "configs" / "demo.yaml"))
    return load_run_config(path)
