"""torch's intra-op thread count for training: fixed by default, or (``threads: adaptive``) picked by timing real
training steps and following changes in machine load.

The thread count changes floating-point results (a backward pass with 1 and 2 threads differs by ~1e-6, and
training amplifies it), so only a fixed count gives the same weights for the same command, and an exact resume.
That is the default. On an idle 2-core machine two threads train ~1.5x faster than one. When other processes
compete for the cores, OpenMP threads wait for each other at every parallel region and a multi-threaded step can become
10-25x slower than a single-threaded one (measured here: 0.06 vs 1.5 steps/s with a load average of ~5).
So now and then one step runs with the other thread count; if it beats the recent median of the current
setting by a margin, that setting is adopted. A probe that loses doubles the wait until the next one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class ThreadTuner:
    def __init__(self, threads: int | None = None, adaptive: bool = False, every: int = 10,
                 every_seconds: float = 20.0, max_every: int = 1000, margin: float = 0.9):
        """``threads`` (None: torch's current count) is the count; ``adaptive`` switches between 1 and it.

        A probe is due after ``every`` steps or ``every_seconds`` (whichever comes first: a step that has become
        20x slower must not delay the probe that would fix it); a losing probe doubles both.
        """
        self.max_threads = threads or torch.get_num_threads()
        self.fixed = not adaptive
        self.current = self.max_threads if self.fixed or not machine_is_busy() else 1
        self.base = (every, every_seconds)
        self.every, self.every_seconds, self.max_every, self.margin = every, every_seconds, max_every, margin
        self.recent: deque[float] = deque(maxlen=15)
        self.steps_since_probe, self.seconds_since_probe = 0, 0.0
        self.switches = 0
        torch.set_num_threads(self.current)

    @property
    def adaptive(self) -> bool:
        return not self.fixed and self.max_threads > 1

    def run(self, step: Callable[[], T]) -> T:
        """Run one training step, timing it; occasionally with the other thread count as a probe."""
        due = self.steps_since_probe >= self.every or self.seconds_since_probe >= self.every_seconds
        probe = self.adaptive and due and len(self.recent) >= 3
        threads = (1 if self.current > 1 else self.max_threads) if probe else self.current
        torch.set_num_threads(threads)
        start = time.perf_counter()
        result = step()
        seconds = time.perf_counter() - start
        if probe:
            self._judge(threads, seconds)
        else:
            self.recent.append(seconds)
            self.steps_since_probe += 1
            self.seconds_since_probe += seconds
        return result

    def _judge(self, threads: int, seconds: float) -> None:
        self.steps_since_probe, self.seconds_since_probe = 0, 0.0
        if seconds < self.margin * statistics.median(self.recent):
            self.current = threads
            self.every, self.every_seconds = self.base
            self.recent.clear()
            self.switches += 1
        else:
            self.every = min(2 * self.every, self.max_every)
            self.every_seconds = min(2 * self.every_seconds, 30 * self.base[1])
        torch.set_num_threads(self.current)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Run a block at the full thread count whatever the step uses: results that outlive the step (cached
        latents or text embeddings) must not depend on which step first needed them."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.max_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # Floating-point sums depend on the thread count, so an exact resume needs the tuner's schedule as well:
    # which setting is current, and when the next probe is due.
    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "every": self.every, "every_seconds": self.every_seconds,
                "recent": list(self.recent), "steps_since_probe": self.steps_since_probe,
                "seconds_since_probe": self.seconds_since_probe, "switches": self.switches}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue a saved schedule (a fixed count stays as configured; None, from older checkpoints: no-op)."""
        if not state or self.fixed:
            return
        self.current = min(int(state["current"]), self.max_threads)
        self.every, self.every_seconds = int(state["every"]), float(state["every_seconds"])
        self.recent = deque((float(s) for s in state["recent"]), maxlen=self.recent.maxlen)
        self.steps_since_probe = int(state["steps_since_probe"])
        self.seconds_since_probe = float(state["seconds_since_probe"])
        self.switches = int(state["switches"])
        torch.set_num_threads(self.current)


def thread_tuner(setting: int | str | None, device: torch.device, every: int = 10) -> ThreadTuner:
    """The tuner a training config's ``threads`` asks for (a GPU run keeps torch's count, fixed)."""
    if device.type != "cpu":
        return ThreadTuner(torch.get_num_threads())
    if setting == "adaptive":
        return ThreadTuner(None, adaptive=True, every=every)
    return ThreadTuner(int(setting) if setting is not None else None)


def machine_is_busy() -> bool:
    """Other processes already keep the cores busy (1-minute load average >= cores): start on one thread."""
    return os.getloadavg()[0] >= (os.cpu_count() or 1)
