"""The training loop every generator family shares: a step/minute budget, the loss log, resumable checkpoints
with their resume checks, progress, the thread policy and the common fields of the model JSON.

A family subclasses :class:`TrainingHarness` and supplies only what is its own::

    train_step() -> float          one optimisation step; returns its loss
    write_state(folder) -> dict    its weights, optimiser, schedule and RNG into a checkpoint folder; returns
                                   small JSON-able values (EMA counters, data cursor) kept in state.json
    read_state(folder, state)      the same, read back and checked (a damaged file raises); applies nothing
    apply_state(saved)             what read_state returned, applied
    on_step(seconds)               optional: sample grids or validation images at their own cadence

``train()`` then runs the budget loop (nanoGPT-style, on one screen) and returns how long it ran and why it stopped.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel, ValidationError

from dermsynth.config import quiet_renames
from dermsynth.diffusion.checkpoints import latest_checkpoint_step, read_newest_intact, save_checkpoint
from dermsynth.diffusion.threads import ThreadTuner
from dermsynth.errors import UNREADABLE_ARTIFACT_ERRORS, DermsynthError
from dermsynth.progress import console, make_progress
from dermsynth.utils import write_csv_atomic, write_json_atomic

StepCallback = Callable[[int, float], None]
LOSS_KEEP, LOSS_NEW = 0.98, 0.02  # EMA of the logged loss; checkpointed, so a resumed run logs the same numbers


@dataclass(frozen=True)
class LoopSettings:
    """What bounds and records a run; each family maps its own config onto these."""
    max_steps: int
    max_minutes: float | None
    log_every: int
    checkpoint_every: int
    checkpoints_total_limit: int | None
    resumable: frozenset[str]          # config fields a resumed run may change (budgets, monitoring)
    steps_limit: str = "max_steps"     # how the model JSON names a stop at max_steps
    task: str = "train"                # the progress bar's label


def changed_settings(config: BaseModel, saved: dict[str, Any], ignore: frozenset[str]) -> list[str]:
    """Fields of ``config``, other than ``ignore``, whose value differs in ``saved`` (a config dumped as JSON)."""
    # A saved config from an older version: fill its defaults and read its old names (without notices).
    with contextlib.suppress(ValidationError), quiet_renames():
        saved = type(config).model_validate(saved).model_dump(mode="json")
    current = config.model_dump(mode="json")
    return sorted(k for k in current if k not in ignore and saved.get(k) != current[k])


class TrainingHarness(abc.ABC):
    """Budget loop, log, checkpoints and resume checks around a family's ``train_step``."""

    data_description = "the prepared training data"  # named when a checkpoint's data hash differs

    def __init__(self, out: Path, config: BaseModel, threads: ThreadTuner, loop: LoopSettings | None = None,
                 data_sha256: str = "", progress: bool = False, callback: StepCallback | None = None):
        """``loop`` and ``data_sha256`` may be set later, before :meth:`train` or a resume (a family may know its
        step total or its data only after setting up)."""
        self.out, self.config, self.threads = out, config, threads
        self.loop: LoopSettings = loop  # type: ignore[assignment]
        self.data_sha256, self.progress, self.callback = data_sha256, progress, callback
        self.step = 0
        self.seconds_before = 0.0          # training time of earlier runs (a resumed budget counts them)
        self.smoothed_loss: float | None = None
        self.log: list[dict[str, Any]] = []
        self.losses: list[float] = []      # this process's losses in this run
        self.budget_used = 0.0             # fraction of max_minutes spent (0 without one): time-aware schedules

    # ----- what a family supplies

    @abc.abstractmethod
    def train_step(self) -> float: ...

    @abc.abstractmethod
    def write_state(self, folder: Path) -> dict[str, Any]: ...

    @abc.abstractmethod
    def read_state(self, folder: Path, state: dict[str, Any]) -> Any: ...

    @abc.abstractmethod
    def apply_state(self, saved: Any) -> None: ...

    # ----- the loop's own part of a checkpoint: optimiser, schedule, data-order RNG and torch's RNG

    def loop_state(self) -> dict[str, Any]:
        """What every trainer's checkpoint holds besides its weights; ``restore_loop_state`` puts it back, so a
        resumed run continues exactly (``self.optimizer``, ``self.lr_scheduler`` and ``self.generator``)."""
        return {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def restore_loop_state(self, training: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(training["optimizer"])
        self.lr_scheduler.load_state_dict(training["lr_scheduler"])
        self.generator.set_state(training["generator"].cpu())
        torch.set_rng_state(training["torch_rng"].cpu())

    def on_step(self, seconds: float) -> None:  # noqa: B027 (an optional hook: doing nothing is the default)
        """Called after every step with the training time so far (grids, validation images)."""

    def lr_factor(self, step: int, warmup: int, schedule: str) -> float:
        """Linear warmup, then constant or cosine decay. The cosine follows whichever budget ends first, steps or
        minutes, so a run stopped by max_minutes still ends annealed; with a step budget alone it is diffusers'
        cosine schedule exactly."""
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = max((step - warmup) / max(1, self.loop.max_steps - warmup), self.budget_used)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    def optimizer_step(self, loss: torch.Tensor, parameters: Iterator[torch.nn.Parameter],
                       max_grad_norm: float | None) -> float:
        """Backward, optional gradient clipping, then a step of ``self.optimizer`` and ``self.lr_scheduler``."""
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def learning_rate(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])  # families keep a diffusers/torch scheduler here

    @property
    def is_main_process(self) -> bool:
        return True

    # ----- the loop

    def train(self) -> tuple[float, str]:
        """Train to the step or minute budget (minutes count earlier runs too); returns (seconds, stopped_by).
        The last step always ends in a checkpoint, so a longer budget can resume from it."""
        started = time.monotonic()
        budget = self.loop.max_minutes * 60 if self.loop.max_minutes else math.inf

        def elapsed() -> float:
            return self.seconds_before + time.monotonic() - started

        stopped_by = self.loop.steps_limit
        with self._progress() as advance:
            while self.step < self.loop.max_steps:
                if elapsed() >= budget:
                    stopped_by = "max_minutes"
                    break
                self.budget_used = elapsed() / budget
                loss = self.threads.run(self.train_step)
                self.step += 1
                self._record(loss, elapsed())
                self.on_step(elapsed())
                if self.step % self.loop.checkpoint_every == 0:
                    self.save_checkpoint(elapsed())
                advance(loss)
                if self.callback is not None:
                    self.callback(self.step, loss)
        seconds = elapsed()
        if latest_checkpoint_step(self.out) != self.step:
            self.save_checkpoint(seconds)
        return seconds, stopped_by

    def _record(self, loss: float, seconds: float) -> None:
        self.losses.append(loss)
        previous = self.smoothed_loss
        self.smoothed_loss = loss if previous is None else LOSS_KEEP * previous + LOSS_NEW * loss
        if self.step % self.loop.log_every and self.step != 1:
            return
        self.log.append({"step": self.step, "loss": self.smoothed_loss, "step_loss": loss,
                         "lr": self.learning_rate(), "seconds": round(seconds, 1), "threads": self.threads.current})
        if self.is_main_process:
            write_csv_atomic(self.out / "train_log.csv", pd.DataFrame(self.log))

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Callable[[float], None]]:
        if not (self.progress and self.is_main_process):
            yield lambda loss: None
            return
        with make_progress() as bar:
            task = bar.add_task(self.loop.task, total=self.loop.max_steps, completed=self.step, status="")
            yield lambda loss: bar.update(task, completed=self.step, status=f"loss {self.smoothed_loss:.4f}")

    # ----- checkpoints

    def save_checkpoint(self, seconds: float) -> None:
        if self.is_main_process:
            save_checkpoint(self.out, self.step, lambda folder: self._write_checkpoint(folder, seconds),
                            self.loop.checkpoints_total_limit)

    def _write_checkpoint(self, folder: Path, seconds: float) -> None:
        family = self.write_state(folder)
        write_json_atomic(folder / "state.json", {
            "step": self.step, "seconds": seconds, "smoothed_loss": self.smoothed_loss, "log": self.log,
            "threads": self.threads.state_dict(), "config": self.config.model_dump(mode="json"),
            "data_sha256": self.data_sha256, "family": family})

    def resume_newest(self) -> Path | None:
        """Continue from the newest checkpoint that reads back whole; None when there is none."""
        found = read_newest_intact(self.out, self.read_checkpoint)
        if found is None:
            return None
        self.apply_checkpoint(found[1])
        return self._resumed(found[0])

    def resume_from(self, folder: Path) -> Path:
        """Continue from one named checkpoint; a damaged one is a one-line error, not a silent fallback."""
        try:
            saved = self.read_checkpoint(folder)
        except UNREADABLE_ARTIFACT_ERRORS as exc:
            raise DermsynthError(f"--resume {folder}: damaged checkpoint ({type(exc).__name__}); "
                                 "pass --resume latest to use the newest intact one") from None
        self.apply_checkpoint(saved)
        return self._resumed(folder)

    def _resumed(self, folder: Path) -> Path:
        if self.is_main_process:
            console.print(f"resumed from {folder.name}")
        return folder

    def read_checkpoint(self, folder: Path) -> dict[str, Any]:
        """Everything ``folder`` holds, read and checked before any of it is applied: a damaged file raises one of
        UNREADABLE_ARTIFACT_ERRORS and leaves the trainer untouched; changed data or settings are refused."""
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        if state["data_sha256"] != self.data_sha256:
            raise DermsynthError(f"cannot resume {folder}: {self.data_description} changed since that run")
        changed = self.changed_settings(state["config"])
        if changed:
            raise DermsynthError(f"cannot resume {folder}: setting(s) {', '.join(changed)} differ from that run")
        return {"state": state, "family": self.read_state(folder, state)}

    def changed_settings(self, saved: dict[str, Any]) -> list[str]:
        """Config fields that determine what is learned and differ between ``saved`` and this run."""
        return changed_settings(self.config, saved, self.loop.resumable)

    def apply_checkpoint(self, saved: dict[str, Any]) -> None:
        state = saved["state"]
        self.apply_state(saved["family"])
        self.step, self.seconds_before, self.log = state["step"], state["seconds"], state["log"]
        self.smoothed_loss = state.get("smoothed_loss")
        self.threads.load_state_dict(state.get("threads"))

    # ----- the finished model

    def run_record(self, seconds: float, stopped_by: str, device: torch.device) -> dict[str, Any]:
        """The model JSON's fields that every family writes the same way."""
        return {
            "config": self.config.model_dump(mode="json"),
            "steps": self.step, "seconds": round(seconds, 1), "stopped_by": stopped_by,
            "final_loss": self.smoothed_loss,
            "device": str(device),
            "threads": {"final": self.threads.current, "switches": self.threads.switches,
                        "adaptive": self.threads.adaptive},
            "reproducible": self.reproducibility(device),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def reproducibility(self, device: torch.device) -> dict[str, Any]:
        """Whether the same command on the same machine gives these weights bit for bit, and if not, why not."""
        reasons = []
        if self.threads.adaptive:
            reasons.append("threads: adaptive (the thread count, and so the float sums, follow step timings)")
        if self.loop.max_minutes:
            reasons.append("max_minutes (where the run stops and its learning-rate schedule follow wall-clock time)")
        if device.type == "cuda":
            reasons.append("CUDA kernels (not bitwise deterministic unless torch's deterministic algorithms are on)")
        return {"bitwise": not reasons, "reasons": reasons, "threads": self.threads.max_threads}
