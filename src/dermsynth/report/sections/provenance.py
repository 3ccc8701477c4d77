"""The report's provenance section: data source and licence, seeds, model hashes, versions."""

from __future__ import annotations

from typing import Any

import pandas as pd

from dermsynth.data.config import READERS
from dermsynth.diffusion.families import MODEL_JSON
from dermsynth.report.folder import AUDIT, MODEL, PREPARED, SYNTHETIC, VALIDATION, RunFolder, Section
from dermsynth.report.format import table
from dermsynth.report.records import ModelRecord, na


def provenance_section(run: RunFolder) -> Section:
    prepare = run.json(PREPARED, "prepare.json")
    model = ModelRecord.read(run.json(MODEL, MODEL_JSON), run.path(MODEL, MODEL_JSON))
    generate, validate = run.json(SYNTHETIC, "generate.json"), run.json(VALIDATION, "validate.json")
    audit, manifest = run.json(AUDIT, "audit.json"), run.csv(SYNTHETIC, "manifest.csv")
    seeds = []
    if prepare:
        seeds.append(("split (prepare)", prepare.get("settings", {}).get("split", {}).get("seed", "n/a")))
    if model:
        seeds.append(("diffusion training", (model.config or {}).get("seed", "n/a")))
    if generate:
        seeds.append(("generation base seed", generate.get("settings", {}).get("seed", "n/a")))
        seeds.append(("generation rule", generate.get("seed_rule", "n/a")))
    if audit:
        seeds.append(("audit", audit.get("settings", {}).get("seed", "n/a")))
    if validate:
        config = validate.get("config", {})
        first, count = config.get("first_seed", 0), config.get("seeds", 0)
        seeds.append(("classifier runs", ", ".join(str(s) for s in range(first, first + count)) or "n/a"))
    hashes = []
    if model and model.base:
        hashes.append(("base model", model.base))
        hashes.append(("base model weights (sha256)", model.base_sha256 or "n/a (hub id: see its revision)"))
    if model:
        hashes.append(("diffusion model weights (sha256)", na(model.weights_sha256)))
        hashes.append(("the same command gives these weights bit for bit", _reproducible(model.reproducible)))
    if manifest is not None and "model_sha256" in manifest:
        used = sorted(manifest["model_sha256"].dropna().astype(str).unique())
        hashes.append(("model that made the synthetic images", ", ".join(used) or "n/a"))
        if model and used:
            same = used == [model.weights_sha256]
            hashes.append(("synthetic images made by this run's model", "yes" if same else "no"))
    versions = run.json("versions.json") or {}
    return {
        "data": _data_provenance(prepare, run.csv(PREPARED, "metadata.csv")) if prepare else None,
        "seeds": table(["what", "seed"], seeds),
        "hashes": table(["", ""], hashes),
        "versions": table(["package", "version"], [(k, v if v is not None else "not installed")
                                                   for k, v in versions.items()]),
        "config": run.text("config.resolved.yaml"),
    }


def _reproducible(record: dict[str, Any] | None) -> str:
    if not record:
        return "not recorded (a model from an older version)"
    return "yes (fixed threads, a step budget)" if record["bitwise"] else "no: " + "; ".join(record["reasons"])


def _source_name(summary: dict[str, Any], meta: pd.DataFrame | None) -> str:
    dataset = summary.get("settings", {}).get("dataset", "unknown")
    sources = sorted(meta["source"].dropna().astype(str).unique()) if meta is not None and "source" in meta else []
    return f"{dataset}" + (f" ({', '.join(sources)})" if sources else "")


def _reader_licence(dataset: str) -> str:
    """For prepared folders whose prepare.json predates the licence note: the reader's registered licence."""
    reader = READERS.find(dataset)
    return reader.licence if reader is not None else "unknown: check the dataset's terms"


def _data_provenance(prepare: dict[str, Any], meta: pd.DataFrame | None) -> dict[str, str]:
    dataset = prepare.get("settings", {}).get("dataset", "unknown")
    notes = prepare.get("notes", {})
    return {"source": _source_name(prepare, meta),
            "licence": notes.get("licence") or _reader_licence(dataset),
            "root": str(prepare.get("settings", {}).get("root") or "(embedded)"),
            "version": prepare.get("dermsynth_version", "n/a")}
