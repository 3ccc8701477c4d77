"""The reader page: one self-contained HTML file (images inline, no network, no install) that runs from a USB
stick or a hospital share, and the same page as the study server serves it (images and answers over HTTP)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

PAGE = "index.html"


def render_page(record: dict[str, Any], items: list[dict[str, Any]], images: Path | None, server: bool) -> str:
    """The page's HTML. ``images`` (the study's image folder) is inlined as data URIs unless ``server``."""
    env = Environment(loader=PackageLoader("dermsynth.reader", "templates"), autoescape=select_autoescape())
    shown = []
    for item in items:
        entry = dict(item)
        if not server and images is not None:
            entry["data"] = "data:image/jpeg;base64," + base64.b64encode((images / item["image"]).read_bytes()).decode()
        shown.append(entry)
    return env.get_template("reader.html.j2").render(
        study_id=record["study_id"], study=record["study_id"], items=shown, classes=record["classes"],
        server=server, n_scored=sum(not i["practice"] for i in items), n_practice=sum(i["practice"] for i in items))


def write_page(study: Path, record: dict[str, Any], items: list[dict[str, Any]]) -> Path:
    """``study/reader/index.html``, every image inline."""
    from dermsynth.reader.build import READER_FOLDER
    from dermsynth.utils import write_text_atomic

    path = study / READER_FOLDER / PAGE
    write_text_atomic(path, render_page(record, items, study / READER_FOLDER / "images", server=False))
    return path
