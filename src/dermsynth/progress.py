"""Progress bars for long work (rich), quiet when disabled or when output is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=transient,
    )


def track(iterable: Iterable[T], total: int, description: str, enabled: bool = True) -> Iterator[T]:
    if not enabled:
        yield from iterable
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in iterable:
            yield item
            progress.advance(task)


@contextlib.contextmanager
def quiet_hf_libraries() -> Iterator[None]:
    """No diffusers/transformers bars ("Loading pipeline components", "Writing model shards") in the middle of our
    own progress output, and no diffusers warnings (e.g. "no LoRA keys for CLIPTextModel", expected for a UNet-only
    adapter); errors still raise. The previous states come back afterwards."""
    # Imported here: this module is imported everywhere, and these libraries take seconds to import.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(module, module.is_progress_bar_enabled()) for module in (diffusers_logging, transformers_logging)]
    level = diffusers_logging.get_verbosity()
    for module, _ in states:
        module.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        for module, enabled in states:
            if enabled:
                module.enable_progress_bar()
