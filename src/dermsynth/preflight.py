"""The plan of a study, made before any compute: `dermsynth run CONFIG --dry-run` prints it, and every `run` makes it
first, so that a study that cannot finish stops in one line before a GPU minute is spent.

It checks what each stage will find: the dataset root and its reader (metadata read, labelled and split as prepare
would, without decoding an image), the prepared size against each model's resolution, the base model's files, the
classes each generator makes and how many against what every validation regime takes per class, and the output
folder and its free disk.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dermsynth.errors import DermsynthError

if TYPE_CHECKING:
    from dermsynth.pipeline import RunConfig

PNG_BYTES_PER_PIXEL = 2.0  # lossless RGB dermoscopy images: ~2/3 of the raw 3 bytes (measured on the sample)


@dataclass
class StudyPlan:
    """What each stage will do (lines to print) and what would stop it (one line each)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    train_counts: dict[str, int] | None = None  # real training images per class, as prepare will make them
    image_size: int | None = None  # side of the prepared images
    made: dict[str, int] = field(default_factory=dict)  # synthetic images per class that generate will make
    generated_size: int = 0  # side of the generator's images
    bytes_needed: float = 0.0

    def say(self, stage: str, text: str) -> None:
        self.lines.append(f"{stage:9s} {text}")

    def refuse(self, stage: str, text: str) -> None:
        self.problems.append(f"{stage}: {text}")

    def text(self) -> str:
        verdict = (["", "Nothing above stops the study."] if not self.problems else
                   ["", f"{len(self.problems)} problem(s): the study cannot finish as configured:",
                    *(f"  - {p}" for p in self.problems)])
        return "\n".join([*self.lines, *verdict])


def plan_study(config: RunConfig, out: Path) -> StudyPlan:
    """Every stage's plan and problems; reads metadata and folders only."""
    plan = StudyPlan()
    _dataset(config, plan)
    if config.train is not None:
        _train(config, plan)
    if config.finetune is not None:
        _finetune(config, plan)
    if config.generate is not None:
        _generate(config, plan)
    if config.validate_ is not None:
        _validate(config, plan)
    _output(out, plan)
    return plan


def check_study(config: RunConfig, out: Path) -> StudyPlan:
    """The plan, or the first problem as a one-line error."""
    plan = plan_study(config, out)
    if plan.problems:
        more = f" (and {len(plan.problems) - 1} more: dermsynth run CONFIG --dry-run lists them)" \
            if len(plan.problems) > 1 else ""
        raise DermsynthError(plan.problems[0] + more)
    return plan


# --------------------------------------------------------------------------- stages


def _dataset(config: RunConfig, plan: StudyPlan) -> None:
    from dermsynth.data.dataset import load_prepared

    if config.prepared is not None:
        try:
            data = load_prepared(config.prepared)
        except DermsynthError as exc:
            plan.refuse("prepared", str(exc))
            return
        train = data.split("train")["label"].value_counts()
        plan.train_counts = {c: int(train.get(c, 0)) for c in data.classes}
        plan.image_size = data.image_side() or data.image_size
        plan.say("prepared", f"{config.prepared}: {len(data.metadata)} images at {plan.image_size} px; train split "
                             f"{_counts(plan.train_counts)}")
        return
    from dermsynth.data.prepare import expected_split_counts

    prep = config.prepare
    assert prep is not None  # RunConfig requires prepare or prepared
    try:
        splits = expected_split_counts(prep)
    except DermsynthError as exc:
        plan.refuse("prepare", str(exc))
        return
    plan.train_counts, plan.image_size = splits["train"], prep.preprocess.image_size
    total = sum(n for split in splits.values() for n in split.values())
    where = f"{prep.root}" if prep.root is not None else "the embedded sample"
    plan.say("prepare", f"reader {prep.dataset} on {where}: {total} labelled images -> {plan.image_size} px; "
                        + "; ".join(f"{name} {_counts(counts)}" for name, counts in splits.items()))
    plan.bytes_needed += total * plan.image_size**2 * PNG_BYTES_PER_PIXEL


def _train(config: RunConfig, plan: StudyPlan) -> None:
    from dermsynth.diffusion.training import size_and_budget

    stage = config.train
    size, budget = size_and_budget(stage.preset, dict(stage.settings))
    plan.generated_size = size
    plan.say("train", f"preset {stage.preset}: {size} px, {budget}; makes every prepared class")
    if plan.image_size is not None and plan.image_size < size:
        plan.refuse("train", f"the model makes {size} px images but prepare makes {plan.image_size} px ones; set "
                             f"prepare.preprocess.image_size to at least {size}")
    if plan.train_counts is not None:
        plan.made = dict.fromkeys(plan.train_counts, 0)


def _finetune(config: RunConfig, plan: StudyPlan) -> None:
    cfg = config.finetune
    plan.generated_size = cfg.resolution
    _base_model(cfg.base, cfg.base_config, plan)
    if plan.image_size is not None and plan.image_size < cfg.resolution and not cfg.allow_upsample:
        plan.refuse("finetune", f"trains at {cfg.resolution} px but prepare makes {plan.image_size} px images; set "
                                f"prepare.preprocess.image_size to {cfg.resolution}, or allow_upsample: true")
    if plan.train_counts is None:
        return
    classes = cfg.classes_made(plan.train_counts)
    unknown = [c for c in classes if c not in plan.train_counts]
    plan.made = dict.fromkeys(classes, 0)
    plan.say("finetune", f"{cfg.method} at {cfg.resolution} px, {cfg.max_steps} steps; the model makes "
                         f"{', '.join(classes) or 'no class'}")
    if unknown and config.validate_ is not None:
        plan.refuse("finetune", f"the model makes class(es) {', '.join(unknown)} that the prepared data does not "
                                f"have ({', '.join(plan.train_counts)}); name prepared labels")


