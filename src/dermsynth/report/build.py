"""`dermsynth report`: gather a run folder's stage outputs into one self-contained HTML page and a Markdown summary.

Each ``*_section`` function reads one stage's outputs and returns the template's context for that section, or
None when the stage's outputs are absent (the page then says the stage was not run). Figures are embedded as
base64 PNG data URIs and the CSS is inline, so ``report.html`` opens anywhere without a network.

The sections are in ``report/sections/`` (one module each); ``report/folder.py`` reads the run folder."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from dermsynth.errors import DermsynthError
from dermsynth.report.folder import STAGES, RunFolder, Section
from dermsynth.report.sections.audit import audit_section
from dermsynth.report.sections.dataset import dataset_section
from dermsynth.report.sections.domain_shift import domain_shift_section
from dermsynth.report.sections.overview import overview_section
from dermsynth.report.sections.preprocessing import preprocessing_section
from dermsynth.report.sections.provenance import provenance_section
from dermsynth.report.sections.reader import reader_section
from dermsynth.report.sections.samples import comparison_section, generated_section
from dermsynth.report.sections.training import training_section
from dermsynth.report.sections.validation import validation_section
from dermsynth.utils import write_text_atomic


def gather(run_dir: str | Path) -> dict[str, Any]:
    """The template context of every section; raises DermsynthError when there is nothing to report."""
    root = Path(run_dir)
    if not root.exists():
        raise DermsynthError(f"run folder not found: {root}")
    if not root.is_dir():
        raise DermsynthError(f"not a folder: {root} (give the run folder that holds prepared/, model/, ...)")
    run = RunFolder(root)
    if not any(run.stage_ran(stage) for stage in STAGES):
        folders = ", ".join(f"{f}/" for f, _ in STAGES.values())
        raise DermsynthError(f"{root}: no stage output found (expected one of {folders})")
    sections = {
        "overview": (overview_section, None),
        "dataset": (dataset_section, "prepare"),
        "preprocessing": (preprocessing_section, "prepare"),
        "training": (training_section, "train"),
        "generated": (generated_section, "generate"),
        "comparison": (comparison_section, "generate"),
        "validation": (validation_section, "validate"),
        "domain_shift": (domain_shift_section, "domain_shift"),
        "audit": (audit_section, "audit"),
        "reader_study": (reader_section, "reader_study"),
        "provenance": (provenance_section, None),
    }
    return {name: _section(run, build, stage) for name, (build, stage) in sections.items()}


def _section(run: RunFolder, build, stage: str | None) -> Section | None:
    """One section; a stage output that lacks a field the report needs (hand-edited, or cut short) is named in one
    line rather than a traceback."""
    try:
        return build(run)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        where = f"{run.root / STAGES[stage][0]}/" if stage else str(run.root)
        raise DermsynthError(f"{where} holds a damaged or hand-edited file ({type(exc).__name__}: "
                             f"{str(exc)[:80]}); re-run {'that stage' if stage is None else repr(stage)} "
                             "into a clean folder, then 'dermsynth report' again") from None


def render_html(context: dict[str, Any]) -> str:
    import jinja2

    loader = jinja2.FunctionLoader(lambda name: (resources.files("dermsynth.report") / "templates" / name)
                                   .read_text(encoding="utf-8"))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``RUN/report.html`` (self-contained) and ``RUN/summary.md``; return their paths."""
    from dermsynth.report.markdown import summary_markdown

    context = gather(run_dir)
    root = Path(run_dir)
    html_path, md_path = root / "report.html", root / "summary.md"
    write_text_atomic(html_path, render_html(context))
    write_text_atomic(md_path, summary_markdown(context))
    _readable(html_path, md_path)
    return html_path, md_path


def _readable(*paths: Path) -> None:
    """The atomic writer's temporary files are private (0600); a report is meant to be shared: use the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        path.chmod(0o666 & ~umask)
