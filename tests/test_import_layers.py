"""Imports run downward only: base helpers <- data <- classify <- stages (diffusion, audit, evaluate) <- report <-
pipeline <- cli. Stages do not import each other: what both the audit and validate need (the classifiers, their
training and metrics) is the classify layer below them, and reading synthetic folders is the data layer's.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dermsynth"
LAYERS = {"errors": 0, "utils": 0, "version": 0, "layout": 0, "progress": 0, "config": 0, "registry": 0,
          "distributed": 0, "precision": 0, "data": 1, "classify": 2, "diffusion": 3, "audit": 3, "evaluate": 3,
          "reader": 3.5, "report": 4, "pipeline": 5, "preflight": 5, "tune": 5, "cli": 6, "__main__": 7, "__init__": 7,
          "testing": 7}
STAGE = 3


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dermsynth":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "dermsynth"]
    return found


def test_every_module_belongs_to_a_layer():
    parts = {_part(".".join(("dermsynth", *p.relative_to(PACKAGE).with_suffix("").parts))) for p in
             PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_imports_run_downward_only():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _part(".".join(("dermsynth", *path.relative_to(PACKAGE).with_suffix("").parts)))
        for target in map(_part, _imports(path)):
            upward = LAYERS[target] > LAYERS[source]
            across = LAYERS[target] == LAYERS[source] == STAGE and target != source
            if upward or across:
                wrong.append(f"{path.relative_to(PACKAGE)} imports dermsynth.{target}")
    assert not wrong, "\n".join(wrong)


def _patches_path(node: ast.AST) -> bool:
    """A call of sys.path.insert / sys.path.append or of pytest's monkeypatch.syspath_prepend."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    owner = node.func.value
    on_sys_path = isinstance(owner, ast.Attribute) and owner.attr == "path" and \
        isinstance(owner.value, ast.Name) and owner.value.id == "sys"
    return (on_sys_path and node.func.attr in ("insert", "append")) or node.func.attr == "syspath_prepend"


def test_tests_and_benchmarks_share_helpers_only_through_the_package():
    """tests/ and bench/ import dermsynth.testing, never each other, and patch no sys.path."""
    repo = PACKAGE.parents[1]
    wrong = []
    for folder, other in (("tests", "bench"), ("bench", "tests")):
        for path in sorted((repo / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
            modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            if any(m.split(".")[0] in (other, "smoke_data") for m in modules):
                wrong.append(f"{folder}/{path.name} imports from {other}/")
            if any(_patches_path(node) for node in ast.walk(tree)):
                wrong.append(f"{folder}/{path.name} patches sys.path")
    assert not wrong, "\n".join(wrong)


# A family built on another one's model, by design: the cascade's base *is* the scratch family's pixel model, trained
# by its trainer. Nothing else may cross, and never in the other direction.
BUILDS_ON = {"cascade": {"scratch"}}


def test_model_families_import_only_the_diffusion_core():
    """A family folder (diffusion/<family>/) imports its own modules, the diffusion core (diffusion/*.py), the
    layers below and the family it is declared to build on (BUILDS_ON), never another family; the core imports no
    family (it loads them by name from the registries)."""
    diffusion = PACKAGE / "diffusion"
    families = {p.name for p in diffusion.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert families, "no family folder"
    wrong = []
    for path in sorted(diffusion.rglob("*.py")):
        parts = path.relative_to(diffusion).parts
        own = parts[0] if len(parts) > 1 else None
        for module in _imports(path):
            names = module.split(".")
            if names[:2] != ["dermsynth", "diffusion"] or len(names) < 3:
                continue
            target = names[2] if names[2] in families else None
            if target is not None and target != own and target not in BUILDS_ON.get(own or "", set()):
                wrong.append(f"diffusion/{'/'.join(parts)} imports the {target} family")
    assert not wrong, "\n".join(wrong)
