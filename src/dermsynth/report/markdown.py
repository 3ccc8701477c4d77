"""``summary.md``: the report's numbers as plain Markdown (for a README, a pull request, a terminal)."""

from __future__ import annotations

from typing import Any


def md_table(data: dict[str, Any] | None) -> list[str]:
    if not data or not data["rows"]:
        return []
    header = data["header"]
    lines = ["| " + " | ".join(h or " " for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
              for row in data["rows"]]
    return [*lines, ""]


def summary_markdown(context: dict[str, Any]) -> str:
    overview = context["overview"]
    lines = [f"# {overview['name']}: study summary", "",
             f"Run folder `{overview['root']}`, summarised {overview['created']}. "
             "Full report with figures: `report.html`.", ""]
    lines += ["## Stages", ""]
    lines += [f"- {s['name']}: " + ("done" if s["ran"] else f"not run (`{s['hint']}`)") for s in overview["stages"]]
    lines += ["", *_dataset(context["dataset"]), *_validation(context["validation"]),
              *_domain_shift(context["domain_shift"]), *_audit(context["audit"]),
              *_reader_study(context["reader_study"]), *_provenance(context["provenance"])]
    return "\n".join(lines).rstrip() + "\n"


def _dataset(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return ["## Dataset", "", "Not run: no `prepared/prepare.json`.", ""]
    return ["## Dataset", "", f"Source: {section['source']}; {section['images']} images; grouped by "
            f"{section['grouping']}. {section['guarantee']}", "", *md_table(section["counts"])]


def _validation(section: dict[str, Any] | None) -> list[str]:
    lines = ["## Does synthetic data help? (test split, real images)", ""]
    if section is None:
        return [*lines, "Not run: no `validation/` results.", ""]
    if section["results"] is None:
        return [*lines, "The validate stage has not finished: no `validation/summary.json` yet.", ""]
    lines += [f"Test metrics in %, mean over seeds [{section['level']} CI, bootstrap over seeds and test images].",
              "", *md_table(section["results"])]
    if section["differences"]:
        lines += ["Paired difference regime − baseline (real-only, or a control regime), percentage points:",
                  "", *md_table(section["differences"])]
    lines += [f"**Verdict.** {v['text']}\n" for v in section["headline"]]
    lines += [f"- {v['text']}" for v in section["verdicts"] if v not in section["headline"]]
    for ext in section.get("external") or []:
        lines += ["", f"External test set {ext['name']}: {ext['images']} images ({ext['removed']} removed as "
                  "duplicates of training images):", "", *md_table(ext["table"])]
        if ext["differences"]:
            lines += [*md_table(ext["differences"]), *(f"- {v['text']}" for v in ext["verdicts"])]
    if section.get("subgroups"):
        lines += ["", "Subgroups of the test split (AUROC; groups below the minimum size get no number):", "",
                  *md_table(section["subgroups"])]
        if section.get("too_small"):
            lines += [f"Too small to report: {section['too_small']}.", ""]
    return [*lines, "", section["reference"], ""]


def _domain_shift(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return []
    return ["## Where the shift goes (external sites)", "", *md_table(section["table"]),
            f"**{section['verdict']}** {section['caveat']}", "", *(f"- {s}" for s in section["sentences"]), ""]


def _audit(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return ["## Fidelity and memorization", "", "Not run: no `audit/audit.json`.", ""]
    memo = section["memorization"]
    return ["## Fidelity and memorization", "",
            f"Feature space: {section['feature_space'].get('name', 'n/a')}. {section.get('resolution', '')}", "",
            *md_table(section["fidelity"]),
            *(["Real-vs-synthetic classifier test (C2ST AUROC, 0.5 = indistinguishable):", "",
               *md_table(section["c2st"])] if section.get("c2st") else []),
            *[f"- {g['summary']}" for g in section.get("domain_gap", [])],
            *([""] if section.get("domain_gap") else []),
            f"Memorization: {memo['flagged']} of {memo['total']} synthetic images flagged as near-copies of a "
            f"training image ({memo['rate']}); held-out real images: {memo['held_out_rate']}; positive controls "
            f"detected: {memo['detection']}.", ""]


def _reader_study(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    facts = section["facts"]
    lines = ["## Reader study", "", f"Blinded study {facts['study_id']}: {facts['images']} scored images at "
             f"{facts['size']} px.", ""]
    if not section["scored"]:
        return [*lines, "Not scored yet (dermsynth reader-study score).", ""]
    return [*lines, section["headline"], "", *md_table(section["readers"]), "",
            f"Agreement: {section['agreement']}.", ""]


def _provenance(section: dict[str, Any]) -> list[str]:
    lines = ["## Provenance", ""]
    if section["data"]:
        lines += [f"- data: {section['data']['source']} — {section['data']['licence']}"]
    lines += [f"- {what}: {value}" for what, value in section["hashes"]["rows"]]
    lines += [f"- seed, {what}: {value}" for what, value in section["seeds"]["rows"]]
    return [*lines, ""]
