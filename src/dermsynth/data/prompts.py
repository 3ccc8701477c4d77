"""Text prompts from metadata, for caption fine-tuning and per-image conditioning.

Template syntax: ``{field}`` is a metadata value; ``[ ... ]`` is an optional part, dropped whole when any
field inside it is missing, so that no prompt ever reads "of a nan year old".
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from typing import Any

import pandas as pd

from dermsynth.errors import DermsynthError

_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_ARTICLE = re.compile(r"\b([Aa]) (?=(?:[aeiouAEIOU]|8\d*\b|8|11\b|18\b))")


def _present(value: Any) -> bool:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() != ""


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().replace("_", " ")


def prompt_fields(row: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values usable in a template, plus ``lesion``: "malignant melanoma", "nevus", "benign skin lesion"."""
    fields = {key: _format_value(value) for key, value in row.items() if _present(value)}
    malignancy = fields.get("label") if fields.get("label") in ("benign", "malignant") else None
    if "diagnosis" in fields:
        fields["lesion"] = f"{malignancy} {fields['diagnosis']}" if malignancy else fields["diagnosis"]
    elif "label" in fields:
        fields["lesion"] = f"{fields['label']} skin lesion"
    return fields


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template.replace("[", "").replace("]", "")) if name}


def validate_template(template: str, allowed: set[str]) -> None:
    unknown = template_fields(template) - allowed
    if unknown:
        raise DermsynthError(
            f"prompt template uses unknown field(s) {sorted(unknown)}; available: {sorted(allowed)}"
        )


def render_prompt(template: str, row: Mapping[str, Any]) -> str:
    fields = prompt_fields(row)

    def optional(match: re.Match[str]) -> str:
        part = match.group(1)
        return part.format(**fields) if template_fields(part) <= fields.keys() else ""

    text = _OPTIONAL.sub(optional, template)
    missing = template_fields(text) - fields.keys()
    for name in missing:  # a required field that is missing: leave it out rather than print "None"
        text = text.replace("{" + name + "}", "")
    text = text.format(**fields)
    text = _ARTICLE.sub(lambda m: m.group(1) + "n ", text)
    return re.sub(r"\s+", " ", text).strip()
