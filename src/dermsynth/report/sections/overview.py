"""The report's overview: which stages ran and when."""

from __future__ import annotations

from datetime import UTC, datetime

from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.report.folder import NOT_RUN_HINT, STAGES, RunFolder, Section, _yaml
from dermsynth.report.sections.training import is_finetuned
from dermsynth.utils import read_marker


def overview_section(run: RunFolder) -> Section:
    config = _yaml(run.text("config.resolved.yaml")) or {}
    stages = []
    for stage, (folder, _) in STAGES.items():
        marker = read_marker(run.path(folder, ".stage.json"))  # damaged: it only dates the stage
        name = stage
        if stage == "train" and is_finetuned(run, run.json(folder, MODEL_JSON) or {}):
            name = "finetune"
        stages.append({"key": stage, "name": name, "folder": folder, "ran": run.stage_ran(stage),
                       "finished": marker.get("finished_utc", ""), "hint": NOT_RUN_HINT[name]})
    return {"name": config.get("name") or run.root.resolve().name, "root": str(run.root),
            "stages": stages, "by_name": {s["key"]: s for s in stages},
            "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