def _base_model(base: str | None, base_config: str | None, plan: StudyPlan) -> None:
    from dermsynth.diffusion.sd.models import describe_base

    if not base:
        plan.refuse("finetune", "no base model given (finetune.base: a diffusers folder, a .safetensors file or a "
                                "hub id)")
        return
    try:
        kind = describe_base(base)
    except DermsynthError as exc:
        plan.refuse("finetune", str(exc))
        return
    if kind == "hub":
        plan.say("finetune", f"base {base}: no such local folder, so read as a hub id, downloaded when the stage "
                             "starts (needs the network; for a local copy, check the path)")
    elif kind == "single-file" and base_config is None:
        plan.say("finetune", f"base {base}: one file; its components' configs come with dermsynth or base_config")
    else:
        plan.say("finetune", f"base {base}: a local {kind}")
        if kind == "folder":
            plan.bytes_needed += sum(p.stat().st_size for p in Path(base).rglob("*") if p.is_file())


def _generate(config: RunConfig, plan: StudyPlan) -> None:
    stage = config.generate
    if plan.train_counts is None or not plan.made:
        return
    if stage.balance:
        largest = max(plan.train_counts.values())
        plan.made = {c: largest - plan.train_counts.get(c, 0) for c in plan.made}
    else:
        plan.made = dict.fromkeys(plan.made, stage.per_class)
    plan.say("generate", f"makes {_counts(plan.made)}")
    plan.bytes_needed += sum(plan.made.values()) * plan.generated_size**2 * PNG_BYTES_PER_PIXEL


def _validate(config: RunConfig, plan: StudyPlan) -> None:
    from dermsynth.evaluate.regimes import parse_regime, synthetic_counts

    stage = config.validate_
    if plan.train_counts is None:
        return
    cap = stage.real_per_class
    few = {c: n for c, n in plan.train_counts.items() if cap and n < cap}
    if few:
        label, n = next(iter(few.items()))
        plan.refuse("validate", f"real_per_class {cap} but class {label!r} has {n} training images; lower "
                                "real_per_class (validate's and the run's) or use more data")
    real = {c: min(n, cap) if cap else n for c, n in plan.train_counts.items()}
    supply = dict(plan.made)
    for folder in stage.extra_synthetic:
        found = _class_folder_counts(folder)
        if found is None:
            plan.refuse("validate", f"extra_synthetic folder not found: {folder}")
            continue
        for label, n in found.items():
            supply[label] = supply.get(label, 0) + n
    plan.say("validate", f"{stage.model}, {stage.seeds} seed(s), real training images {_counts(real)}"
                         f"{f' (at most {cap} per class)' if cap else ''}")
    plan_of = config.generate
    source = ("the synthetic folders" if plan_of is None else "generate (balance: true fills only the smaller "
              "classes)" if plan_of.balance else f"generate (per_class {plan_of.per_class})")
    for text in stage.regimes:
        regime = parse_regime(text)
        if not regime.uses_synthetic:
            plan.say("validate", f"  {regime.name}: real images only")
            continue
        needed = dict(zip(real, synthetic_counts(regime, list(real.values()), stage.class_mix), strict=True))
        plan.say("validate", f"  {regime.name}: takes synthetic {_counts(needed)}")
        short = {c: n for c, n in needed.items() if n > supply.get(c, 0)}
        if short:
            label, n = next(iter(short.items()))
            have = supply.get(label, 0)
            fix = (f"the model makes no {label!r} images: use a generator that makes every class the regime "
                   "takes (finetune.instance_prompts or method: captions), or class_mix: balanced with add:<n>"
                   if label not in supply else f"set generate.per_class to at least {max(short.values())}"
                   if plan_of is not None else "add images to the synthetic folders")
            have = have if label in supply else 0
            verb = "makes" if plan_of is not None else "hold"
            plan.refuse("validate", f"{regime.name} takes {n} synthetic {label!r} images but {source} {verb} "
                                    f"{have}; {fix}, or drop the regime")


def _class_folder_counts(folder: Path) -> dict[str, int] | None:
    from dermsynth.data.images import list_images
    from dermsynth.data.synthetic_folders import class_folders

    if not folder.is_dir():
        return None
    return {p.name: len(list_images(p)) for p in class_folders(folder)}


def _output(out: Path, plan: StudyPlan) -> None:
    existing = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if existing.is_file():
        plan.refuse("output", f"{existing} is a file, not a folder")
        return
    free = shutil.disk_usage(existing).free
    need = plan.bytes_needed
    plan.say("output", f"{out}: about {need / 2**30:.1f} GiB of images and models (estimate), "
                       f"{free / 2**30:.1f} GiB free")
    if need > free:
        plan.refuse("output", f"needs about {need / 2**30:.1f} GiB but {existing} has {free / 2**30:.1f} GiB free")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in counts.items()) or "none"
